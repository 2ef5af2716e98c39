"""Optimizers: LARS as a Keras 3 optimizer, and the config factory (sgd / lars / adamw / lamb)."""

from __future__ import annotations

import keras
from keras import ops

from care_tf.train.config import OptimizerConfig
from care_tf.train.sgd import TorchSGD


@keras.saving.register_keras_serializable(package="care_tf")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017), as used by BYOL / SimCLR.

    For each weight w with gradient g (excluded weights skip steps 1-2):

        1. g <- g + weight_decay * w                          (coupled decay)
        2. g <- g * trust,  trust = eta * ||w|| / ||g||         (1 if a norm is 0)
        3. v <- momentum * v + g
        4. w <- w - lr * v          (Nesterov: w <- w - lr * (momentum * v + g))

    Weights are excluded from decay and adaptation when they are 1-D (BatchNorm
    gamma/beta, biases) and `exclude_bias_and_norm` is true, or when matched by
    `exclude_from_weight_decay(var_list=..., var_names=...)`. The decay is part of
    the update (step 1), so the base class's decoupled decay is not applied.

    Args:
        learning_rate: float or schedule. Defaults to 0.001.
        momentum: float. Defaults to 0.9.
        weight_decay: float. Coupled L2 coefficient. Defaults to 0.
        trust_coefficient: float. eta. Defaults to 0.001.
        epsilon: float. Added to ||g|| in the trust ratio. Defaults to 1e-9.
        nesterov: bool. Defaults to False.
        exclude_bias_and_norm: bool. Exclude 1-D weights. Defaults to True.

    Example:
    >>> opt = LARS(learning_rate=0.2, momentum=0.9, weight_decay=1.5e-6)
    >>> model.compile(optimizer=opt)
    """

    def __init__(
        self,
        learning_rate=0.001,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        epsilon: float = 1e-9,
        nesterov: bool = False,
        exclude_bias_and_norm: bool = True,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name: str = "lars",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            name=name,
            weight_decay=weight_decay or None,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            **kwargs,
        )
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1]. Received: momentum={momentum}")
        if trust_coefficient <= 0:
            raise ValueError(f"`trust_coefficient` must be > 0. Received: {trust_coefficient}")
        self.momentum = float(momentum)
        self.trust_coefficient = float(trust_coefficient)
        self.epsilon = float(epsilon)
        self.nesterov = bool(nesterov)
        self.exclude_bias_and_norm = bool(exclude_bias_and_norm)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def _apply_weight_decay(self, variables):
        """No decoupled decay: LARS couples it into the gradient in `update_step`."""
        return

    def _adapted(self, variable) -> bool:
        """Whether `variable` gets weight decay and the trust ratio."""
        if self.exclude_bias_and_norm and len(variable.shape) <= 1:
            return False
        return self._use_weight_decay(variable)

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self._adapted(variable):
            if self.weight_decay:
                g = g + ops.cast(self.weight_decay, variable.dtype) * variable
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            g_norm = ops.sqrt(ops.sum(ops.square(g)))
            trust = ops.where(
                ops.logical_and(w_norm > 0.0, g_norm > 0.0),
                self.trust_coefficient * w_norm / (g_norm + self.epsilon),
                ops.ones_like(w_norm),
            )
            g = g * trust
        m = self.momentums[self._get_variable_index(variable)]
        momentum = ops.cast(self.momentum, variable.dtype)
        self.assign(m, momentum * m + g)
        step = momentum * m + g if self.nesterov else m
        self.assign_sub(variable, lr * step)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "trust_coefficient": self.trust_coefficient,
                "epsilon": self.epsilon,
                "nesterov": self.nesterov,
                "exclude_bias_and_norm": self.exclude_bias_and_norm,
            }
        )
        return config


def excludes_bias_and_norm(cfg: OptimizerConfig) -> bool:
    """The effective `exclude_bias_and_norm` (null = true except for sgd)."""
    if cfg.exclude_bias_and_norm is None:
        return cfg.name != "sgd"
    return cfg.exclude_bias_and_norm


def model_weight_decay(cfg: OptimizerConfig) -> float:
    """The coupled L2 the CARE model adds to its gradients: sgd's decay (paper), 0 otherwise.

    SGD's weight decay is applied by the model (`CARE(weight_decay=...)`: g + wd * w on
    every online weight, PyTorch semantics); the other optimizers apply their own.
    """
    return cfg.weight_decay if cfg.name == "sgd" else 0.0


def build_optimizer(
    cfg: OptimizerConfig, learning_rate, variables: list | None = None
) -> keras.optimizers.Optimizer:
    """The optimizer of `cfg` with `learning_rate` (a float or schedule).

    Args:
        cfg: the `optimizer:` config section.
        learning_rate: float or LearningRateSchedule (already batch-scaled).
        variables: the trainable variables; needed to exclude 1-D weights from
            decay for adamw / lamb / lars.
    """
    common = dict(learning_rate=learning_rate, global_clipnorm=cfg.global_clipnorm)
    one_d = [v for v in (variables or []) if len(v.shape) <= 1]
    if cfg.name == "sgd":
        # PyTorch's momentum convention (lr outside the velocity), as the paper's code.
        # Weight decay is added by the model (model_weight_decay): not set here.
        return TorchSGD(momentum=cfg.momentum, nesterov=cfg.nesterov, **common)
    if cfg.name == "lars":
        return LARS(
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            trust_coefficient=cfg.trust_coefficient,
            nesterov=cfg.nesterov,
            exclude_bias_and_norm=excludes_bias_and_norm(cfg),
            **common,
        )
    if cfg.name == "adamw":
        opt = keras.optimizers.AdamW(
            weight_decay=cfg.weight_decay,
            beta_1=cfg.momentum,
            beta_2=cfg.beta_2,
            epsilon=cfg.epsilon,
            **common,
        )
    elif cfg.name == "lamb":
        opt = keras.optimizers.Lamb(
            weight_decay=cfg.weight_decay or None,
            beta_1=cfg.momentum,
            beta_2=cfg.beta_2,
            epsilon=cfg.epsilon,
            **common,
        )
    else:
        raise ValueError(f"Unknown optimizer {cfg.name!r}")
    if excludes_bias_and_norm(cfg) and one_d:
        opt.exclude_from_weight_decay(var_list=one_d)
    return opt
