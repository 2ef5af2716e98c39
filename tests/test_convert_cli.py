"""`python -m care_tf.convert` end to end: errors, run directory, evaluate, export, fine-tuning."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from torch_checkpoint import (
    authors_keys,
    write_linear_checkpoint,
    write_pretrain_checkpoint,
    write_torch_zip,
)

from care_tf.convert.__main__ import main

SMALL = dict(depth=18, base=8, trans_blocks=2, fmap=4, heads=2, hidden=32, proj=16, num_classes=10)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A run directory converted from small checkpoints in the authors' layout."""
    root = tmp_path_factory.mktemp("convert")
    write_pretrain_checkpoint(str(root / "pre.pth"), authors_keys("pretrain", **SMALL))
    write_linear_checkpoint(str(root / "lin.pth"), authors_keys("linear", **SMALL))
    run = root / "run"
    assert main([str(root / "pre.pth"), "--linear", str(root / "lin.pth"), "--out", str(run)]) == 0
    return run


def test_cli_refuses_an_unsafe_checkpoint_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    write_torch_zip(str(path), {"model": {"w": np.ones(2, np.float32)}, "x": Evil()})
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "-m", "care_tf.convert", str(path), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "evil.pth" in lines[0] and "system" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_cli_user_errors(tmp_path, capsys, converted):
    def error(argv):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        return capsys.readouterr().err.strip()

    pre = str(converted.parent / "pre.pth")
    lin = str(converted.parent / "lin.pth")
    message = error([pre, "--out", str(converted)])
    assert message.startswith("error: --out") and "--overwrite" in message
    assert error([str(tmp_path / "nope.pth"), "--out", str(tmp_path / "r")]).endswith(
        "no such file."
    )
    assert "--linear takes the linear-evaluation checkpoint" in error(
        [pre, "--linear", pre, "--out", str(tmp_path / "r")]
    )
    legacy = tmp_path / "legacy.pth"
    import pickle

    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
    assert "torch.save" in error([str(legacy), "--out", str(tmp_path / "r")])
    assert "CHECKPOINT" in error([lin, "--linear", lin, "--out", str(tmp_path / "r")])


def test_run_directory_contents_and_overwrite(converted, tmp_path):
    import yaml

    assert sorted(os.listdir(converted)) == [
        "backbone.keras",
        "classifier.keras",
        "config.yaml",
        "convert.json",
        "model.keras",
    ]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(converted).st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    config = yaml.safe_load((converted / "config.yaml").read_text())
    assert config["model"]["backbone"] == "resnet18"
    assert config["model"]["image_size"] == 64 and config["model"]["base_channels"] == 8
    assert config["model"]["transformer_kwargs"]["num_blocks"] == 2
    record = json.loads((converted / "convert.json").read_text())
    assert len(record["sources"]["pretrain"]["sha256"]) == 64
    assert "encoder.fc.0.weight" in record["ignored_on_purpose"]["linear"]
    # The linear encoder is another random draw here, so it differs from the backbone.
    assert record["linear"]["encoder_vs_pretrain_max_abs_difference"] > 0

    # --overwrite replaces a run directory in one rename.
    out = tmp_path / "again"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    argv = [str(converted.parent / "lin.pth"), "--out", str(out), "--overwrite"]
    argv += ["--image_size", "32"]
    assert main(argv) == 0
    assert sorted(os.listdir(out)) == [
        "backbone.keras",
        "classifier.keras",
        "config.yaml",
        "convert.json",
    ]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".again")]


def test_fine_tuning_the_converted_backbone(converted):
    """A Keras fine-tuning job starts from backbone.keras (the docs' example)."""
    import keras

    backbone = keras.saving.load_model(converted / "backbone.keras", compile=False)
    inputs = keras.Input((64, 64, 3))
    logits = keras.layers.Dense(3)(backbone(inputs)["pooled"])
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = np.asarray(backbone.get_layer("stem_conv").kernel).copy()
    x = np.random.default_rng(0).normal(size=(4, 64, 64, 3)).astype("float32")
    model.fit(x, np.array([0, 1, 2, 0]), epochs=1, batch_size=4, verbose=0)
    assert not np.allclose(before, np.asarray(backbone.get_layer("stem_conv").kernel))


@pytest.mark.slow
def test_export_classifier_serves_top5_class_ids_and_scores(converted, tmp_path):
    import keras
    import tensorflow as tf

    from care_tf.export.classifier import export_classifier

    result = export_classifier(str(converted), str(tmp_path / "exported"), log=lambda _: None)
    assert all(c["ok"] for c in result["checks"]) and len(result["checks"]) == 4
    loaded = tf.saved_model.load(result["saved_model"])
    image = np.random.default_rng(1).integers(0, 256, (80, 70, 3), dtype=np.uint8)
    out = loaded.signatures["serve_image_bytes"](
        image_bytes=tf.constant([tf.io.encode_png(image).numpy()])
    )
    classifier = keras.saving.load_model(converted / "classifier.keras", compile=False)
    from care_tf.export.preprocess import preprocess

    probabilities = tf.nn.softmax(classifier(preprocess(image[None], 64))).numpy()[0]
    order = np.argsort(-probabilities)[:5]
    np.testing.assert_array_equal(out["classes"].numpy()[0], order)
    np.testing.assert_allclose(out["scores"].numpy()[0], probabilities[order], rtol=1e-5)


@pytest.mark.slow
def test_evaluate_and_export_accept_the_converted_run(converted, tmp_path, fmnist_small):
    from care_tf.evaluate.__main__ import main as evaluate
    from care_tf.export import export_backbone

    common = ["--model_dir", str(converted), "--dataset", "fashion_mnist", "--limit", "64"]
    common += ["--batch_size", "32", "--quiet", "--out", str(tmp_path / "eval")]
    knn = evaluate(["knn", *common, "--k", "5"])
    assert 0 <= knn["top1"] <= 1 and knn["num_examples"] == 64
    scored = evaluate(["classifier", *common])
    assert scored["protocol"] == "classifier" and scored["num_examples"] == 64
    result = export_backbone(str(converted), str(tmp_path / "exported"), log=lambda _: None)
    assert os.path.isdir(result["saved_model"]) and os.path.isfile(result["tflite"])
