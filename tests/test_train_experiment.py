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


@pytest.mark.slow  # ~24 s on the shared 2-core machine: a model build, a fit trace, two saves
@pytest.mark.usefixtures("fmnist_small")
def test_save_writes_the_clis_run_directory(tmp_path):
    from care_tf.evaluate import __main__ as evaluate
    from care_tf.export.source import load_source
    from care_tf.train.config import from_dict
    from care_tf.train.loop import read_train_state, weights_digest

    exp = build_experiment(
        "quickstart", overrides=[*TINY, "schedule.steps=2", "schedule.warmup_steps=1"]
    )
    history = exp.fit(verbose=0)
    run = str(tmp_path / "run")
    exp.save(run)

    assert sorted(os.listdir(run)) == [
        "backbone.keras", "config.yaml", "model.keras", "train_state.json"
    ]  # fmt: skip
    state = read_train_state(run)
    assert (state["step"], state["epoch"], state["total_steps"], state["complete"]) == (
        2,
        0,
        2,
        True,
    )
    assert state["loss"] == pytest.approx(history.history["loss"][-1], rel=1e-6)
    assert state["lr"] == pytest.approx(exp.schedule.value(2))
    assert state["online_sha256"] == weights_digest(exp.model.trainable_weights)
    saved = care_tf.train.config.read_yaml(os.path.join(run, "config.yaml"))
    assert from_dict(saved) == exp.config and saved["derived"]["total_steps"] == 2

    # Export takes it as a CLI run: it reads the step, and checks the backbone against
    # the config (evaluate's --dataset default reads the same config: test_eval_cli.py).
    source = load_source(run)
    assert source.step == 2 and source.config["model"]["base_channels"] == 4
    assert evaluate.dataset_of_run(run) == "fashion_mnist"
