"""Export for deployment: SavedModel for TF Serving, TFLite, verification.

python -m care_tf.export --model_dir runs/x --out exported --format all

Names are imported on first use (see care_tf/_lazy.py).
"""

import sys as _sys

from care_tf._lazy import lazy_exports as _lazy_exports
from care_tf._lazy import load_all as _load_all

_EXPORTS = {
    "ExportError": "care_tf.export.source",
    "export_backbone": "care_tf.export.exporter",
    "export_classifier": "care_tf.export.classifier",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)

if "keras" in _sys.modules:
    _load_all(__name__, _EXPORTS)
