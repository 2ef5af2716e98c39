"""Helpers of bench/probe_convergence.py: cross-entropy and the converged logistic regression."""

import math

import numpy as np
import pytest
from care_testing import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("probe_convergence")


def test_cross_entropy_matches_per_example_formula(bench):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 4)) * 30  # large logits: needs the max shift
    labels = rng.integers(0, 4, 7)
    expected = np.mean(
        [
            -row[y] + max(row) + math.log(sum(math.exp(v - max(row)) for v in row))
            for row, y in zip(logits.tolist(), labels.tolist(), strict=True)
        ]
    )
    assert bench.cross_entropy(logits, labels) == pytest.approx(expected, rel=1e-9)


def test_logistic_regression_fits_separable_features(bench):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 8)) * 4
    y = rng.integers(0, 3, 600)
    x = centres[y] + rng.normal(size=(600, 8))
    out = bench.logistic_regression(x[:400], y[:400], x[400:], y[400:], max_iter=500)
    assert out["test_top1"] > 0.97
    assert 0 <= out["train_loss"] < 0.1
    assert out["iterations"] >= 1
