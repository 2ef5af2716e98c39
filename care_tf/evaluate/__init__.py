"""Evaluation of pretrained backbones: linear probe, kNN, online monitors, attention maps.

Command line: `python -m care_tf.evaluate {linear,knn,attention} --help` (see
docs/evaluation.md). Names are imported on first use (see care_tf/_lazy.py).
"""

from care_tf._lazy import lazy_package as _lazy_package

_EXPORTS = {
    "attention_maps": "care_tf.evaluate.attention",
    "save_attention_grid": "care_tf.evaluate.attention",
    "extract_features": "care_tf.evaluate.features",
    "knn_evaluate": "care_tf.evaluate.knn",
    "knn_scores": "care_tf.evaluate.knn",
    "LinearClassifier": "care_tf.evaluate.linear",
    "make_linear_head": "care_tf.evaluate.linear",
    "probe_learning_rate": "care_tf.evaluate.linear",
    "train_linear_probe": "care_tf.evaluate.linear",
    "train_linear_probe_on_features": "care_tf.evaluate.linear",
    "KNNMonitor": "care_tf.evaluate.monitors",
    "OnlineLinearProbe": "care_tf.evaluate.monitors",
    "classification_report": "care_tf.evaluate.report",
    "plot_confusion_matrix": "care_tf.evaluate.report",
    "write_json": "care_tf.evaluate.report",
}
_lazy_package(__name__, _EXPORTS)
