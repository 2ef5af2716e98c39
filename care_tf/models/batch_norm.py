"""BatchNorm with PyTorch's semantics, on TensorFlow's fused kernel.

Keras 3's `BatchNormalization` computes batch moments and normalises with a
chain of element-wise ops; on CPU its forward + backward pass costs more than
the convolutions of a ResNet. This layer runs training-mode normalisation with
TF's `FusedBatchNormV3` (oneDNN on CPU, cuDNN on GPU, supported by XLA), and
matches PyTorch's `BatchNorm2d` / `BatchNorm1d`: outputs use the biased batch
variance, the moving variance is updated with the unbiased one (n / (n - 1)).
With `synchronized=True` under a multi-replica strategy the moments are those
of the global batch (two-pass: mean first, then the centred second moment).
"""

from __future__ import annotations

import threading

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
        y, mean, var, count = _synchronized_batch_norm(
            context, x, tf.cast(self.gamma, "float32"), tf.cast(self.beta, "float32"), self.epsilon
        )
        self._update_moving(mean, var * count / tf.maximum(count - 1.0, 1.0))
        return ops.cast(y, self.compute_dtype)


# Collectives must run in the same order on every replica, but independent branches
# of a step (the two views, the target network) carry no order of their own. Each
# replica chains its batch-norm collectives in program order, forward and backward.
_collective_order = threading.local()


def _ordered_all_reduce(context, value):
    """`context.all_reduce(SUM, value)` after this replica's previous one (in this graph)."""
    graph = tf.compat.v1.get_default_graph()
    last = getattr(_collective_order, "last", None)
    if last is not None and last[0] is graph:
        with tf.control_dependencies([last[1]]):
            value = tf.identity(value)
    reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, value)
    _collective_order.last = (graph, reduced)
    return reduced


def _synchronized_batch_norm(context, x, gamma, beta, epsilon: float):
    """Batch norm over the global batch: (y, mean, biased var, global count).

    Two-pass moments (mean, then centred second moment) and an analytic backward
    pass whose one collective is ordered like the forward ones.
    """
    channels = x.shape[-1]
    axes = list(range(len(x.shape) - 1))

    @tf.custom_gradient
    def forward(x, gamma, beta):
        local_count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), "float32")
        total = _ordered_all_reduce(
            context, tf.concat([tf.reduce_sum(x, axes), local_count[None]], axis=0)
        )
        count = total[-1]
        mean = total[:-1] / count
        var = _ordered_all_reduce(context, tf.reduce_sum(tf.square(x - mean), axes)) / count
        inv_std = tf.math.rsqrt(var + epsilon)
        x_hat = (x - mean) * inv_std
        y = x_hat * gamma + beta

        def grad(dy, *unused):
            d_beta = tf.reduce_sum(dy, axes)
            d_gamma = tf.reduce_sum(dy * x_hat, axes)
            sums = _ordered_all_reduce(context, tf.concat([d_beta, d_gamma], axis=0))
            mean_dy, mean_dy_xhat = sums[:channels] / count, sums[channels:] / count
            dx = gamma * inv_std * (dy - mean_dy - x_hat * mean_dy_xhat)
            return dx, d_gamma, d_beta

        return (y, mean, var, count), grad

    y, mean, var, count = forward(x, gamma, beta)
    return y, tf.stop_gradient(mean), tf.stop_gradient(var), tf.stop_gradient(count)
