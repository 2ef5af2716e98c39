"""backbone.keras in Keras' built-in layers: same features, loads in a process without care_tf."""

import json
import os
import subprocess
import sys

import care_testing
import keras
import numpy as np
import pytest

import care_tf
from care_tf import model_dir as layout
from care_tf.models.conv import MatmulConv2D
from care_tf.models.plain import plain_copy, plain_feature_extractor, resnet_arguments

# Run in a child process: care_tf cannot be imported there (a meta-path finder refuses
# it), so the files must load with Keras alone. Prints one JSON line of results.
FRESH_PROCESS = r"""
import importlib.abc, json, sys


class NoCareTF(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "care_tf":
            raise ImportError(f"this process must not import {name}")
        return None


sys.meta_path.insert(0, NoCareTF())
import keras
import numpy as np

args = json.loads(sys.argv[1])
result = {"backend": keras.backend.backend(), "max_abs_difference": {}}
for name, case in args["cases"].items():
    model = keras.saving.load_model(case["file"], compile=False)
    x = np.load(case["inputs"])
    got = keras.ops.convert_to_numpy(model(x, training=False))
    result["max_abs_difference"][name] = float(np.abs(got - np.load(case["features"])).max())
    if case.get("fine_tune"):  # Keras' own fit on the loaded backbone + a head
        classifier = keras.Sequential([model, keras.layers.Dense(3)])
        classifier.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        before = keras.ops.convert_to_numpy(model.weights[0])
        loss = classifier.train_on_batch(x[:1], np.zeros(1))
        assert np.isfinite(loss) and not np.array_equal(before, model.weights[0]), loss
if args.get("full_model"):
    try:
        keras.saving.load_model(args["full_model"], compile=False)
        result["full_model_error"] = None
    except Exception as err:
        result["full_model_error"] = f"{type(err).__name__}: {err}"
result["care_tf_imported"] = any(m.split(".")[0] == "care_tf" for m in sys.modules)
print("RESULT", json.dumps(result), flush=True)
"""


def run_fresh(args: dict, env: dict | None = None, python: str = sys.executable) -> dict:
    """Runs FRESH_PROCESS with `args`; returns its result (fails with its stderr)."""
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != "PYTHONPATH"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [python, "-c", FRESH_PROCESS, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def randomize_batch_norm(model: keras.Model, seed: int = 0) -> None:
    """Non-trivial BatchNorm parameters and moving statistics (not the 0/1 of an init)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        leaf = v.path.rsplit("/", 1)[-1]
        if leaf == "moving_variance":
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype("float32"))
        elif leaf in ("moving_mean", "gamma", "beta"):
            v.assign((float(leaf == "gamma") + rng.normal(0, 0.3, v.shape)).astype("float32"))


def all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


def backbone(depth: int, stem: str, size: int, sync_bn: bool = False) -> keras.Model:
    model = care_tf.create_backbone(
        f"resnet{depth}", image_shape=(size, size, 3), base_channels=8, stem=stem, sync_bn=sync_bn
    )
    randomize_batch_norm(model)
    return model


@pytest.mark.parametrize(
    "depth, stem, size, include_normalization",
    [
        (18, "cifar", 32, False),
        (18, "imagenet", 64, True),
        (50, "imagenet", 64, False),
        (50, "cifar", 32, True),
    ],
)
def test_plain_copy_gives_the_backbones_features(depth, stem, size, include_normalization):
    """Basic and bottleneck blocks, both stems, with and without the normalisation layer."""
    model = backbone(depth, stem, size, sync_bn=depth == 50)
    rng = np.random.default_rng(1)
    x = (
        rng.uniform(0, 255, (2, size, size, 3))
        if include_normalization
        else rng.normal(size=(2, size, size, 3))
    )
    x = x.astype("float32")
    plain = plain_feature_extractor(model, include_normalization=include_normalization)
    ours = care_tf.feature_extractor(model, include_normalization=include_normalization)
    np.testing.assert_allclose(plain(x).numpy(), ours(x).numpy(), rtol=1e-5, atol=1e-5)
    modules = {type(layer).__module__.split(".")[0] for layer in all_layers(plain)}
    assert modules == {"keras"}, [type(layer) for layer in all_layers(plain)]
    norms = [layer for layer in all_layers(plain) if "BatchNorm" in type(layer).__name__]
    assert norms and not any(layer.synchronized for layer in norms)
    # The inner multi-output backbone: same maps, same layer names, no shared variable.
    maps = care_tf.feature_maps_model(plain)
    normalised = ours.get_layer("normalize")(x) if include_normalization else x
    got, want = maps(normalised), model(normalised)
    for key in ("res4", "res5", "pooled"):
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-5, atol=1e-5)
    assert [layer.name for layer in model.layers if layer.weights] == [
        layer.name for layer in maps.layers if layer.weights
    ]
    assert not {id(v) for v in model.weights} & {id(v) for v in plain.weights}


def test_strided_matmul_conv_becomes_pooling_then_conv():
    """A strided 1x1 MatmulConv2D is copied as a 1x1 pooling + a stride-1 Conv2D."""
    inputs = keras.Input((9, 9, 8))
    outputs = MatmulConv2D(16, 1, strides=2, use_bias=True, name="proj")(inputs)
    model = keras.Model(inputs, outputs)
    model.get_layer("proj").bias.assign(np.linspace(-1, 1, 16).astype("float32"))
    plain = plain_copy(model)
    assert [type(layer).__name__ for layer in plain.layers] == [
        "InputLayer",
        "MaxPooling2D",
        "Conv2D",
    ]
    assert plain.get_layer("proj").strides == (1, 1)
    x = np.random.default_rng(2).normal(size=(3, 9, 9, 8)).astype("float32")
    kernel, bias = (w.numpy() for w in model.get_layer("proj").weights)
    want = np.einsum("nhwc,cd->nhwd", x[:, ::2, ::2], kernel[0, 0]) + bias
    assert plain(x).shape == (3, 5, 5, 16)
    np.testing.assert_allclose(plain(x).numpy(), want, rtol=1e-5, atol=1e-5)


def test_plain_copy_refuses_a_subclassed_model():
    class Doubler(keras.Model):
        def call(self, x):
            return 2 * x

    with pytest.raises(ValueError, match="not a functional Keras model"):
        plain_copy(Doubler(name="doubler"))


def test_backbone_keras_loads_without_care_tf(tmp_path):
    """A run's backbone.keras loads and gives the same features in a process that cannot
    import care_tf, and fine-tunes there (width 8, batch 1) without the oneDNN crash of
    strided 1x1 convolutions on few channels (see test_native_crash.py)."""
    keras.utils.set_random_seed(0)
    model = care_testing.tiny_care(total_steps=10)
    randomize_batch_norm(model)
    run = tmp_path / "run"
    layout.save_models(model, str(run))
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype("float32")
    want = care_tf.feature_extractor(model)(x).numpy()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "f.npy", want)
    case = {"file": str(run / "backbone.keras"), "fine_tune": True}
    case.update(inputs=str(tmp_path / "x.npy"), features=str(tmp_path / "f.npy"))
    cases = {"run": case}
    args = {"cases": cases, "full_model": str(run / "model.keras")}
    result = run_fresh(args)
    assert result["backend"] == "tensorflow" and not result["care_tf_imported"]
    assert max(result["max_abs_difference"].values()) < 1e-5, result
    # model.keras holds care_tf's CARE class: Keras alone cannot build it, and its message
    # names the class and the module to import (documented in docs/training.md).
    error = result["full_model_error"]
    assert error.startswith("TypeError: Could not locate class 'CARE'")
    assert "'module': 'care_tf.models.care'" in error[:600]
    # With care_tf, both the new file and a backbone.keras of earlier versions (care_tf's
    # layers) load through care_tf.load_backbone.
    np.testing.assert_allclose(care_tf.load_backbone(str(run))(x).numpy(), want, atol=1e-5)
    care_tf.feature_extractor(model).save(str(run / "backbone.keras"))
    old = care_tf.load_backbone(str(run))
    assert any(type(layer).__module__.startswith("care_tf") for layer in all_layers(old))
    np.testing.assert_allclose(old(x).numpy(), want, atol=1e-5)
    layout.save_backbone(old, str(run / "backbone.keras"))  # rewritten in built-in layers
    again = keras.saving.load_model(str(run / "backbone.keras"))
    assert {type(layer).__module__.split(".")[0] for layer in all_layers(again)} == {"keras"}
    np.testing.assert_allclose(again(x).numpy(), want, atol=1e-5)


def jax_python() -> str | None:
    """A Python with Keras and jax: $CARE_TF_JAX_PYTHON, else this one if it has jax."""
    import importlib.util

    if os.environ.get("CARE_TF_JAX_PYTHON"):
        return os.environ["CARE_TF_JAX_PYTHON"]
    return sys.executable if importlib.util.find_spec("jax") else None


@pytest.mark.slow
@pytest.mark.skipif(jax_python() is None, reason="no Python with jax (set CARE_TF_JAX_PYTHON)")
def test_backbone_keras_loads_under_the_jax_backend(tmp_path):
    """backbone.keras gives the same features under KERAS_BACKEND=jax, without TensorFlow."""
    model = backbone(50, "imagenet", 64, sync_bn=True)  # Keras refuses sync BN under jax
    layout.save_backbone(model, str(tmp_path / "backbone.keras"))
    x = np.random.default_rng(4).normal(size=(2, 64, 64, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "f.npy", care_tf.feature_extractor(model)(x).numpy())
    case = {"file": str(tmp_path / "backbone.keras")}
    case.update(inputs=str(tmp_path / "x.npy"), features=str(tmp_path / "f.npy"))
    result = run_fresh({"cases": {"r50": case}}, {"KERAS_BACKEND": "jax"}, python=jax_python())
    assert result["backend"] == "jax" and not result["care_tf_imported"]
    assert result["max_abs_difference"]["r50"] < 1e-4, result


@pytest.mark.parametrize("name, stem", [("resnet18", "cifar"), ("resnet50x2", "imagenet")])
def test_resnet_arguments_are_read_back_from_a_plain_copy(name, stem):
    model = care_tf.create_backbone(name, image_shape=(32, 32, 3), base_channels=8, stem=stem)
    config = model.get_config()
    keys = ("depth", "width_multiplier", "base_channels", "stem", "image_shape")
    assert resnet_arguments(plain_copy(model)) == {k: config[k] for k in keys}
    inputs = keras.Input((8, 8, 3))
    assert resnet_arguments(keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))) == {}


def test_export_checks_a_plain_backbone_against_config_yaml(tmp_path):
    """Export rebuilds config.yaml's backbone with the plain file's stem and width."""
    from care_tf.export.source import ExportError, load_source

    model = backbone(18, "cifar", 32)
    layout.save_backbone(model, str(tmp_path / "backbone.keras"))
    config = {"model": {"backbone": "resnet18"}, "data": {"image_size": 32}}
    (tmp_path / "config.yaml").write_text(json.dumps(config))  # YAML reads JSON
    source = load_source(str(tmp_path))
    assert source.image_size == 32
    assert source.describe()["config"] == {
        "depth": 18,
        "width_multiplier": 1,
        "base_channels": 8,
        "stem": "cifar",
        "image_shape": [32, 32, 3],
    }
    config["model"]["backbone"] = "resnet50"
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="config.yaml names backbone 'resnet50'"):
        load_source(str(tmp_path))
