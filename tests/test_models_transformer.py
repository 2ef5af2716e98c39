"""TransStack / MHSA: NumPy reference, the authors' counts and init, errors, serialisation."""

import keras
import numpy as np
import pytest
from care_testing import n_params, tiny_care

import care_tf
from care_tf.models.batch_norm import BatchNorm


def numpy_mhsa(x, w_qkv, pos_h, pos_w, heads, dim):
    """Independent NumPy computation of docs/method.md's MHSA on x (B, H, W, C)."""
    b, h, w, c = x.shape
    n, inner = h * w, heads * dim
    qkv = x.reshape(b, n, c) @ w_qkv.reshape(c, 3 * inner)
    q, k, v = qkv[..., :inner], qkv[..., inner : 2 * inner], qkv[..., 2 * inner :]
    split = lambda t: t.reshape(b, n, heads, dim).transpose(0, 2, 1, 3)  # (B, heads, N, d)
    q, k, v = split(q) * dim**-0.5, split(k), split(v)
    pos = np.array([pos_h[y] + pos_w[xx] for y in range(h) for xx in range(w)])  # (N, d)
    logits = q @ k.transpose(0, 1, 3, 2) + q @ pos.T
    logits -= logits.max(-1, keepdims=True)
    att = np.exp(logits)
    att /= att.sum(-1, keepdims=True)
    out = (att @ v).transpose(0, 2, 1, 3).reshape(b, h, w, inner)
    return out


def test_mhsa_matches_numpy():
    layer = care_tf.MultiHeadSelfAttention2D(num_heads=2, head_dim=4)
    x = np.random.RandomState(1).randn(2, 3, 5, 6).astype("float32")
    got = layer(x).numpy()
    want = numpy_mhsa(
        x.astype("float64"),
        layer.qkv.kernel.numpy().astype("float64"),
        layer.pos_height.numpy().astype("float64"),
        layer.pos_width.numpy().astype("float64"),
        heads=2,
        dim=4,
    )
    assert got.shape == (2, 3, 5, 8)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_position_embedding_init():
    layer = care_tf.MultiHeadSelfAttention2D(num_heads=4, head_dim=128)
    layer.build((None, 14, 14, 512))
    assert tuple(layer.pos_height.shape) == (14, 128)
    assert tuple(layer.pos_width.shape) == (14, 128)
    values = np.concatenate([layer.pos_height.numpy(), layer.pos_width.numpy()])
    assert values.std() == pytest.approx(128**-0.5, rel=0.1)


def test_transstack_parameter_count_resnet50():
    stack = care_tf.TransStack(out_channels=2048)
    stack.build((None, 14, 14, 1024))
    assert n_params(stack.trainable_weights) == 32_813_568
    assert stack.compute_output_shape((None, 14, 14, 1024)) == (None, 7, 7, 2048)
    first, second = stack.blocks[0], stack.blocks[1]
    assert first.project_shortcut and first.shortcut_conv.kernel.shape == (3, 3, 1024, 2048)
    assert not second.project_shortcut


# Standard deviations of the authors' ResNet-50 TransStack weights after their ResNet
# constructor re-initialised them (measured on their model; docs/method.md).
AUTHORS_STD = {"conv_in": 0.0624, "qkv": 0.0361, "conv_out": 0.0313, "shortcut_conv": 0.0104}


def test_transstack_init_matches_the_authors_effective_init():
    stack = care_tf.TransStack(out_channels=2048)
    stack.build((None, 14, 14, 1024))
    blocks = stack.blocks
    kernels = {
        "conv_in": [b.conv_in.kernel for b in blocks],
        "qkv": [b.attention.qkv.kernel for b in blocks],
        "conv_out": [b.conv_out.kernel for b in blocks],
        "shortcut_conv": [blocks[0].shortcut_conv.kernel],
    }
    for name, variables in kernels.items():
        for v in variables:
            w = v.numpy()
            kh, kw, _, out = w.shape
            he_fan_out = np.sqrt(2.0 / (kh * kw * out))  # kaiming_normal_(mode="fan_out")
            assert w.std() == pytest.approx(he_fan_out, rel=0.01), name
            assert w.std() == pytest.approx(AUTHORS_STD[name], rel=0.02), name
            assert abs(w.mean()) < 0.01 * he_fan_out, name
            # Untruncated like PyTorch's normal_: a truncated normal stops at 2 std.
            assert np.abs(w).max() > 4 * he_fan_out, name
    norms = [layer for b in blocks for layer in b._layers if isinstance(layer, BatchNorm)]
    assert len(norms) == 3 * len(blocks) + 1  # bn_in, bn_mid, bn_out (+ shortcut_bn)
    for bn in norms:
        np.testing.assert_array_equal(bn.gamma.numpy(), 1.0)  # every attention branch on
        np.testing.assert_array_equal(bn.beta.numpy(), 0.0)
        assert not bn.synchronized  # per-replica statistics, as the authors'
    pos = np.concatenate([blocks[0].attention.pos_height.numpy(), blocks[0].attention.pos_width])
    assert pos.std() == pytest.approx(128**-0.5, rel=0.1)


def test_zero_init_residual_option():
    stack = care_tf.TransStack(out_channels=64, num_blocks=2, num_heads=2, zero_init_residual=True)
    x = np.abs(np.random.RandomState(0).randn(2, 8, 8, 32)).astype("float32")
    y = stack(x, training=False)
    assert tuple(y.shape) == (2, 4, 4, 64)
    for block in stack.blocks:
        np.testing.assert_array_equal(block.bn_out.gamma.numpy(), 0.0)
        np.testing.assert_array_equal(block.bn_in.gamma.numpy(), 1.0)
    # With gamma = 0 in every last BN, block 2 is the identity on its (non-negative) input.
    first = stack.blocks[0](x, training=False)
    np.testing.assert_allclose(y.numpy(), first.numpy(), rtol=1e-6)
    assert stack.get_config()["zero_init_residual"] is True
    # By default the attention branch is on: block 2 changes its input.
    default = care_tf.TransStack(out_channels=64, num_blocks=2, num_heads=2)
    y = default(x, training=False).numpy()
    assert np.abs(y - default.blocks[0](x, training=False).numpy()).max() > 1e-3


def test_transstack_forward_shapes():
    stack = care_tf.TransStack(out_channels=64, num_blocks=2, num_heads=2)
    x = np.abs(np.random.RandomState(0).randn(2, 8, 8, 32)).astype("float32")
    y = stack(x, training=False)
    assert tuple(y.shape) == (2, 4, 4, 64)
    assert np.all(np.isfinite(y.numpy())) and np.all(y.numpy() >= 0)  # ReLU output


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"out_channels": 2048, "num_heads": 3}, "num_heads.*divide"),
        ({"out_channels": 2048, "num_heads": 4, "head_dim": 64}, "num_heads \\* head_dim"),
        ({"out_channels": 100, "proj_factor": 3}, "proj_factor"),
        ({"num_blocks": 0}, "num_blocks"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        care_tf.TransStack(**kwargs)


def test_wrong_feature_map_size_is_an_error():
    stack = care_tf.TransStack(out_channels=64, num_blocks=1, num_heads=2)
    stack(np.zeros((1, 8, 8, 32), "float32"))
    with pytest.raises(ValueError, match="built for a 8x8 feature map but got 4x4"):
        stack(np.zeros((1, 8, 8, 32), "float32")[:, :4, :4])
    with pytest.raises(ValueError, match="even size"):
        care_tf.TransStack(out_channels=64, num_heads=2).build((None, 7, 7, 32))


def test_serialisation_round_trip():
    stack = care_tf.TransStack(
        out_channels=64, num_blocks=2, num_heads=2, sync_bn=True, zero_init_residual=True
    )
    x = np.random.RandomState(0).randn(2, 8, 8, 32).astype("float32")
    y = stack(x, training=False).numpy()
    config = keras.saving.serialize_keras_object(stack)
    clone = keras.saving.deserialize_keras_object(config)
    clone.set_weights(stack.get_weights())
    assert clone.get_config() == stack.get_config()
    assert all(b.bn_in.synchronized and b.zero_init_residual for b in clone.blocks)
    np.testing.assert_array_equal(clone(x, training=False).numpy(), y)


def test_no_two_fresh_weights_are_equal_unless_constant():
    """Every random weight is its own draw (issue 21: pos_height and pos_width were one
    initializer drawn twice, bit-identical). Equal weights may only be constants (BN ones
    and zeros, zero biases) or a target network's copy of its online weight."""
    model = tiny_care(num_blocks=2)
    online = [v for v in model.weights if not v.path.startswith("target_")]
    seen = {}
    for v in online:
        value = v.numpy()
        if np.all(value == value.flat[0]):  # a constant (BN gamma/beta/statistics, bias)
            continue
        key = (value.shape, value.tobytes())
        assert key not in seen, f"{v.path} equals {seen[key]}"
        seen[key] = v.path
    stack = model.transformer.blocks
    assert all(b.attention.pos_height.shape == b.attention.pos_width.shape for b in stack)
    assert len(seen) > 40  # the random weights were all looked at


def test_position_tables_are_seeded():
    """Two layers built after the same global seed are equal; the tables differ."""
    layers_ = []
    for _ in range(2):
        keras.utils.set_random_seed(7)
        layer = care_tf.MultiHeadSelfAttention2D(num_heads=2, head_dim=8)
        layer.build((None, 4, 4, 16))
        layers_.append(layer)
    a, b = layers_
    np.testing.assert_array_equal(a.pos_height.numpy(), b.pos_height.numpy())
    np.testing.assert_array_equal(a.pos_width.numpy(), b.pos_width.numpy())
    assert not np.array_equal(a.pos_height.numpy(), a.pos_width.numpy())
