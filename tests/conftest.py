"""Shared test setup: quiet TF, two logical CPU devices for distribution tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Split the CPU into two logical devices before TF initialises its runtime, so
# MirroredStrategy tests can run two replicas on one machine.
_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
    )
except RuntimeError:  # runtime already initialised by an earlier import
    pass

FMNIST_DIR = os.environ.get("CARE_DATA_DIR", "/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts with float32 policy and a fixed seed."""
    import keras

    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def fmnist_small():
    """A few hundred real Fashion-MNIST training images (uint8, N x 28 x 28) and labels."""
    from care_tf.data import load_fashion_mnist

    try:
        images, labels = load_fashion_mnist("train")
    except FileNotFoundError:
        pytest.skip(f"Fashion-MNIST not found at {FMNIST_DIR} (run `make data`)")
    return np.array(images[:512]), np.array(labels[:512])
