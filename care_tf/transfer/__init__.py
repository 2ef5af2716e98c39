"""Transfer of CARE backbones: the keras-hub bridge and fine-tuning with few labels.

    care_tf.to_keras_hub("runs/care_r50", "presets/care_r50_hub")
    python -m care_tf.export --model_dir runs/care_r50 --out exported --format keras_hub
    python -m care_tf.evaluate finetune --model_dir RUN --dataset fashion_mnist \
        --label_fraction 0.01

keras-hub is imported only when a function needs it (the `transfer` extra). Names are
imported on first use (see care_tf/_lazy.py).
"""

from care_tf._lazy import lazy_package as _lazy_package

_EXPORTS = {
    "TransferError": "care_tf.transfer.keras_hub_bridge",
    "hub_backbone": "care_tf.transfer.keras_hub_bridge",
    "hub_classifier": "care_tf.transfer.keras_hub_bridge",
    "to_keras_hub": "care_tf.transfer.keras_hub_bridge",
}
_lazy_package(__name__, _EXPORTS)
