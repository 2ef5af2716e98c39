"""The training CLI's TensorBoard: scalars, monitor figures once on the step axis, images."""

import glob
import os

import pytest
import tensorflow as tf

from care_tf.train import loop
from care_tf.train.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def events(directory) -> dict:
    """`{tag: [step, ...]}` of every summary in the event files under `directory`."""
    found: dict = {}
    for path in glob.glob(os.path.join(directory, "**", "events.out.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(event.step)
    return found


@pytest.mark.slow
@pytest.mark.usefixtures("fmnist_small")
def test_cli_tensorboard_layout(tmp_path):
    cfg = load_config(
        os.path.join(ROOT, "configs", "quickstart.yaml"),
        [
            "model.base_channels=4",
            "model.hidden_dim=32",
            "model.projection_dim=16",
            "data.max_examples=48",
            "data.shuffle_buffer=48",
            "train.global_batch_size=16",  # 3 steps per epoch
            "schedule.epochs=2",
            "schedule.warmup_epochs=0",
            "train.log_every_steps=1",
            "train.weight_histograms=true",
            "monitor.knn_every_epochs=1",
            "monitor.train_examples=64",
            "monitor.val_examples=32",
            "monitor.attention_images=4",
            "checkpoint.every_steps=0",
        ],
    )
    loop.run(cfg, tf.distribute.get_strategy(), str(tmp_path), progress=False)
    train = events(tmp_path / "logs" / "train")
    monitor = events(tmp_path / "logs" / "monitor")
    for tag in ("loss", "loss_c", "loss_t", "loss_att", "lr", "momentum"):
        assert train[f"train/{tag}"] == [1, 2, 3, 4, 5, 6], tag
    # Monitor figures once, at the global steps that end epochs 1 and 2.
    assert monitor["monitor/knn_top1"] == [3, 6]
    assert not [t for t in train if "knn" in t]
    assert monitor["monitor/attention"] == [3, 6]
    histograms = [t for t in train if t.startswith("weights/")]
    assert "weights/stem_conv/kernel" in histograms
    assert "weights/target_resnet18/stem_conv/kernel" in histograms
    assert train["weights/stem_conv/kernel"] == [3, 6]
