"""BatchNorm with PyTorch's semantics, on TensorFlow's fused kernel.

Keras 3's `BatchNormalization` computes batch moments and normalises with a
chain of element-wise ops; on CPU its forward + backward pass costs more than
the convolutions of a ResNet. This layer runs training-mode normalisation with
TF's `FusedBatchNormV3` (oneDNN on CPU, cuDNN on GPU, supported by XLA), and
matches PyTorch's `BatchNorm2d` / `BatchNorm1d`: outputs use the biased batch
variance, the moving variance is updated with the unbiased one (n / (n - 1)).
With `synchronized=True` under a multi-replica strategy the moments are those
of the global batch (Keras' all-reduced sums; replicas hold equal batches).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers, ops


def _replica_context():
    """The replica context when running on more than one replica, else None."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


@keras.saving.register_keras_serializable(package="care_tf")
class BatchNorm(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` (channels last) with PyTorch semantics, fused.

    Same arguments as `keras.layers.BatchNormalization`; `axis` must be -1.
    Input: (B, C) or (B, H, W, C). Output: same shape.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.axis not in (-1,):
            raise ValueError(f"BatchNorm supports channels-last only (axis=-1). Got {self.axis}")

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm:
            return super().call(inputs, training=training, mask=mask)
        if not (self.center and self.scale):
            return super().call(inputs, training=training, mask=mask)
        context = _replica_context() if self.synchronized else None
        replicas = context.num_replicas_in_sync if context is not None else 1
        dims = list(inputs.shape)[:-1]
        if None not in dims and math.prod(dims) * replicas == 1:  # static shapes only
            raise ValueError(
                f"BatchNorm '{self.name}' in training needs more than one value per channel; "
                f"got input shape {tuple(inputs.shape)}. Train with a batch of 2 or more."
            )
        if context is not None:
            return self._call_synchronized(inputs, context)

        rank = len(inputs.shape)
        if rank not in (2, 4):
            return super().call(inputs, training=training, mask=mask)
        x = inputs if inputs.dtype in (tf.float32, tf.bfloat16) else tf.cast(inputs, "float32")
        if rank == 2:
            x = tf.reshape(x, [-1, 1, 1, inputs.shape[-1]])
        y, batch_mean, batch_var, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x,
            scale=tf.cast(self.gamma, "float32"),
            offset=tf.cast(self.beta, "float32"),
            mean=tf.constant([], "float32"),
            variance=tf.constant([], "float32"),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
        )
        # The kernel returns the unbiased variance (as PyTorch uses for running_var).
        self._update_moving(batch_mean, batch_var)
        if rank == 2:
            y = tf.reshape(y, tf.shape(inputs))
        return ops.cast(y, self.compute_dtype)

    def _update_moving(self, mean, unbiased_var):
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + tf.cast(mean, "float32") * (1.0 - m))
        self.moving_variance.assign(
            self.moving_variance * m + tf.cast(unbiased_var, "float32") * (1.0 - m)
        )

    def _call_synchronized(self, inputs, context):
        x = tf.cast(inputs, "float32")
        # Keras' synchronised moments (all-reduced sums, differentiated by autodiff).
        mean, var = self._moments(x, None)
        local = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), "float32")
        count = local * float(context.num_replicas_in_sync)
        self._update_moving(mean, var * count / tf.maximum(count - 1.0, 1.0))
        y = tf.nn.batch_normalization(
            x,
            mean,
            var,
            tf.cast(self.beta, "float32"),
            tf.cast(self.gamma, "float32"),
            self.epsilon,
        )
        return ops.cast(y, self.compute_dtype)
