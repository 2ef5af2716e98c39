"""Conversion of the CARE authors' PyTorch checkpoints into care_tf run directories.

    python -m care_tf.convert CARE_pretrain.pth --linear CARE_linear.pth --out runs/official

No PyTorch is needed and nothing in the files is executed: `torch_zip` reads the
zip-format `torch.save` archive with an allow-list unpickler. See docs/convert.md.
Names are imported on first use, so the command line parses without loading Keras.
"""

import importlib

_EXPORTS = {
    "ConvertError": "care_tf.convert.converter",
    "convert_checkpoint": "care_tf.convert.converter",
    "read_state_dict": "care_tf.convert.converter",
    "MappingError": "care_tf.convert.mapping",
    "CheckpointError": "care_tf.convert.torch_zip",
    "UnsafeCheckpointError": "care_tf.convert.torch_zip",
    "load_checkpoint": "care_tf.convert.torch_zip",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
