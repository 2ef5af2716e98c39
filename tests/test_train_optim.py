"""LARS vs NumPy, schedule values, optimizer factory, weight decay reaching the updates."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from care_testing import tiny_care

from care_tf.train.config import OptimizerConfig, from_dict
from care_tf.train.optimizers import LARS, build_optimizer, model_weight_decay
from care_tf.train.schedules import WarmupCosine
from care_tf.train.sgd import TorchSGD


def _lars_numpy(w, g, v, lr, mom, wd, eta, adapt):
    if adapt:
        g = g + wd * w
        trust = eta * np.linalg.norm(w) / np.linalg.norm(g)
        g = g * trust
    v = mom * v + g
    return w - lr * v, v


def test_lars_two_steps_match_numpy():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4)).astype("float32")
    b0 = rng.normal(size=(4,)).astype("float32")
    kernel = keras.Variable(w0, name="kernel")
    bias = keras.Variable(b0, name="bias")
    opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.01, trust_coefficient=0.02)
    grads = [rng.normal(size=s).astype("float32") for s in [(3, 4), (4,), (3, 4), (4,)]]
    wk, vk, wb, vb = w0.copy(), np.zeros_like(w0), b0.copy(), np.zeros_like(b0)
    for step in range(2):
        gk, gb = grads[2 * step], grads[2 * step + 1]
        opt.apply_gradients([(gk, kernel), (gb, bias)])
        wk, vk = _lars_numpy(wk, gk, vk, 0.5, 0.9, 0.01, 0.02, adapt=True)
        wb, vb = _lars_numpy(wb, gb, vb, 0.5, 0.9, 0.01, 0.02, adapt=False)  # 1-D: excluded
    np.testing.assert_allclose(kernel.numpy(), wk, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias.numpy(), wb, rtol=1e-5, atol=1e-6)


def test_lars_decay_reaches_update_and_name_exclusion():
    w0 = np.full((2, 2), 2.0, "float32")
    g = np.zeros((2, 2), "float32")  # only the decay moves the weight
    a, b = keras.Variable(w0, name="a_kernel"), keras.Variable(w0, name="b_kernel")
    opt = LARS(learning_rate=0.1, momentum=0.0, weight_decay=0.5, trust_coefficient=1.0)
    opt.exclude_from_weight_decay(var_names=["b_kernel"])
    opt.apply_gradients([(g, a), (g, b)])
    # g' = wd * w; trust = ||w|| / ||g'|| = 1 / wd; update = lr * w
    np.testing.assert_allclose(a.numpy(), w0 - 0.1 * w0, rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), w0)  # excluded: zero gradient, no decay


def test_lars_serialisation():
    opt = LARS(
        learning_rate=WarmupCosine(0.2, 100, 10),
        momentum=0.8,
        weight_decay=1e-6,
        trust_coefficient=0.002,
        nesterov=True,
        exclude_bias_and_norm=False,
    )
    config = keras.optimizers.serialize(opt)
    again = keras.optimizers.deserialize(config)
    assert isinstance(again, LARS)
    assert again.get_config() == opt.get_config()
    assert (
        isinstance(again.learning_rate, float)
        or again._learning_rate.get_config() == opt._learning_rate.get_config()
    )


def test_warmup_cosine_values():
    s = WarmupCosine(0.2, total_steps=110, warmup_steps=10, warmup_start_lr=1e-6)
    assert float(s(0)) == pytest.approx(1e-6)
    assert float(s(5)) == pytest.approx(1e-6 + (0.2 - 1e-6) * 0.5, rel=1e-5)
    assert float(s(10)) == pytest.approx(0.2, rel=1e-6)
    assert float(s(60)) == pytest.approx(0.1, rel=1e-5)
    assert float(s(110)) == pytest.approx(0.0, abs=1e-7) and float(s(500)) == pytest.approx(
        0.0, abs=1e-7
    )
    for k in (0, 3, 10, 37, 109):
        assert float(s(k)) == pytest.approx(s.value(k), rel=1e-5, abs=1e-8)
    values = [s.value(k) for k in range(111)]
    assert all(a <= b for a, b in zip(values[:10], values[1:11], strict=True))
    assert all(a >= b for a, b in zip(values[10:-1], values[11:], strict=True))
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    assert again.get_config() == s.get_config()


def test_factory_and_decay_routing():
    variables = [
        keras.Variable(np.ones((2, 2), "float32"), name="kernel"),
        keras.Variable(np.ones((2,), "float32"), name="gamma"),
    ]
    for name, cls in [
        ("sgd", TorchSGD),
        ("lars", LARS),
        ("adamw", keras.optimizers.AdamW),
        ("lamb", keras.optimizers.Lamb),
    ]:
        cfg = OptimizerConfig(name=name, weight_decay=1e-4)
        opt = build_optimizer(cfg, 0.1, variables)
        assert isinstance(opt, cls)
        # SGD's decay is applied by the model (coupled L2, every weight); the others by themselves.
        assert model_weight_decay(cfg) == (1e-4 if name == "sgd" else 0.0)
        if name == "sgd":
            assert opt.weight_decay is None
        else:
            assert opt.weight_decay == pytest.approx(1e-4)
            if name != "lars":
                assert opt._use_weight_decay(variables[0]) and not opt._use_weight_decay(
                    variables[1]
                )


def test_adamw_decay_reaches_update():
    w = keras.Variable(np.full((2, 2), 3.0, "float32"), name="kernel")
    opt = build_optimizer(OptimizerConfig(name="adamw", weight_decay=0.5), 0.1, [w])
    opt.apply_gradients([(np.zeros((2, 2), "float32"), w)])
    np.testing.assert_allclose(w.numpy(), 3.0 - 0.1 * 0.5 * 3.0, rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_byol():
    from care_tf.train.config import derive

    cfg = from_dict(
        {
            "model": {
                "backbone": "resnet18",
                "image_size": 32,
                "base_channels": 8,
                "t_stream": False,
                "hidden_dim": 32,
                "projection_dim": 16,
                "sync_bn": False,
            },
            "optimizer": {"name": "sgd", "base_lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
            "schedule": {"steps": 10, "warmup_steps": 0, "warmup_start_lr": 0.1, "end_lr": 0.1},
            "train": {"global_batch_size": 4},
        }
    )
    return cfg, derive(cfg, 64)


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_configured_weight_decay_reaches_the_update(tiny_byol, name):
    """One eager step with decay wd vs 0 from the same weights: the difference is the decay."""
    import dataclasses

    from care_tf.train.experiment import build_model

    cfg, derived = tiny_byol
    rng = np.random.default_rng(0)
    views = (
        rng.normal(size=(4, 32, 32, 3)).astype("float32"),
        rng.normal(size=(4, 32, 32, 3)).astype("float32"),
    )
    results = {}
    init = None
    decay = 0.05 if name == "sgd" else 50.0  # LARS: decay must be visible next to the gradient
    for wd in (0.0, decay):
        c = dataclasses.replace(
            cfg,
            optimizer=dataclasses.replace(
                cfg.optimizer, name=name, weight_decay=wd, trust_coefficient=0.01
            ),
        )
        model, schedule = build_model(c, derived)
        if init is None:
            init = [v.numpy() for v in model.weights]
        else:
            for v, value in zip(model.weights, init, strict=True):
                v.assign(value)
        model.train_step(views)
        results[wd] = [v.numpy() for v in model.trainable_weights]
        lr = float(schedule(0))
    w0 = [v for v, t in zip(init, model.weights, strict=True) if t.trainable]
    kernel = next(
        i for i, v in enumerate(model.trainable_weights) if v.path.endswith("stem_conv/kernel")
    )
    diff = results[decay][kernel] - results[0.0][kernel]
    assert np.abs(diff).max() > 1e-6, "weight decay did not reach the update"
    if name == "sgd":  # coupled L2 on every weight: w1(wd) - w1(0) = -lr * wd * w0 (first step)
        for i in range(len(w0)):
            np.testing.assert_allclose(
                results[0.05][i] - results[0.0][i], -lr * 0.05 * w0[i], atol=2e-6, rtol=2e-3
            )


def test_torch_sgd_matches_pytorch_momentum_with_a_changing_lr():
    """v <- mu v + g; w <- w - lr_t v (PyTorch), not Keras' v <- mu v - lr_t g."""
    rates = [0.1, 0.3, 0.05]
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0, 1], rates)  # step 0, 1, 2
    w0 = np.array([1.0, -2.0, 0.5], "float32")
    grads = [np.array([0.5, 1.0, -1.0], "float32") * (i + 1) for i in range(3)]
    for nesterov in (False, True):
        var = keras.Variable(w0.copy())
        opt = TorchSGD(learning_rate=schedule, momentum=0.9, nesterov=nesterov)
        w, v = w0.astype("float64"), np.zeros(3)
        for lr, g in zip(rates, grads, strict=True):
            opt.apply_gradients([(g, var)])
            v = 0.9 * v + g
            w = w - lr * ((g + 0.9 * v) if nesterov else v)
            np.testing.assert_allclose(var.numpy(), w, rtol=1e-6, atol=1e-6)
    config = keras.saving.serialize_keras_object(opt)
    again = keras.saving.deserialize_keras_object(config)
    assert isinstance(again, TorchSGD) and again.nesterov and again.momentum == 0.9


def _two_replicas() -> tf.distribute.MirroredStrategy:
    # Reductions without collective ops (TF's collective executor is per process).
    return tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )


def test_torch_sgd_fused_update_under_two_replicas():
    """The fused kernel updates each replica's copy with the all-reduced gradient."""
    strategy = _two_replicas()
    w0 = np.array([[1.0, -2.0], [0.5, 3.0]], "float32")
    with strategy.scope():
        var = keras.Variable(w0.copy())
        opt = TorchSGD(learning_rate=0.1, momentum=0.9, nesterov=True)
        opt.build([var])
    per_replica = [np.array([[0.5, 1.0], [-1.0, 2.0]], "float32") * s for s in (1.0, 3.0)]

    @tf.function
    def step():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            g = tf.where(ctx.replica_id_in_sync_group == 0, per_replica[0], per_replica[1])
            opt.apply_gradients([(g, var)])

        strategy.run(replica_fn)

    w, v = w0.astype("float64"), np.zeros((2, 2))
    for _ in range(2):
        step()
        g = per_replica[0] + per_replica[1]  # summed over replicas
        v = 0.9 * v + g
        w = w - 0.1 * (g + 0.9 * v)
    for copy in strategy.experimental_local_results(var.value):
        np.testing.assert_allclose(copy.numpy(), w, rtol=1e-6)


def test_model_weight_decay_sums_to_wd_w_over_replicas():
    """Each replica adds wd * w / replicas (x the loss scale): the all-reduced sum is wd * w."""
    strategy = _two_replicas()
    with strategy.scope():
        model = tiny_care(weight_decay=0.5, t_stream=False)
        model.compile(optimizer=keras.optimizers.LossScaleOptimizer(TorchSGD(0.1)))
    weights = model.trainable_weights[:3]

    @tf.function
    def decayed():
        def replica_fn():
            zeros = [tf.zeros_like(w) for w in weights]
            scale = model.optimizer.scale_loss(1.0)
            return [g / scale for g in model._add_weight_decay(zeros, weights, scale)]

        return [strategy.reduce("SUM", g, axis=None) for g in strategy.run(replica_fn)]

    for got, w in zip(decayed(), weights, strict=True):
        np.testing.assert_allclose(got.numpy(), 0.5 * w.numpy(), rtol=1e-6)
