"""Export for deployment: SavedModel for TF Serving, TFLite, verification.

python -m care_tf.export --model_dir runs/x --out exported --format all
"""

from care_tf.export.classifier import export_classifier
from care_tf.export.exporter import export_backbone
from care_tf.export.source import ExportError

__all__ = ["ExportError", "export_backbone", "export_classifier"]
