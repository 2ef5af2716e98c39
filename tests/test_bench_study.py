"""Helpers of bench/study_fashion_mnist.py: loss de-averaging and the results table."""

import json
import os

import numpy as np
import pytest
from care_testing import load_bench


@pytest.fixture(scope="module")
def study():
    return load_bench("study_fashion_mnist")


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


def _write(path, name, payload):
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(json.dumps(payload))


def test_collect_and_table(study, tmp_path):
    eval_dir = tmp_path / "care" / "eval"
    _write(eval_dir, "knn.json", {"top1": 0.8, "top5": 0.99, "num_train": 60})
    for seed, top1 in ((0, 0.84), (1, 0.86)):
        payload = {"top1": top1, "top5": 0.995, "config": {"seed": seed, "epochs": 80}}
        _write(eval_dir, f"linear_seed{seed}.json", payload)
    table = study.collect(str(tmp_path))
    assert set(table) == {"care"}
    row = table["care"]
    assert row["linear_top1"] == pytest.approx(0.85)
    assert row["linear_top1_range"] == (0.84, 0.86)
    text = study.markdown_table(table)
    assert "| CARE | 80.00 | 99.00 | 85.00 (84.00, 86.00) | 99.50 |" in text
    assert "| BYOL | n/a |" in text


def test_collect_averages_pretraining_seeds(study, tmp_path):
    """Seed k > 0 lives in MODEL_seedK; kNN averages seeds, linear averages every pair."""
    knn = {"byol": 0.70, "byol_seed1": 0.74, "byol_seed12": 0.78, "byol_seedx": 0.0}
    for d, top1 in knn.items():
        _write(tmp_path / d / "eval", "knn.json", {"top1": top1, "top5": 0.9, "num_train": 6})
    linear = {("byol", 0): 0.80, ("byol", 1): 0.82, ("byol_seed1", 0): 0.90}
    for (d, seed), top1 in linear.items():
        payload = {"top1": top1, "top5": 1.0, "config": {"seed": seed, "epochs": 5}}
        _write(tmp_path / d / "eval", f"linear_seed{seed}.json", payload)
    assert [s for s, _ in study.seed_dirs(str(tmp_path), "byol")] == [0, 1, 12]
    assert study.seed_dirs(str(tmp_path), "random") == []
    row = study.collect(str(tmp_path))["byol"]
    assert row["knn_top1"] == pytest.approx(np.mean([0.70, 0.74, 0.78]))
    assert row["knn_top1_seeds"] == {0: 0.70, 1: 0.74, 12: 0.78}
    assert row["linear_top1"] == pytest.approx(np.mean([0.80, 0.82, 0.90]))
    assert row["linear_top1_range"] == (0.80, 0.90)
    assert row["linear_top1_seeds"] == {"0/0": 0.80, "0/1": 0.82, "1/0": 0.90}
    text = study.markdown_table({"byol": row})
    assert "| BYOL | 74.00 (70.00, 74.00, 78.00) | 90.00 | 84.00 (80.00, 82.00 / 90.00) |" in text
    json.dumps(row)  # results.json must be writable


def test_study_jobs_queue_order(study):
    """Every pretraining run is queued before any probe; seed k trains with train.seed=k."""
    args = study.build_parser().parse_args(["--pretrain_seeds", "0", "3", "--seeds", "0", "1"])
    s = study.settings(args)
    jobs = study.study_jobs(s, args)
    names = [j.name for j in jobs]
    assert names[:4] == ["train_care", "train_byol", "train_care_seed3", "train_byol_seed3"]
    seed3 = jobs[2].argv
    assert seed3[seed3.index("--model_dir") + 1] == os.path.join("runs/study", "care_seed3")
    assert "train.seed=3" in seed3
    assert "train.seed=0" not in jobs[0].argv
    by_name = {j.name: j for j in jobs}
    assert by_name["knn_care_seed3"].after == ("train_care_seed3",)
    assert by_name["linear_byol_seed3_seed1"].after == ("train_byol_seed3",)
    assert "linear_random_seed1" not in by_name  # extra probe seeds only for the pair
    # The grid is done per study, not by an earlier study's PNG in the figures folder.
    assert by_name["attention"].done == os.path.join("runs/study", "attention.png")
    assert len(names) == len(set(names))


def test_earlier_records_survive_an_interrupted_driver(study, tmp_path):
    """Timings come from logs/jobs.jsonl (per finished job), then from the old results.json."""
    (tmp_path / "logs").mkdir()
    lines = [
        {"job": "train_care", "returncode": 0, "wall_s": 10.0, "cpu_s": 9.0},
        {"job": "knn_care", "returncode": 1, "wall_s": 1.0, "cpu_s": 1.0},
    ]
    (tmp_path / "logs" / "jobs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    old = {"jobs": {"train_byol": {"wall_s": 5.0}, "attention": {"skipped": "already done"}}}
    got = study.earlier_records(str(tmp_path), old)
    assert got == {
        "train_care": {"returncode": 0, "wall_s": 10.0, "cpu_s": 9.0},
        "train_byol": {"wall_s": 5.0},
    }
