"""Helpers of bench/study_fashion_mnist.py: loss de-averaging and the results table."""

import importlib.util
import json
import os

import numpy as np
import pytest

_PATH = os.path.join(os.path.dirname(__file__), "..", "bench", "study_fashion_mnist.py")


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_fashion_mnist", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interval_means_recovers_per_step_losses(study):
    """The CLI logs epoch-running means; interval means undo them exactly."""
    rng = np.random.default_rng(0)
    spe, total, every = 7, 20, 3
    losses = rng.uniform(1, 5, total)
    logged = []
    for step in range(1, total + 1):  # what the training loop writes
        epoch = (step - 1) // spe
        if step % every == 0 or step % spe == 0 or step == total:
            logged.append((step, losses[epoch * spe : step].mean()))
    got = study.interval_means(logged, spe)
    bounds = [0] + [s for s, _ in got][:-1]
    # Each interval starts after the previous logged step (every epoch end is logged).
    for (step, mean), start in zip(got, bounds, strict=True):
        assert mean == pytest.approx(losses[start:step].mean(), rel=1e-9)
    assert [s for s, _ in got] == [s for s, _ in logged]


def test_collect_and_table(study, tmp_path):
    eval_dir = tmp_path / "care" / "eval"
    eval_dir.mkdir(parents=True)
    (eval_dir / "knn.json").write_text(json.dumps({"top1": 0.8, "top5": 0.99, "num_train": 60}))
    for seed, top1 in ((0, 0.84), (1, 0.86)):
        (eval_dir / f"linear_seed{seed}.json").write_text(
            json.dumps({"top1": top1, "top5": 0.995, "config": {"seed": seed, "epochs": 80}})
        )
    table = study.collect(str(tmp_path))
    assert set(table) == {"care"}
    row = table["care"]
    assert row["linear_top1"] == pytest.approx(0.85)
    assert row["linear_top1_range"] == (0.84, 0.86)
    text = study.markdown_table(table)
    assert "| CARE | 80.00 | 99.00 | 85.00 (84.00, 86.00) | 99.50 |" in text
    assert "| BYOL | n/a |" in text
