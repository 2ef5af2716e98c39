"""Export for deployment: SavedModel for TF Serving, TFLite, verification.

python -m care_tf.export --model_dir runs/x --out exported --format all

Names are imported on first use (see care_tf/_lazy.py).
"""

from care_tf._lazy import lazy_package as _lazy_package

_EXPORTS = {
    "ExportError": "care_tf.export.source",
    "export_backbone": "care_tf.export.exporter",
    "export_classifier": "care_tf.export.classifier",
}
_lazy_package(__name__, _EXPORTS)
