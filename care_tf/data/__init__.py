"""Everything fed to pretraining and evaluation: sources, two-view augmentation, pipelines.

source = load_source("fashion_mnist")               # or tfds:NAME, folder:/p, tfrecord:/p
ds = make_pretrain_dataset(source, batch_size=256, image_size=32, seed=0)
view1, view2 = next(iter(ds))                        # float32 (256, 32, 32, 3) each
"""

from care_tf.data.augment import TwoViewAugment
from care_tf.data.eval_pipeline import make_eval_dataset
from care_tf.data.fashion_mnist import load_fashion_mnist
from care_tf.data.pipeline import distribute_pretrain_dataset, make_pretrain_dataset
from care_tf.data.sources import Source, load_source

__all__ = [
    "Source",
    "TwoViewAugment",
    "distribute_pretrain_dataset",
    "load_fashion_mnist",
    "load_source",
    "make_eval_dataset",
    "make_pretrain_dataset",
]
