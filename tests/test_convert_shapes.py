"""Checkpoint tensors whose rank or size cannot be the authors' are one clear error."""

import pytest
from torch_checkpoint import authors_keys, write_linear_checkpoint, write_pretrain_checkpoint

from care_tf.convert import architecture as arch
from care_tf.convert.__main__ import main
from care_tf.convert.mapping import MappingError

SMALL = dict(depth=18, base=8, trans_blocks=2, fmap=4, heads=2, hidden=32, proj=16, num_classes=10)
P = "student_encoder."
T = P + "trans."


def _shapes(fmt="pretrain", **changes):
    keys = authors_keys(fmt, **SMALL, prefix="")
    return {k: changes.get(k, s) for k, s, _ in keys}


@pytest.mark.parametrize(
    "key, shape, infer",
    [
        (f"{P}conv1.weight", (8,), lambda s: arch.infer_backbone(s, P)),
        (f"{P}conv1.weight", (0, 3, 7, 7), lambda s: arch.infer_backbone(s, P)),
        (f"{P}layer1.0.conv1.weight", (8, 8), lambda s: arch.infer_backbone(s, P)),
        (f"{T}net.0.net.3.pos_emb.height", (4,), lambda s: arch.infer_transformer(s, T)),
        (f"{T}net.0.net.3.pos_emb.height", (4, 0), lambda s: arch.infer_transformer(s, T)),
        (f"{T}net.0.net.7.weight", (), lambda s: arch.infer_transformer(s, T)),
        (f"{P}fc1.0.weight", (32,), lambda s: arch.infer_heads(s, P + "fc1.")),
    ],
)  # fmt: skip
def test_shapes_are_checked_before_use(key, shape, infer):
    infer(_shapes())  # the right shapes read fine
    with pytest.raises(MappingError, match=r"has shape .*; expected .* axes of size >= 1") as err:
        infer(_shapes(**{key: shape}))
    assert key in str(err.value) and str(shape) in str(err.value)


@pytest.mark.parametrize("fmt", ["pretrain", "linear"])
def test_cli_names_the_bad_tensor(tmp_path, capsys, fmt):
    """The issue's case: student_encoder.conv1.weight of rank 1 (IndexError before); and a
    rank-1 classifier weight of a linear checkpoint (ValueError on unpacking before)."""
    bad = (
        "module.student_encoder.conv1.weight" if fmt == "pretrain" else "module.classifier.0.weight"
    )
    keys = [(k, (8,) if k == bad else s, d) for k, s, d in authors_keys(fmt, **SMALL)]
    path = str(tmp_path / "bad.pth")
    (write_pretrain_checkpoint if fmt == "pretrain" else write_linear_checkpoint)(path, keys)
    argv = [path, "--out", str(tmp_path / "run")] if fmt == "pretrain" else []
    if fmt == "linear":
        good = str(tmp_path / "pre.pth")
        write_pretrain_checkpoint(good, authors_keys("pretrain", **SMALL))
        argv = [good, "--linear", path, "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {bad[len('module.') :]} has shape (8,)")
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_error_itself(tmp_path):
    keys = authors_keys("pretrain", **SMALL)
    bad = "module.student_encoder.conv1.weight"
    path = str(tmp_path / "bad.pth")
    write_pretrain_checkpoint(path, [(k, (8,) if k == bad else s, d) for k, s, d in keys])
    with pytest.raises(MappingError, match="conv1.weight has shape"):
        main([path, "--out", str(tmp_path / "run"), "--debug"])
