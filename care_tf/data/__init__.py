"""Everything fed to pretraining and evaluation: sources, two-view augmentation, pipelines.

source = load_source("fashion_mnist")               # or tfds:NAME, folder:/p, tfrecord:/p
ds = make_pretrain_dataset(source, batch_size=256, image_size=32, seed=0)
view1, view2 = next(iter(ds))                        # float32 (256, 32, 32, 3) each

Names are imported on first use (see care_tf/_lazy.py), so
`python -m care_tf.data.make_tfrecords --help` answers without loading TensorFlow.
"""

from care_tf._lazy import lazy_package as _lazy_package

_EXPORTS = {
    "Source": "care_tf.data.sources",
    "TwoViewAugment": "care_tf.data.augment",
    "distribute_pretrain_dataset": "care_tf.data.pipeline",
    "load_fashion_mnist": "care_tf.data.fashion_mnist",
    "load_source": "care_tf.data.sources",
    "make_eval_dataset": "care_tf.data.eval_pipeline",
    "make_pretrain_dataset": "care_tf.data.pipeline",
}
_lazy_package(__name__, _EXPORTS)
