"""SGD with momentum in PyTorch's convention (the authors' optimizer)."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops


def _handle(variable):
    """The resource handle of a Keras or tf.Variable (this replica's, under a strategy)."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle


@keras.saving.register_keras_serializable(package="care_tf")
class TorchSGD(keras.optimizers.Optimizer):
    """SGD with PyTorch's momentum: v <- momentum * v + g; w <- w - lr * v.

    Keras' SGD keeps the learning rate inside the velocity (v <- momentum * v - lr * g),
    which differs from PyTorch whenever the learning rate changes (warm-up, cosine).
    Weight decay is not applied here: CARE couples it into the gradient
    (`CARE(weight_decay=...)`), as PyTorch's `SGD(weight_decay=...)` does.

    Args:
        learning_rate: float or schedule. Defaults to 0.01.
        momentum: float. Defaults to 0.9.
        nesterov: bool. PyTorch's Nesterov variant: w <- w - lr * (g + momentum * v).
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum: float = 0.9,
        nesterov: bool = False,
        name: str = "torch_sgd",
        **kwargs,
    ):
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1]. Received: momentum={momentum}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        v = self.momentums[self._get_variable_index(variable)]
        momentum = ops.cast(self.momentum, variable.dtype)
        if not isinstance(gradient, tf.IndexedSlices):
            # One fused kernel: accum <- momentum * accum + g; var <- var - lr * accum
            # (with Nesterov: var <- var - lr * (g + momentum * accum)), PyTorch's update.
            tf.raw_ops.ResourceApplyMomentum(
                var=_handle(variable),
                accum=_handle(v),
                lr=lr,
                grad=tf.cast(gradient, variable.dtype),
                momentum=momentum,
                use_locking=False,
                use_nesterov=self.nesterov,
            )
            return
        g = ops.cast(gradient, variable.dtype)
        self.assign(v, momentum * v + g)
        step = g + momentum * v if self.nesterov else v
        self.assign_sub(variable, lr * step)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update({"momentum": self.momentum, "nesterov": self.nesterov})
        return config
