"""`python -m care_tf.convert` end to end: errors, run directory, evaluate, export, fine-tuning."""

import json
import os

import numpy as np
import pytest
from torch_checkpoint import (
    authors_keys,
    check_every_tensor,
    write_linear_checkpoint,
    write_pretrain_checkpoint,
    write_torch_zip,
)

from care_tf.convert.__main__ import main

SMALL = dict(depth=18, base=8, trans_blocks=2, fmap=4, heads=2, hidden=32, proj=16, num_classes=10)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Small checkpoints in the authors' layout: (folder, pretrain state, linear state)."""
    root = tmp_path_factory.mktemp("convert")
    pre = write_pretrain_checkpoint(str(root / "pre.pth"), authors_keys("pretrain", **SMALL))
    lin = write_linear_checkpoint(str(root / "lin.pth"), authors_keys("linear", **SMALL))
    return root, pre, lin


@pytest.fixture(scope="module")
def converted(checkpoints):
    """The run directory `python -m care_tf.convert pre.pth --linear lin.pth` writes."""
    root = checkpoints[0]
    run = root / "run"
    assert main([str(root / "pre.pth"), "--linear", str(root / "lin.pth"), "--out", str(run)]) == 0
    return run


def test_every_tensor_lands_in_its_keras_weight(converted, checkpoints):
    """Values, not shapes: each key's tensor (transposed as the layer needs) is in exactly
    the Keras weight the authors' module structure says, and every weight got one."""
    import keras

    _, pre, lin = checkpoints
    record = json.loads((converted / "convert.json").read_text())
    assert record["sources"]["pretrain"]["epoch"] == 100
    assert record["pretrain"]["image_size"] == 64

    model = keras.saving.load_model(converted / "model.keras", compile=False)
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

    backbone = keras.saving.load_model(converted / "backbone.keras", compile=False)
    for a, b in zip(backbone.weights, model.backbone.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    classifier = keras.saving.load_model(converted / "classifier.keras", compile=False)
    seen = check_every_tensor(
        lin,
        "module.",
        classifier.backbone,
        None,
        {"classifier": (classifier.head,)},
        skip=("encoder.fc.",),
    )
    assert {id(v) for v in classifier.weights} == seen


def test_cli_refuses_an_unsafe_checkpoint_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    write_torch_zip(str(path), {"model": {"w": np.ones(2, np.float32)}, "x": Evil()})
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "evil.pth" in err, err
    assert "system" in err and "Nothing from the file was run" in err
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
    assert len(backbone.output.shape) == 2  # a plain Keras model: images -> (B, C) features
    logits = keras.layers.Dense(3)(backbone(inputs))
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [np.asarray(w).copy() for w in backbone.trainable_weights]
    x = np.random.default_rng(0).normal(size=(4, 64, 64, 3)).astype("float32")
    model.fit(x, np.array([0, 1, 2, 0]), epochs=1, batch_size=4, verbose=0)
    after = [np.asarray(w) for w in backbone.trainable_weights]
    assert not all(np.allclose(a, b) for a, b in zip(before, after, strict=True))


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
    # The classifier export checks its inputs as the backbone export does.
    nan = np.full((1, 64, 64, 3), np.nan, np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN|finite"):
        loaded.signatures["serving_default"](images=tf.constant(nan))
    wide = np.zeros((1, 2, 400, 3), np.uint8)  # aspect ratio 200 > the default 100
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_aspect_ratio"):
        loaded.signatures["serve_uint8"](images=tf.constant(wide))


@pytest.mark.slow
def test_evaluate_and_export_accept_the_converted_run(converted, tmp_path, fmnist_small):
    from care_tf.evaluate.__main__ import evaluate
    from care_tf.export import export_backbone

    common = ["--model_dir", str(converted), "--dataset", "fashion_mnist", "--limit", "64"]
    common += ["--batch_size", "32", "--quiet", "--out", str(tmp_path / "eval")]
    knn = evaluate(["knn", *common, "--k", "5"])
    assert 0 <= knn["top1"] <= 1 and knn["num_examples"] == 64
    scored = evaluate(["classifier", *common])
    assert scored["protocol"] == "classifier" and scored["num_examples"] == 64
    result = export_backbone(str(converted), str(tmp_path / "exported"), log=lambda _: None)
    assert os.path.isdir(result["saved_model"]) and os.path.isfile(result["tflite"])
