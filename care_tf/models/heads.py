"""Projector / predictor MLPs of both streams."""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from care_tf.models.resnet import batch_norm


def torch_default_initializer() -> keras.initializers.Initializer:
    """PyTorch's default Linear init: U(+-1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")


@keras.saving.register_keras_serializable(package="care_tf")
class MLPHead(keras.layers.Layer):
    """Dense(hidden) + BN + ReLU + Dense(output): CARE's projector and predictor.

    Dense layers have biases and PyTorch's default init (U(+-1/sqrt(fan_in)) for
    kernel and bias); BN is over the batch (synchronised across replicas when
    `sync_bn`).

    Args:
        hidden_dim: int. Width of the hidden layer. Defaults to 4096.
        output_dim: int. Output width. Defaults to 256.
        sync_bn: bool. Synchronised BatchNorm. Defaults to False.

    Input: (B, D). Output: (B, output_dim), not normalised.
    """

    def __init__(
        self, hidden_dim: int = 4096, output_dim: int = 256, sync_bn: bool = False, **kwargs
    ):
        super().__init__(**kwargs)
        if hidden_dim < 1 or output_dim < 1:
            raise ValueError(
                "`hidden_dim` and `output_dim` must be positive. Received: "
                f"hidden_dim={hidden_dim}, output_dim={output_dim}"
            )
        self.hidden_dim = hidden_dim
        self.output_dim = output_dim
        self.sync_bn = sync_bn

    @staticmethod
    def _dense(units: int, fan_in: int, name: str, dtype) -> layers.Dense:
        bound = 1.0 / math.sqrt(fan_in)
        return layers.Dense(
            units,
            kernel_initializer=torch_default_initializer(),
            bias_initializer=keras.initializers.RandomUniform(-bound, bound),
            name=name,
            dtype=dtype,
        )

    def build(self, input_shape):
        in_dim = int(input_shape[-1])
        self.dense_hidden = self._dense(self.hidden_dim, in_dim, "dense_hidden", self.dtype_policy)
        self.bn = batch_norm("bn", self.sync_bn, dtype=self.dtype_policy)
        self.dense_out = self._dense(
            self.output_dim, self.hidden_dim, "dense_out", self.dtype_policy
        )
        self.dense_hidden.build(input_shape)
        self.bn.build((input_shape[0], self.hidden_dim))
        self.dense_out.build((input_shape[0], self.hidden_dim))

    def call(self, inputs, training=None):
        x = ops.relu(self.bn(self.dense_hidden(inputs), training=training))
        return self.dense_out(x)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"hidden_dim": self.hidden_dim, "output_dim": self.output_dim, "sync_bn": self.sync_bn}
        )
        return config


def l2_normalize(x, axis: int = -1):
    """Unit-norm rows, computed in float32: (B, D) -> (B, D) float32."""
    x = ops.cast(x, "float32")
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), 1e-12))
