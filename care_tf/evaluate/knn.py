"""Weighted k-nearest-neighbour classification of features (the InstDisc protocol).

For each test feature: cosine similarity to every training feature (both
L2-normalised), the top-k neighbours vote for their class with weight
exp(similarity / temperature); the class scores are the summed weights.
Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination" (CVPR 2018), k = 200, temperature 0.1 as in DINO and solo-learn.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from care_tf.constants import DEFAULT_K, DEFAULT_TEMPERATURE


def knn_scores(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    *,
    num_classes: int | None = None,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    batch_size: int = 256,
) -> np.ndarray:
    """Class scores of the weighted kNN vote.

    Args:
        train_features: float (N_train, D). Normalised here (L2).
        train_labels: int (N_train,). Class ids in [0, num_classes).
        test_features: float (N_test, D). Normalised here (L2).
        num_classes: int. Defaults to `max(train_labels) + 1`.
        k: int. Neighbours per query (capped at N_train). Defaults to 200.
        temperature: float. Softmax-like temperature of the vote weights
            exp(cos / T). Defaults to 0.1.
        batch_size: int. Test features per similarity block (memory: a block
            holds batch_size x N_train floats).

    Returns:
        float32 (N_test, num_classes): summed vote weights per class.
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"Need k >= 1 and temperature > 0. Received: k={k}, T={temperature}")
    train_labels = np.asarray(train_labels, np.int64).reshape(-1)
    if len(train_labels) != len(train_features):
        raise ValueError(
            f"{len(train_features)} train features but {len(train_labels)} train labels."
        )
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    train = tf.math.l2_normalize(tf.constant(train_features, tf.float32), axis=1)
    labels = tf.constant(train_labels)
    k = min(k, len(train_labels))

    def block(queries):
        queries = tf.math.l2_normalize(queries, axis=1)
        sims = tf.matmul(queries, train, transpose_b=True)  # (B, N_train)
        top_sims, top_idx = tf.math.top_k(sims, k=k)  # (B, k)
        weights = tf.exp(top_sims / temperature)
        votes = tf.one_hot(tf.gather(labels, top_idx), num_classes)  # (B, k, C)
        return tf.einsum("bk,bkc->bc", weights, votes)

    test = np.asarray(test_features, np.float32)
    out = [block(tf.constant(test[i : i + batch_size])) for i in range(0, len(test), batch_size)]
    return np.concatenate([np.asarray(o) for o in out]) if out else np.zeros((0, num_classes))


def knn_evaluate(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    num_classes: int | None = None,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    batch_size: int = 256,
) -> dict:
    """kNN top-1 / top-5 accuracy (fractions in [0, 1]) and the class scores.

    Returns:
        `{"top1", "top5", "scores" (N_test, C)}`.
    """
    test_labels = np.asarray(test_labels, np.int64).reshape(-1)
    if num_classes is None:
        num_classes = int(max(np.max(train_labels), np.max(test_labels))) + 1
    scores = knn_scores(
        train_features,
        train_labels,
        test_features,
        num_classes=num_classes,
        k=k,
        temperature=temperature,
        batch_size=batch_size,
    )
    return {
        "top1": top_k_accuracy(scores, test_labels, 1),
        "top5": top_k_accuracy(scores, test_labels, 5),
        "scores": scores,
    }


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the `k` highest scores (ties: lowest index first)."""
    labels = np.asarray(labels).reshape(-1)
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    # Stable sort on -scores keeps the lower class id first among equal scores.
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))
