"""Results of an evaluation: accuracies, per-class accuracy, confusion matrix, JSON, PNG."""

from __future__ import annotations

import os

import numpy as np

from care_tf import atomic
from care_tf.evaluate.knn import top_k_accuracy


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 (C, C): row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return cm


def classification_report(
    scores: np.ndarray, labels: np.ndarray, class_names: list[str] | None = None
) -> dict:
    """Top-1, top-5, per-class accuracy and confusion matrix of class scores.

    Args:
        scores: float (N, C). Logits or kNN vote scores.
        labels: int (N,). True classes.
        class_names: optional C names (defaults to "0", "1", ...).

    Returns:
        A JSON-serialisable dict: `top1`, `top5` (fractions), `num_examples`,
        `per_class_accuracy` {name: fraction or None if the class is absent},
        `class_names`, `confusion_matrix` (C x C list, rows = true class).
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels, np.int64).reshape(-1)
    num_classes = scores.shape[1]
    if class_names is None or len(class_names) != num_classes:
        class_names = [str(i) for i in range(num_classes)]
    predictions = np.argmax(scores, axis=1)
    cm = confusion_matrix(labels, predictions, num_classes)
    support = cm.sum(axis=1)
    per_class = {
        name: (float(cm[i, i] / support[i]) if support[i] else None)
        for i, name in enumerate(class_names)
    }
    return {
        "top1": top_k_accuracy(scores, labels, 1),
        "top5": top_k_accuracy(scores, labels, 5),
        "num_examples": int(len(labels)),
        "per_class_accuracy": per_class,
        "class_names": list(class_names),
        "confusion_matrix": cm.tolist(),
    }


def plot_confusion_matrix(
    cm, class_names: list[str] | None, path: str, title: str = "Confusion matrix"
) -> str:
    """Writes a row-normalised confusion-matrix heatmap (PNG) to `path`; returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, np.float64)
    num_classes = cm.shape[0]
    names = class_names or [str(i) for i in range(num_classes)]
    normalised = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * num_classes + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if num_classes <= 30:
        ax.set_xticks(range(num_classes), names, rotation=90)
        ax.set_yticks(range(num_classes), names)
        for i in range(num_classes):
            for j in range(num_classes):
                if cm[i, j]:
                    color = "white" if normalised[i, j] > 0.5 else "black"
                    ax.text(
                        j,
                        i,
                        f"{normalised[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=color,
                    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic.replacing(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def result_name(kind: str, limit: int | None = None, model_file: str | None = None) -> str:
    """File stem of an evaluation's results: `knn` for a run directory, `knn_limit5000` for
    a `--limit` run (a smoke run never overwrites the full evaluation), `knn_model` /
    `knn_limit5000_model` for a `.keras` file evaluated directly (here `model.keras`),
    so results of different sources never replace each other."""
    stem = f"{kind}_limit{limit}" if limit else kind
    if model_file:
        name = os.path.basename(os.path.normpath(model_file))
        stem += "_" + name.removesuffix(".keras")
    return stem


def write_json(results: dict, path: str) -> str:
    """Writes `results` as indented JSON (NumPy values converted); returns `path`."""

    def convert(value):
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"Not JSON serialisable: {type(value).__name__}")

    return atomic.write_json(path, results, default=convert)
