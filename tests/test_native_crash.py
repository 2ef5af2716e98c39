"""No native crash: training steps over widths x image sizes x batch sizes in subprocesses.

oneDNN's Conv2DBackpropFilter for 1x1 stride-2 kernels with 2, 4 or 8 input channels
corrupts the heap (SIGSEGV or a glibc abort) at some sizes; ResNet projections avoid it
(`care_tf.models.resnet.Subsample2D`). Each sweep runs in a child process, so a signal
death fails the test (naming the configuration that was running) instead of killing pytest.
"""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from care_tf.models.resnet import Subsample2D, conv2d

# One child process runs the steps of every configuration of its grid, printing each first.
SWEEP = r"""
import json, sys
import numpy as np, keras, tensorflow as tf
import care_tf

for case in json.loads(sys.argv[1]):
    print("CASE", json.dumps(case), flush=True)
    size, width, batch = case["size"], case["width"], case["batch"]
    rng = np.random.default_rng(0)
    images = rng.random((batch, size, size, 3), dtype=np.float32)
    if case.get("care"):  # the whole CARE model through Keras' train_on_batch
        model = care_tf.CARE.from_preset(
            "resnet18", image_size=size, backbone_kwargs={"base_channels": width},
            transformer_kwargs={"num_blocks": 1}, hidden_dim=32, projection_dim=16,
            total_steps=10,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        for _ in range(case.get("steps", 2)):
            logs = model.train_on_batch((images, images[::-1]), return_dict=True)
        assert np.isfinite(logs["loss"]), logs
        continue
    # The backbone alone: forward + backward in training mode, then an SGD update.
    backbone = care_tf.create_backbone(
        "resnet18", image_shape=(size, size, 3), base_channels=width,
        stem="cifar" if size <= 64 else "imagenet",
    )
    optimizer = keras.optimizers.SGD(0.01)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            out = backbone(x, training=True)
            loss = tf.reduce_mean(tf.square(out["res5"])) + tf.reduce_mean(out["res4"])
        grads = tape.gradient(loss, backbone.trainable_weights)
        optimizer.apply_gradients(zip(grads, backbone.trainable_weights))
        return loss

    for _ in range(case.get("steps", 3)):
        loss = float(step(images))
    assert np.isfinite(loss), loss
print("SWEEP OK", flush=True)
"""


def _grid(widths, sizes, batches, **extra):
    return [
        {"width": w, "size": s, "batch": b, **extra} for w in widths for s in sizes for b in batches
    ]


def run_sweep(cases: list, timeout: int = 1500) -> None:
    """Runs `cases` in one child process; fails naming the case on a signal or an error."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)  # the default (oneDNN on) is what users run
    proc = subprocess.run(
        [sys.executable, "-c", SWEEP, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    started = [line[5:] for line in proc.stdout.splitlines() if line.startswith("CASE ")]
    last = started[-1] if started else "(none started)"
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        pytest.fail(f"child killed by {name} during {last}:\n{proc.stderr[-2000:]}")
    assert proc.returncode == 0, f"failed during {last}:\n{proc.stderr[-3000:]}"
    assert "SWEEP OK" in proc.stdout and len(started) == len(cases)


def test_subsample_conv_equals_strided_1x1_conv():
    """Subsample2D + 1x1 conv gives the strided 1x1 conv's output and kernel gradient."""
    rng = np.random.default_rng(1)
    for size in (8, 9):  # even and odd maps: "same" padding of a 1x1 kernel pads nothing
        x = tf.constant(rng.normal(size=(3, size, size, 16)), "float32")
        inputs = keras.Input((size, size, 16))
        model = keras.Model(inputs, conv2d(inputs, 32, 1, 2, "proj"))
        kernel = model.get_layer("proj").kernel
        with tf.GradientTape() as tape:
            y = model(x)
            loss = tf.reduce_sum(y * y)
        grad = tape.gradient(loss, kernel).numpy()[0, 0]
        k = kernel.numpy()[0, 0]
        sub = x.numpy()[:, ::2, ::2, :]
        want = np.einsum("nhwc,cd->nhwd", sub, k)
        assert y.shape == (3, (size + 1) // 2, (size + 1) // 2, 32)
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-4, atol=1e-4)
        # d(sum y^2)/dk = sum_nhw sub^T (2 y)
        np.testing.assert_allclose(
            grad, np.einsum("nhwc,nhwd->cd", sub, 2 * want), rtol=1e-3, atol=1e-3
        )
        reference = tf.nn.conv2d(x, kernel, strides=2, padding="SAME")
        np.testing.assert_allclose(y.numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)
    assert Subsample2D.from_config(Subsample2D(3).get_config()).stride == 3


def test_no_native_crash_small_grid():
    """The configurations that crashed: widths 4 and 8 at 64 px (batch 16) and batch 1."""
    cases = [
        {"width": 8, "size": 64, "batch": 16},
        {"width": 4, "size": 48, "batch": 4},
        {"width": 8, "size": 32, "batch": 1},
        {"width": 2, "size": 32, "batch": 2},
    ]
    run_sweep(cases, timeout=900)


@pytest.mark.slow
def test_no_native_crash_wide_grid():
    """ResNet-18 backbones of widths 2-16 at 16-96 px and batches 1-32, the 224 px
    ImageNet stem, and the whole CARE model at 64 and 224 px through train_on_batch."""
    cases = _grid((2, 4, 8, 16), (16, 32, 48, 64, 96), (1, 2, 16, 32), steps=2)
    cases += _grid((8,), (224,), (1, 8), steps=1)
    cases += _grid((8,), (64,), (16,), care=True) + _grid((8,), (224,), (4,), care=True, steps=1)
    run_sweep(cases, timeout=5400)


def test_batch_of_one_is_a_clear_error():
    """BatchNorm over one example is degenerate: refused like PyTorch's, not a crash."""
    import care_testing

    model = care_testing.tiny_care(num_blocks=1)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    x = np.zeros((1, 32, 32, 3), "float32")
    with pytest.raises(ValueError, match="more than one value per channel.*batch of 2"):
        model.train_on_batch((x, x))
