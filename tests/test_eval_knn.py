"""kNN against a NumPy reference; report helpers (confusion matrix, JSON, PNG)."""

import json

import numpy as np
import pytest

from care_tf.evaluate import classification_report, knn_evaluate, knn_scores
from care_tf.evaluate.knn import top_k_accuracy
from care_tf.evaluate.report import confusion_matrix, plot_confusion_matrix, write_json


def reference_knn(train, train_labels, test, num_classes, k, temperature):
    """Plain NumPy, one query at a time."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    scores = np.zeros((len(test), num_classes))
    for i, query in enumerate(test):
        sims = train @ (query / np.linalg.norm(query))
        top = np.argsort(-sims, kind="stable")[:k]
        for j in top:
            scores[i, train_labels[j]] += np.exp(sims[j] / temperature)
    return scores


@pytest.mark.parametrize("k, temperature", [(20, 0.1), (7, 0.5), (1000, 0.07)])
def test_knn_matches_numpy_reference(k, temperature):
    rng = np.random.default_rng(1)
    train = rng.normal(size=(300, 16)).astype(np.float32)
    train_labels = rng.integers(0, 6, 300)
    test = rng.normal(size=(45, 16)).astype(np.float32)
    test_labels = rng.integers(0, 6, 45)
    expected = reference_knn(train, train_labels, test, 6, min(k, 300), temperature)
    # A block size that does not divide the test set exercises the batching.
    scores = knn_scores(
        train, train_labels, test, num_classes=6, k=k, temperature=temperature, batch_size=16
    )
    np.testing.assert_allclose(scores, expected, rtol=2e-4, atol=1e-5)
    result = knn_evaluate(train, train_labels, test, test_labels, k=k, temperature=temperature)
    expected_top1 = np.mean(np.argmax(expected, 1) == test_labels)
    # Ties (e.g. classes without votes) rank the lower class id first.
    expected_top5 = np.mean(
        [y in np.argsort(-s, kind="stable")[:5] for s, y in zip(expected, test_labels, strict=True)]
    )
    assert result["top1"] == pytest.approx(expected_top1)
    assert result["top5"] == pytest.approx(expected_top5)


def test_knn_finds_clusters_and_validates():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 5
    labels = np.repeat(np.arange(4), 50)
    feats = centres[labels] + rng.normal(size=(200, 8)) * 0.1
    assert knn_evaluate(feats, labels, feats, labels, k=10)["top1"] == 1.0
    with pytest.raises(ValueError, match="temperature"):
        knn_scores(feats, labels, feats, temperature=0.0)
    with pytest.raises(ValueError, match="labels"):
        knn_scores(feats, labels[:10], feats)


def test_top_k_accuracy_and_report(tmp_path):
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4], [0.1, 0.3, 0.6]])
    labels = np.array([0, 1, 2, 2])
    assert top_k_accuracy(scores, labels, 1) == 0.75
    assert top_k_accuracy(scores, labels, 2) == 1.0
    report = classification_report(scores, labels, ["a", "b", "c"])
    assert report["top1"] == 0.75 and report["top5"] == 1.0
    assert report["per_class_accuracy"] == {"a": 1.0, "b": 1.0, "c": 0.5}
    assert report["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    np.testing.assert_array_equal(confusion_matrix(labels, [0, 1, 0, 2], 3).sum(), 4)

    png = plot_confusion_matrix(
        report["confusion_matrix"], ["a", "b", "c"], str(tmp_path / "cm.png")
    )
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    path = write_json(
        {**report, "array": np.arange(3), "x": np.float32(0.5)}, str(tmp_path / "r.json")
    )
    with open(path) as f:
        loaded = json.load(f)
    assert loaded["array"] == [0, 1, 2] and loaded["x"] == 0.5 and loaded["top1"] == 0.75
