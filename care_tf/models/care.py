"""The CARE model: online C- and T-streams, their momentum target, and the training step."""

from __future__ import annotations

import contextlib
import os

import keras
import tensorflow as tf
from keras import ops

from care_tf.models.backbone import check_backbone
from care_tf.models.heads import MLPHead, l2_normalize
from care_tf.models.losses import (
    attention_loss,
    authors_logged_losses,
    byol_loss,
    target_momentum,
)
from care_tf.models.registry import create_backbone, list_backbones
from care_tf.models.transformer import TransStack


def _clone_layer(layer: keras.layers.Layer, name: str) -> keras.layers.Layer:
    """A fresh copy of `layer`'s architecture named `name`, its weights under `name/`.

    A functional model builds its inner layers as it is deserialised, and their
    weight paths do not start with the model's name: such a copy is built under the
    name scope `name`, so its weights get paths of their own
    (`target_resnet18/stem_conv/kernel`, not the online `stem_conv/kernel`) and
    TensorBoard histograms do not mix the two networks.
    """
    config = keras.saving.serialize_keras_object(layer)
    config["config"]["name"] = name
    unscoped = any(not w.path.startswith(f"{layer.name}/") for w in layer.weights)
    with keras.name_scope(name) if unscoped else contextlib.nullcontext():
        return keras.saving.deserialize_keras_object(config)


@keras.saving.register_keras_serializable(package="care_tf")
class LastValue(keras.metrics.Metric):
    """A metric whose result is the last value given (e.g. the current target momentum)."""

    def __init__(self, name: str = "last_value", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.value = self.add_variable(
            shape=(), initializer="zeros", aggregation="mean", name="value"
        )

    def update_state(self, value, sample_weight=None):
        self.value.assign(ops.cast(value, self.dtype))

    def result(self):
        # An op (not a bare variable read), so it carries the replica's device.
        return self.value * ops.ones((), self.dtype)


def _is_images_and_sizes(data) -> bool:
    """Whether `data` is `(images (B, R, R, C), original sizes int (B, 2))`."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        return False
    images, sizes = data
    return (
        len(images.shape) == 4
        and len(sizes.shape) == 2
        and sizes.shape[-1] == 2
        and tf.as_dtype(sizes.dtype).is_integer
    )


def _ensure_built(layer: keras.layers.Layer, input_shape: tuple) -> None:
    if not layer.built:
        layer.build(input_shape)


@keras.saving.register_keras_serializable(package="care_tf")
class CARE(keras.Model):
    """CARE: a CNN trained by BYOL plus the guidance of a transformer stream.

    Online network: backbone + TransStack (on res4) + projector and predictor
    for each stream. Target network: a momentum copy of backbone + TransStack +
    projectors. Train with `compile()` / `fit()` on a dataset of `(view1, view2)`
    batches (or raw image batches when `augmenter` is given). After training,
    `model.backbone` is the CNN to evaluate and export.

    Loss (docs/method.md): L = L_c + L_t + lambda_att * L_att, with
    L_c, L_t = mean[4 - 2 (<q1,k1> + <q2,k2>)] on the C- and T-stream, and
    L_att = MSE(q1, sg(a1)) + MSE(q2, sg(a2)). With `t_stream=False` it is BYOL
    (L = L_c), the ablation baseline. The step also logs the authors' totals
    `loss_att_authors` and `loss_authors` (not optimised). As in the authors' code,
    the target runs on view 2, then view 1.

    Args:
        backbone: keras.Model. A built model returning `{"res4", "res5", ...}` maps
            with a fixed input size, e.g. `care_tf.ResNetBackbone`.
        transformer: TransStack or None. The T-stream; `None` builds the paper's
            (5 blocks, 4 heads, proj_factor 4, out = res5 channels).
        hidden_dim: int. Hidden width of every projector/predictor. Defaults to 4096.
        projection_dim: int. Output width of every projector/predictor. Defaults to 256.
        lambda_att: float. Weight of the attention loss. Defaults to 100.
        base_momentum: float. Target momentum at step 0 (cosine-rises to 1).
            Defaults to 0.99.
        total_steps: int. Steps of the momentum schedule (K). Defaults to 1000.
        t_stream: bool. `False` trains BYOL (no TransStack). Defaults to True.
        weight_decay: float. L2 weight decay on every online weight, coupled into
            the gradient (PyTorch SGD semantics: g + wd * w). Defaults to 0.
        sync_bn: bool. Synchronised BatchNorm in the projectors and predictors. The
            default TransStack keeps per-replica statistics, as the authors'; pass
            `TransStack(sync_bn=True)` to synchronise it too.
        augmenter: keras.layers.Layer or None. Maps an image batch to
            `(view1, view2)` inside the train step ("device" placement).

    Example:
    >>> model = CARE.from_preset("resnet18", image_size=32,
    ...                          backbone_kwargs={"base_channels": 16},
    ...                          hidden_dim=256, projection_dim=64, total_steps=100)
    >>> model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    >>> model.fit(two_view_dataset, epochs=1)
    """

    def __init__(
        self,
        backbone: keras.Model,
        transformer: TransStack | None = None,
        *,
        hidden_dim: int = 4096,
        projection_dim: int = 256,
        lambda_att: float = 100.0,
        base_momentum: float = 0.99,
        total_steps: int = 1000,
        t_stream: bool = True,
        weight_decay: float = 0.0,
        sync_bn: bool = False,
        augmenter: keras.layers.Layer | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        res4_shape, res5_shape = check_backbone(backbone)
        if None in res4_shape:
            raise ValueError(
                f"The backbone's res4 map has an unknown size {res4_shape}: build the backbone "
                "with a fixed `image_shape`, e.g. (224, 224, 3)."
            )
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"`base_momentum` must be in [0, 1]. Received: {base_momentum}")
        if total_steps < 1:
            raise ValueError(f"`total_steps` must be >= 1. Received: total_steps={total_steps}")
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0. Received: {weight_decay}")
        if not t_stream and transformer is not None:
            raise ValueError("`t_stream=False` (BYOL) takes no `transformer`; pass None.")

        self.hidden_dim = hidden_dim
        self.projection_dim = projection_dim
        self.lambda_att = float(lambda_att)
        self.base_momentum = float(base_momentum)
        self.total_steps = int(total_steps)
        self.t_stream = t_stream
        self.weight_decay = float(weight_decay)
        self.sync_bn = sync_bn
        self.augmenter = augmenter

        # Online network.
        self.backbone = backbone
        head = dict(hidden_dim=hidden_dim, output_dim=projection_dim, sync_bn=sync_bn)
        self.c_projector = MLPHead(**head, name="c_projector")
        self.c_predictor = MLPHead(**head, name="c_predictor")
        res5_channels = res5_shape[-1]
        self.c_projector.build((None, res5_channels))
        self.c_predictor.build((None, projection_dim))
        if t_stream:
            if transformer is None:
                transformer = TransStack(out_channels=res5_channels)
            if not isinstance(transformer, keras.layers.Layer):
                raise TypeError(f"`transformer` must be a Keras layer; got {type(transformer)}")
            built_for = getattr(transformer, "input_fmap", None)
            if transformer.built and built_for not in (None, tuple(res4_shape[:2])):
                raise ValueError(
                    f"The transformer was built for a {built_for} res4 map but this backbone "
                    f"gives {tuple(res4_shape[:2])}. Pass an unbuilt TransStack (it sizes its "
                    "position embedding from the backbone) or match the image size."
                )
            _ensure_built(transformer, (None, *res4_shape))
            t_channels = transformer.compute_output_shape((None, *res4_shape))[-1]
            self.transformer = transformer
            self.t_projector = MLPHead(**head, name="t_projector")
            self.t_predictor = MLPHead(**head, name="t_predictor")
            self.t_projector.build((None, t_channels))
            self.t_predictor.build((None, projection_dim))
        else:
            self.transformer = None

        # Target network: same architecture, starts as an exact copy, never trained
        # by gradients (its variables are non-trainable) but run in training mode.
        self.target_backbone = _clone_layer(backbone, f"target_{backbone.name}")
        self.target_c_projector = _clone_layer(self.c_projector, "target_c_projector")
        _ensure_built(self.target_c_projector, (None, res5_channels))
        if t_stream:
            self.target_transformer = _clone_layer(transformer, "target_transformer")
            _ensure_built(self.target_transformer, (None, *res4_shape))
            self.target_t_projector = _clone_layer(self.t_projector, "target_t_projector")
            _ensure_built(self.target_t_projector, (None, t_channels))
        for online, target in self._online_target_pairs():
            if len(online.weights) != len(target.weights):
                raise RuntimeError(f"Target copy of {online.name} does not match its weights.")
            for o, t in zip(online.weights, target.weights, strict=True):
                t.assign(o)
                t.trainable = False

        self.steps = self.add_weight(
            name="steps",
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )
        t_names = ["loss_t", "loss_att", "loss_att_authors", "loss_authors"] if t_stream else []
        names = ["loss", "loss_c", *t_names, "momentum"]
        self._trackers = {
            name: LastValue(name=name) if name == "momentum" else keras.metrics.Mean(name=name)
            for name in names
        }
        self.built = True

    # ------------------------------------------------------------------ parts
    def _online_target_pairs(self) -> list[tuple[keras.layers.Layer, keras.layers.Layer]]:
        pairs = [
            (self.backbone, self.target_backbone),
            (self.c_projector, self.target_c_projector),
        ]
        if self.t_stream:
            pairs += [
                (self.transformer, self.target_transformer),
                (self.t_projector, self.target_t_projector),
            ]
        return pairs

    @property
    def online_layers(self) -> list[keras.layers.Layer]:
        """Every layer trained by gradients."""
        parts = [self.backbone, self.c_projector, self.c_predictor]
        if self.t_stream:
            parts += [self.transformer, self.t_projector, self.t_predictor]
        return parts

    @property
    def target_layers(self) -> list[keras.layers.Layer]:
        """The momentum copies (no predictors)."""
        return [target for _, target in self._online_target_pairs()]

    def ema_pairs(self) -> list[tuple[keras.Variable, keras.Variable]]:
        """(online, target) weight pairs the momentum update moves: the target
        counterparts of the online trainable weights (BN moving statistics are not)."""
        return [
            (o, t)
            for online, target in self._online_target_pairs()
            for o, t in zip(online.weights, target.weights, strict=True)
            if o.trainable
        ]

    @property
    def metrics(self):
        return list(self._trackers.values())

    # --------------------------------------------------------------- forward
    def call(self, inputs, training=False):
        """Pooled backbone features of `inputs` (B, H, W, 3) -> (B, C5)."""
        return self.backbone(inputs, training=training)["pooled"]

    def online_outputs(self, images, training=True) -> dict:
        """L2-normalised online predictions: `{"c": (B, D), "t": (B, D)}` (float32)."""
        features = self.backbone(images, training=training)
        pooled = ops.mean(features["res5"], axis=(1, 2))
        z = self.c_projector(pooled, training=training)
        out = {"c": l2_normalize(self.c_predictor(z, training=training))}
        if self.t_stream:
            t = self.transformer(features["res4"], training=training)
            zt = self.t_projector(ops.mean(t, axis=(1, 2)), training=training)
            out["t"] = l2_normalize(self.t_predictor(zt, training=training))
        return out

    def target_outputs(self, images) -> dict:
        """L2-normalised target projections `{"c", "t"}` (training-mode BN, no gradient)."""
        features = self.target_backbone(images, training=True)
        pooled = ops.mean(features["res5"], axis=(1, 2))
        out = {"c": l2_normalize(self.target_c_projector(pooled, training=True))}
        if self.t_stream:
            t = self.target_transformer(features["res4"], training=True)
            out["t"] = l2_normalize(
                self.target_t_projector(ops.mean(t, axis=(1, 2)), training=True)
            )
        return {k: ops.stop_gradient(v) for k, v in out.items()}

    def compute_losses(self, online1: dict, online2: dict, target1: dict, target2: dict) -> dict:
        """Loss terms from the outputs of view 1/2; targets are of the *same* view index.

        The target outputs are swapped here: q1 is compared with the target of view 2.
        Beside the optimised terms (`loss`, `loss_c`, `loss_t`, `loss_att`) it returns
        the authors' logged definitions `loss_att_authors` and `loss_authors` (see
        `losses.authors_logged_losses`), which are only logged.
        """
        losses = {"loss_c": byol_loss(online1["c"], target2["c"], online2["c"], target1["c"])}
        loss = losses["loss_c"]
        if self.t_stream:
            losses["loss_t"] = byol_loss(online1["t"], target2["t"], online2["t"], target1["t"])
            losses["loss_att"] = attention_loss(
                online1["c"], online1["t"], online2["c"], online2["t"]
            )
            loss = loss + losses["loss_t"] + self.lambda_att * losses["loss_att"]
            losses.update(
                authors_logged_losses(
                    losses["loss_c"],
                    losses["loss_t"],
                    losses["loss_att"],
                    *(target2["c"], target2["t"], target1["c"], target1["t"]),
                    self.lambda_att,
                )
            )
        losses["loss"] = loss
        return losses

    # ---------------------------------------------------------- target update
    def momentum(self):
        """The target momentum for the current step (float32 scalar)."""
        return target_momentum(self.steps, self.total_steps, self.base_momentum)

    def update_target(self, momentum) -> None:
        """target <- m * target + (1 - m) * online over trainable weights, on every replica."""
        pairs = [(t.value, o.value) for o, t in self.ema_pairs()]

        def ema(var, online_value, m):
            # var - (1 - m) (var - online), in one fused update of the variable.
            step = tf.cast(1.0 - m, var.dtype)
            delta = var.read_value() - tf.cast(online_value, var.dtype)
            return tf.raw_ops.ResourceApplyGradientDescent(var=var.handle, alpha=step, delta=delta)

        def apply(strategy, m):
            for target_var, online_var in pairs:
                strategy.extended.update(target_var, ema, args=(online_var, m), group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(
            apply, tf.distribute.get_strategy(), momentum
        )

    # ------------------------------------------------------------ train step
    def _views(self, data):
        if isinstance(data, (tuple, list)):  # fit gives (x, y); train_on_batch (x, None, None)
            items = [d for d in data if d is not None]
            data = items[0] if len(items) == 1 else tuple(items)
        if isinstance(data, dict):
            if "view1" in data:
                return data["view1"], data["view2"]
            data = data["image"]
        if self.augmenter is not None and _is_images_and_sizes(data):
            # Device placement: crops drawn in each image's original (height, width).
            return self.augmenter(data[0], image_sizes=data[1], training=True)
        if isinstance(data, (tuple, list)) and any(len(d.shape) != 4 for d in data[1:]):
            shapes = ", ".join(str(tuple(d.shape)) for d in data)
            raise ValueError(
                f"CARE.fit got batches of shapes ({shapes}), which look like (images, labels). "
                "CARE learns without labels: give it (view1, view2) batches of two augmented "
                "views (`care_tf.make_pretrain_dataset`), or raw image batches to a model with "
                "an `augmenter`; drop the labels, e.g. `dataset.map(lambda x, y: x)`."
            )
        if self.augmenter is not None:
            images = data[0] if isinstance(data, (tuple, list)) else data
            return self.augmenter(images, training=True)
        if not isinstance(data, (tuple, list)) or len(data) < 2:
            raise ValueError(
                "CARE.fit expects batches of (view1, view2), or raw images when the model has "
                "an `augmenter`."
            )
        return data[0], data[1]

    def _add_weight_decay(self, gradients: list, weights: list, loss_scale) -> list:
        """g + weight_decay * w on each replica's gradient (PyTorch's coupled decay).

        The gradients are of the replica's loss / replicas x the loss scale: the
        decay term carries the same factors, so the optimizer's all-reduced, unscaled
        gradient is sum(g) + weight_decay * w.
        """
        if not self.weight_decay:
            return gradients
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        factor = tf.cast(loss_scale, "float32") * (self.weight_decay / replicas)
        out = []
        for g, w in zip(gradients, weights, strict=True):
            if g is None:
                out.append(tf.cast(factor, w.dtype) * w)
                continue
            # g - (-wd w), not g + wd w: grappler folds an add into the tape's sum of the
            # two views' gradients, and a three-term sum is rewritten to accumulate in a
            # temporary variable (zero-fill, assign, three assign-adds: slower).
            negative = tf.cast(-factor, w.dtype) * w
            out.append(tf.math.subtract(g, tf.cast(negative, g.dtype)))
        return out

    def train_step(self, data):
        view1, view2 = self._views(data)
        momentum = self.momentum()
        self.update_target(momentum)
        # The authors' order: the target sees view 2, then view 1 (only its BN moving
        # statistics depend on the order).
        target2 = self.target_outputs(view2)
        target1 = self.target_outputs(view1)
        with tf.GradientTape() as tape:
            online1 = self.online_outputs(view1, training=True)
            online2 = self.online_outputs(view2, training=True)
            losses = self.compute_losses(online1, online2, target1, target2)
            # Gradients are summed over replicas: scale each replica's mean loss.
            total = losses["loss"] / tf.distribute.get_strategy().num_replicas_in_sync
            total = self.optimizer.scale_loss(total)
        weights = self.trainable_weights
        gradients = tape.gradient(total, weights)
        # Added to the gradients rather than as 0.5 wd |w|^2 to the loss: the same
        # update, one term less for the tape to accumulate per weight.
        gradients = self._add_weight_decay(gradients, weights, self.optimizer.scale_loss(1.0))
        self.optimizer.apply_gradients(zip(gradients, weights, strict=True))
        self.steps.assign_add(1)
        return self._update_metrics(losses, momentum)

    def test_step(self, data):
        view1, view2 = self._views(data)
        target2 = self.target_outputs(view2)
        target1 = self.target_outputs(view1)
        losses = self.compute_losses(
            self.online_outputs(view1, training=False),
            self.online_outputs(view2, training=False),
            target1,
            target2,
        )
        return self._update_metrics(losses, self.momentum())

    def _update_metrics(self, losses: dict, momentum) -> dict:
        for name, tracker in self._trackers.items():
            tracker.update_state(momentum if name == "momentum" else losses[name])
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    # ------------------------------------------------------------- presets
    @classmethod
    def from_preset(
        cls,
        preset: str,
        image_size: int = 224,
        *,
        stem: str | None = None,
        sync_bn: bool = False,
        backbone_kwargs: dict | None = None,
        transformer_kwargs: dict | None = None,
        **kwargs,
    ) -> CARE:
        """A CARE model: a registered architecture built afresh, or a saved one reloaded.

        Args:
            preset: str. A name from `care_tf.list_backbones()` (`resnet18` ...
                `resnet152`, `resnet50x2`), or a directory: a preset written by
                `care_tf.save_to_preset` or a training run (its `model.keras`), reloaded
                exactly as saved (the other arguments then do not apply).
            image_size: int. Square input size in pixels. Defaults to 224.
            stem: str or None. `"imagenet"` or `"cifar"`; `None` picks `"cifar"` for
                images of 64 px or less.
            sync_bn: bool. Synchronised BatchNorm in the backbone and heads. The
                TransStack's stays per-replica (the authors' choice) unless
                `transformer_kwargs={"sync_bn": True}`.
            backbone_kwargs: dict. Extra backbone arguments (e.g. `base_channels`).
            transformer_kwargs: dict. Extra TransStack arguments (e.g. `num_blocks`,
                `sync_bn`, `zero_init_residual`).
            **kwargs: CARE arguments (`hidden_dim`, `total_steps`, `t_stream`, ...).
        """
        if preset not in list_backbones():
            from care_tf.presets import load_care

            return load_care(os.fspath(preset))
        if stem is None:
            stem = "cifar" if image_size <= 64 else "imagenet"
        backbone = create_backbone(
            preset,
            image_shape=(image_size, image_size, 3),
            stem=stem,
            sync_bn=sync_bn,
            **(backbone_kwargs or {}),
        )
        transformer = None
        if kwargs.get("t_stream", True):
            _, res5_shape = check_backbone(backbone)
            transformer = TransStack(
                **{"out_channels": res5_shape[-1], **(transformer_kwargs or {})}
            )
        return cls(backbone, transformer, sync_bn=sync_bn, **kwargs)

    # --------------------------------------------------------- serialisation
    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "transformer": keras.saving.serialize_keras_object(self.transformer)
                if self.t_stream
                else None,
                "hidden_dim": self.hidden_dim,
                "projection_dim": self.projection_dim,
                "lambda_att": self.lambda_att,
                "base_momentum": self.base_momentum,
                "total_steps": self.total_steps,
                "t_stream": self.t_stream,
                "weight_decay": self.weight_decay,
                "sync_bn": self.sync_bn,
                "augmenter": keras.saving.serialize_keras_object(self.augmenter)
                if self.augmenter is not None
                else None,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> CARE:
        config = dict(config)
        for key in ("backbone", "transformer", "augmenter"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
