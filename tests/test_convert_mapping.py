"""The authors' key map: the fixture, every tensor's destination and value, the attention layout."""

import os

import numpy as np
import pytest
from torch_checkpoint import (
    FIXTURE,
    authors_keys,
    check_every_tensor,
    random_state_dict,
    read_fixture,
    write_linear_checkpoint,
    write_pretrain_checkpoint,
)

from care_tf.convert import architecture as arch
from care_tf.convert import mapping
from care_tf.convert.converter import convert_checkpoint, read_state_dict

# A small CARE: ResNet-18 at base width 8, 7x7 stem, 64 px -> res4 4x4; 2 BoT blocks, 2 heads.
SMALL = dict(depth=18, base=8, trans_blocks=2, fmap=4, heads=2, hidden=32, proj=16, num_classes=10)


def fixture_keys(fmt):
    return [(k, s, d) for f, k, s, d, _ in read_fixture(FIXTURE) if f == fmt]


@pytest.mark.parametrize("fmt", ["pretrain", "linear"])
def test_key_generator_reproduces_the_authors_resnet50_fixture(fmt):
    assert authors_keys(fmt) == fixture_keys(fmt)


def test_architecture_read_off_the_fixture_shapes():
    shapes = {k[len("module.") :]: s for k, s, _ in fixture_keys("pretrain")}
    backbone = arch.infer_backbone(shapes, "student_encoder.")
    assert backbone == arch.BackboneSpec(
        depth=50, base_channels=64, width_multiplier=1, stem="imagenet"
    )
    stack = arch.infer_transformer(shapes, "student_encoder.trans.")
    assert stack == arch.TransformerSpec(2048, 5, 4, 128, 4, True, 14)
    assert arch.image_size_for(backbone, stack) == 224
    assert arch.infer_heads(shapes, "student_encoder.fc1.") == arch.HeadSpec(4096, 256)


def test_resnet50_classifier_names_and_shapes_match_the_fixture():
    """The full-size linear checkpoint maps exactly (names and shapes, no values)."""
    from care_tf.evaluate.linear import LinearClassifier, make_linear_head

    shapes = {k[len("module.") :]: s for k, s, _ in fixture_keys("linear")}
    backbone = arch.build_backbone(arch.infer_backbone(shapes, "encoder."), 224)
    head = make_linear_head(1000)
    head.build((None, 2048))
    plan = mapping.classifier_assignments(LinearClassifier(backbone, head))
    mapping.check_plan(plan, shapes, list(backbone.weights) + list(head.weights), "fixture")
    ignored = sorted(k for k in shapes if mapping.is_ignored(k))
    assert len(plan) + len(ignored) == len(shapes)
    assert [k for k in ignored if not k.endswith("num_batches_tracked")] == [
        "encoder.fc.0.bias",
        "encoder.fc.0.weight",
    ]


def test_bottleneck_width_two_linear_checkpoint_without_prefix(tmp_path):
    import keras

    keys = authors_keys("linear", depth=50, base=8, width=2, num_classes=7, prefix="")
    state = write_linear_checkpoint(str(tmp_path / "lin.pth"), keys)
    convert_checkpoint(
        str(tmp_path / "lin.pth"), str(tmp_path / "run"), image_size=64, log=lambda _: None
    )
    classifier = keras.saving.load_model(tmp_path / "run" / "classifier.keras", compile=False)
    assert classifier.backbone.width_multiplier == 2 and classifier.backbone.depth == 50
    seen = check_every_tensor(
        state,
        "",
        classifier.backbone,
        None,
        {"classifier": (classifier.head,)},
        skip=("encoder.fc.",),
    )
    assert {id(v) for v in classifier.weights} == seen
    backbone = keras.saving.load_model(tmp_path / "run" / "backbone.keras", compile=False)
    assert backbone.input_shape == (None, 64, 64, 3)


def test_attention_layout_matches_the_authors_mhsa():
    """Our MHSA on converted weights == a NumPy BoTNet MHSA on the torch-layout weights."""
    from care_tf.models.transformer import MultiHeadSelfAttention2D

    rng = np.random.default_rng(0)
    heads, dim, h, w, c, batch = 2, 8, 3, 4, 16, 2
    inner = heads * dim
    to_qkv = rng.normal(0, 0.3, (3 * inner, c, 1, 1)).astype(np.float32)  # OIHW
    pos_h = rng.normal(0, 0.5, (h, dim)).astype(np.float32)
    pos_w = rng.normal(0, 0.5, (w, dim)).astype(np.float32)
    x = rng.normal(size=(batch, c, h, w)).astype(np.float32)  # NCHW, as torch

    # The authors' forward: q, k, v = conv(x).chunk(3, dim=1); 'b (h d) x y -> b h (x y) d';
    # q *= d^-0.5; sim = q k^T + q emb^T with emb[(x y)] = H[x] + W[y]; softmax; attn v;
    # 'b h (x y) d -> b (h d) x y'.
    qkv = np.einsum("oc,bcxy->boxy", to_qkv[:, :, 0, 0], x)
    q, k, v = np.split(qkv, 3, axis=1)
    split = lambda t: t.reshape(batch, heads, dim, h * w).transpose(0, 1, 3, 2)  # noqa: E731
    q, k, v = split(q) * dim**-0.5, split(k), split(v)
    emb = (pos_h[:, None, :] + pos_w[None, :, :]).reshape(h * w, dim)
    sim = q @ k.transpose(0, 1, 3, 2) + q @ emb.T
    attn = np.exp(sim - sim.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    out = (attn @ v).transpose(0, 1, 3, 2).reshape(batch, inner, h, w)

    layer = MultiHeadSelfAttention2D(heads, dim)
    layer.build((None, h, w, inner if c == inner else c))
    assignments = [
        mapping.Assignment("net.3.to_qkv.weight", layer.qkv.kernel, "conv"),
        mapping.Assignment("net.3.pos_emb.height", layer.pos_height, "copy"),
        mapping.Assignment("net.3.pos_emb.width", layer.pos_width, "copy"),
    ]
    torch = {
        "net.3.to_qkv.weight": to_qkv,
        "net.3.pos_emb.height": pos_h,
        "net.3.pos_emb.width": pos_w,
    }
    mapping.apply_plan(assignments, torch.__getitem__)
    ours = np.asarray(layer(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(ours, out.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- errors
def _write(tmp_path, keys, edit=None):
    state = random_state_dict(keys)
    if edit:
        edit(state)
    from torch_checkpoint import write_torch_zip

    path = str(tmp_path / "ckpt.pth")
    write_torch_zip(path, {"start_epoch": 1, "model": state})
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda s: s.pop("module.student_encoder.layer2.0.bn1.running_var"),
            r"missing keys \(1\): student_encoder\.layer2\.0\.bn1\.running_var",
        ),
        (
            lambda s: s.__setitem__("module.student_encoder.extra.weight", np.ones(3, np.float32)),
            r"unknown keys \(1\): student_encoder\.extra\.weight",
        ),
        (
            lambda s: s.__setitem__(
                "module.student_encoder.fc1.3.weight", np.ones((16, 33), np.float32)
            ),
            r"shape mismatches.*fc1\.3\.weight \(16, 33\) \(expected \(16, 32\)\)",
        ),
    ],
)
def test_mapping_errors_list_the_keys(tmp_path, edit, message):
    path = _write(tmp_path, authors_keys("pretrain", **SMALL, target=False), edit)
    with pytest.raises(mapping.MappingError, match=message):
        convert_checkpoint(path, str(tmp_path / "run"), log=lambda _: None)
    assert not (tmp_path / "run").exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".run")] == []


def test_bot_name_and_relative_position_embeddings(tmp_path):
    keys = authors_keys("pretrain", **SMALL, transformer="bot", target=False)
    path = _write(tmp_path, keys)
    state = read_state_dict(path)
    assert "read 'bot.' as 'trans.' in" in " ".join(state.notes)
    assert any(k.startswith("student_encoder.trans.net.1.") for k in state.tensors)

    def relative(s):
        for key in [k for k in s if "pos_emb" in k]:
            s[
                key.replace("pos_emb.height", "pos_emb.rel_height").replace(
                    "pos_emb.width", "pos_emb.rel_width"
                )
            ] = s.pop(key)

    path = _write(tmp_path, keys, relative)
    with pytest.raises(mapping.MappingError, match="relative position embeddings"):
        convert_checkpoint(path, str(tmp_path / "run"), log=lambda _: None)


@pytest.mark.slow
def test_full_size_resnet50_checkpoints_convert_value_exact(tmp_path):
    """The authors' full ResNet-50 layout (fixture keys, random values): 155M + 26M values."""
    import keras

    pre = write_pretrain_checkpoint(str(tmp_path / "pre.pth"), fixture_keys("pretrain"))
    lin = write_linear_checkpoint(str(tmp_path / "lin.pth"), fixture_keys("linear"))
    out = tmp_path / "run"
    record = convert_checkpoint(
        str(tmp_path / "pre.pth"), str(out), str(tmp_path / "lin.pth"), log=lambda _: None
    )
    assert record["pretrain"]["keys_mapped"] == 758 and record["linear"]["keys_mapped"] == 271
    model = keras.saving.load_model(out / "model.keras", compile=False)
    assert model.backbone.input_shape == (None, 224, 224, 3)
    online = check_every_tensor(
        {k: v for k, v in pre.items() if ".student_encoder." in k},
        "module.student_encoder.",
        model.backbone,
        model.transformer,
        {
            "fc1": (model.c_projector, model.c_predictor),
            "fc2": (model.t_projector, model.t_predictor),
        },
    )
    target = check_every_tensor(
        {k: v for k, v in pre.items() if ".teacher_encoder." in k},
        "module.teacher_encoder.",
        model.target_backbone,
        model.target_transformer,
        {"fc1": (model.target_c_projector,), "fc2": (model.target_t_projector,)},
    )
    every = [v for layer in model.online_layers + model.target_layers for v in layer.weights]
    assert {id(v) for v in every} == online | target
    del model
    classifier = keras.saving.load_model(out / "classifier.keras", compile=False)
    seen = check_every_tensor(
        lin,
        "module.",
        classifier.backbone,
        None,
        {"classifier": (classifier.head,)},
        skip=("encoder.fc.",),
    )
    assert {id(v) for v in classifier.weights} == seen
