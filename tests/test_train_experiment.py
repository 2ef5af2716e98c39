"""One builder for both routes: `Experiment.fit()` and the CLI's step train the same weights."""

import os

import numpy as np
import pytest
import tensorflow as tf

import care_tf
from care_tf.train.experiment import build_experiment, make_dataset
from care_tf.train.loop import make_step_function

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "quickstart.yaml")
TINY = [
    "model.base_channels=4",
    "model.hidden_dim=32",
    "model.projection_dim=16",
    "model.transformer_kwargs={num_blocks: 1}",
    "data.max_examples=64",
    "data.shuffle_buffer=64",
    "train.global_batch_size=8",
]


@pytest.mark.slow  # ~40 s on an idle 2-core machine: two model builds and traces
@pytest.mark.usefixtures("fmnist_small")
def test_fit_route_and_cli_step_train_identical_weights():
    steps = 3
    fit_exp = build_experiment(CONFIG, overrides=TINY)
    history = fit_exp.model.fit(fit_exp.dataset, steps_per_epoch=steps, epochs=1, verbose=0)

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")  # the CLI's strategy on a CPU
    cli_exp = build_experiment(CONFIG, overrides=TINY, strategy=strategy)
    iterator = iter(  # as loop.run builds it: per-replica input
        strategy.distribute_datasets_from_function(
            lambda context: make_dataset(
                cli_exp.config, cli_exp.source, cli_exp.worker, input_context=context
            )
        )
    )
    logs = make_step_function(cli_exp.model, strategy)(iterator, tf.constant(steps, tf.int32))

    assert isinstance(fit_exp.model.optimizer, care_tf.TorchSGD)
    assert int(fit_exp.model.steps.numpy()) == int(cli_exp.model.steps.numpy()) == steps
    np.testing.assert_allclose(history.history["loss"][-1], float(logs["loss"]), rtol=1e-6)
    for a, b in zip(fit_exp.model.weights, cli_exp.model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7, err_msg=a.path)
