"""Evaluation of pretrained backbones: linear probe, kNN, online monitors, attention maps.

Command line: `python -m care_tf.evaluate {linear,knn,attention} --help` (see
docs/evaluation.md).
"""

from care_tf.evaluate.attention import attention_maps, save_attention_grid
from care_tf.evaluate.features import extract_features
from care_tf.evaluate.knn import knn_evaluate, knn_scores
from care_tf.evaluate.linear import (
    LinearClassifier,
    make_linear_head,
    probe_learning_rate,
    train_linear_probe,
    train_linear_probe_on_features,
)
from care_tf.evaluate.monitors import KNNMonitor, OnlineLinearProbe
from care_tf.evaluate.report import classification_report, plot_confusion_matrix, write_json
