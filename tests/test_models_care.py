"""The CARE model: the authors' counts, losses vs NumPy, gradient routing, target update."""

import care_testing
import keras
import numpy as np
import pytest
import tensorflow as tf
from care_testing import n_params

import care_tf

K = 40  # total steps of the momentum schedule in these tests


def tiny_care(**kwargs) -> care_tf.CARE:
    return care_testing.tiny_care(**{"total_steps": K, **kwargs})


def views(seed=0, batch=8):
    rng = np.random.RandomState(seed)
    return (
        rng.randn(batch, 32, 32, 3).astype("float32"),
        rng.randn(batch, 32, 32, 3).astype("float32"),
    )


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    m = tiny_care()
    m.compile(optimizer=keras.optimizers.SGD(0.0))
    return m


def test_resnet50_parameter_counts_match_method():
    m = care_tf.CARE.from_preset("resnet50", image_size=224)
    assert m.built and m.backbone.built
    assert n_params(m.trainable_weights) == 79_440_448
    target = [v for layer in m.target_layers for v in layer.weights if "moving" not in v.path]
    assert n_params(target) == 75_221_056
    assert n_params(m.transformer.trainable_weights) == 32_813_568
    assert n_params(m.backbone.trainable_weights) == 23_508_032
    head = m.c_projector.trainable_weights + m.c_predictor.trainable_weights
    assert n_params(head) == 11_559_424
    assert n_params(m.target_c_projector.weights) - 2 * 4096 == 9_449_728  # minus BN stats
    # The model's trainable weights are exactly the online network.
    online = {id(v) for layer in m.online_layers for v in layer.trainable_weights}
    assert {id(v) for v in m.trainable_weights} == online
    assert not any(v.trainable for layer in m.target_layers for v in layer.weights)


def test_target_starts_as_exact_copy(model):
    fresh = tiny_care()
    for online, target in fresh._online_target_pairs():
        for o, t in zip(online.weights, target.weights, strict=True):
            np.testing.assert_array_equal(o.numpy(), t.numpy())


def np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_losses_equal_numpy_formulas(model):
    rng = np.random.RandomState(3)
    q1, q2, a1, a2, k1, k2, t1, t2 = (np_normalize(rng.randn(6, 32)) for _ in range(8))
    # target dicts are per view: view-2 target gives k1, t1; view-1 gives k2, t2.
    losses = model.compute_losses(
        {"c": q1, "t": a1}, {"c": q2, "t": a2}, {"c": k2, "t": t2}, {"c": k1, "t": t1}
    )
    dot = lambda a, b: (a * b).sum(-1)
    l_c = np.mean(4 - 2 * (dot(q1, k1) + dot(q2, k2)))
    l_t = np.mean(4 - 2 * (dot(a1, t1) + dot(a2, t2)))
    l_att = np.mean((q1 - a1) ** 2) + np.mean((q2 - a2) ** 2)
    np.testing.assert_allclose(float(losses["loss_c"]), l_c, rtol=1e-6)
    np.testing.assert_allclose(float(losses["loss_t"]), l_t, rtol=1e-6)
    np.testing.assert_allclose(float(losses["loss_att"]), l_att, rtol=1e-6)
    np.testing.assert_allclose(float(losses["loss"]), l_c + l_t + 100 * l_att, rtol=1e-6)


def test_train_step_reports_the_losses_of_its_forward_pass(model):
    x1, x2 = views(seed=5)
    model.steps.assign(0)
    for online, target in model._online_target_pairs():  # target == online
        for o, t in zip(online.weights, target.weights, strict=True):
            t.assign(o)
    # Outputs in training mode use batch statistics: compute them before the step.
    o1, o2 = model.online_outputs(x1), model.online_outputs(x2)
    t1, t2 = model.target_outputs(x1), model.target_outputs(x2)
    out = {k: np.asarray(v) for k, v in (("q1", o1["c"]), ("q2", o2["c"]), ("a1", o1["t"]))}
    out.update(a2=np.asarray(o2["t"]), k1=np.asarray(t2["c"]), k2=np.asarray(t1["c"]))
    out.update(t1=np.asarray(t2["t"]), t2=np.asarray(t1["t"]))
    np.testing.assert_allclose(np.linalg.norm(out["q1"], axis=-1), 1.0, rtol=1e-5)
    logs = model.train_on_batch((x1, x2), return_dict=True)
    dot = lambda a, b: (a * b).sum(-1)
    l_c = np.mean(4 - 2 * (dot(out["q1"], out["k1"]) + dot(out["q2"], out["k2"])))
    l_t = np.mean(4 - 2 * (dot(out["a1"], out["t1"]) + dot(out["a2"], out["t2"])))
    l_att = np.mean((out["q1"] - out["a1"]) ** 2) + np.mean((out["q2"] - out["a2"]) ** 2)
    np.testing.assert_allclose(logs["loss_c"], l_c, rtol=1e-4)
    np.testing.assert_allclose(logs["loss_t"], l_t, rtol=1e-4)
    np.testing.assert_allclose(logs["loss_att"], l_att, rtol=1e-4)
    np.testing.assert_allclose(logs["loss"], l_c + l_t + 100 * l_att, rtol=1e-4)
    assert logs["momentum"] == pytest.approx(0.99)


def test_gradient_routing(model):
    x1, x2 = views(seed=7)
    t1, t2 = model.target_outputs(x1), model.target_outputs(x2)
    target_vars = [v for layer in model.target_layers for v in layer.weights]
    t_stream = (
        model.transformer.trainable_weights
        + model.t_projector.trainable_weights
        + model.t_predictor.trainable_weights
    )
    c_stream = model.c_predictor.trainable_weights + model.c_projector.trainable_weights
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([v.value for v in target_vars])
        o1, o2 = model.online_outputs(x1), model.online_outputs(x2)
        losses = model.compute_losses(o1, o2, t1, t2)
    # L_att never trains the T-stream ...
    for g in tape.gradient(losses["loss_att"], t_stream):
        assert g is None or not np.any(g.numpy())
    # ... but it does train the C-stream.
    assert any(
        g is not None and np.any(g.numpy()) for g in tape.gradient(losses["loss_att"], c_stream)
    )
    # The target gets no gradient from the loss.
    for g in tape.gradient(losses["loss"], [v.value for v in target_vars]):
        assert g is None or not np.any(g.numpy())
    # L_t reaches the T-stream and the first three backbone stages, not stage 4.
    grads = dict(
        zip(
            [v.path for v in model.backbone.trainable_weights],
            tape.gradient(losses["loss_t"], model.backbone.trainable_weights),
            strict=True,
        )
    )
    assert any(np.any(g.numpy()) for p, g in grads.items() if "stage3" in p and g is not None)
    assert all(g is None for p, g in grads.items() if "stage4" in p)
    del tape


@pytest.mark.parametrize("step", [0, K // 2, K])
def test_target_update_follows_cosine_schedule(model, step):
    rng = np.random.RandomState(step)
    for layer in model.target_layers:  # make the target differ from the online net
        for v in layer.weights:
            v.assign(v.numpy() + rng.normal(0, 0.1, v.shape).astype("float32"))
    model.steps.assign(step)
    pairs = model.ema_pairs()
    assert pairs and all(o.trainable and not t.trainable for o, t in pairs)
    before = [(o.numpy(), t.numpy()) for o, t in pairs]
    logs = model.train_on_batch(views(seed=1), return_dict=True)  # lr = 0: online unchanged
    m = 1 - (1 - 0.99) * (np.cos(np.pi * step / K) + 1) / 2
    assert logs["momentum"] == pytest.approx(m, abs=1e-6)
    assert int(model.steps.numpy()) == step + 1
    for (o, t), (o_old, t_old) in zip(pairs, before, strict=True):
        np.testing.assert_allclose(o.numpy(), o_old)
        np.testing.assert_allclose(t.numpy(), m * t_old + (1 - m) * o_old, rtol=1e-5, atol=1e-6)


def test_weight_decay_reaches_the_update():
    keras.utils.set_random_seed(1)
    wd, lr = 0.05, 0.1
    m = tiny_care(weight_decay=wd, t_stream=False)
    m.compile(optimizer=keras.optimizers.SGD(lr))
    m.steps.assign(K)  # momentum 1: the target does not move
    x1, x2 = views(seed=2)
    t1, t2 = m.target_outputs(x1), m.target_outputs(x2)
    with tf.GradientTape() as tape:
        losses = m.compute_losses(m.online_outputs(x1), m.online_outputs(x2), t1, t2)
    grads = tape.gradient(losses["loss"], m.trainable_weights)
    before = [v.numpy() for v in m.trainable_weights]
    m.train_on_batch((x1, x2))
    for v, w, g in zip(m.trainable_weights, before, grads, strict=True):
        np.testing.assert_allclose(v.numpy(), w - lr * (g.numpy() + wd * w), rtol=1e-4, atol=1e-6)


def test_byol_mode_has_no_t_stream():
    m = tiny_care(t_stream=False)
    assert m.transformer is None and [t.name for t in m.metrics] == ["loss", "loss_c", "momentum"]
    m.compile(optimizer=keras.optimizers.SGD(0.01))
    logs = m.train_on_batch(views(), return_dict=True)
    assert set(logs) == {"loss", "loss_c", "momentum"}
    np.testing.assert_allclose(logs["loss"], logs["loss_c"])


def test_bad_arguments():
    backbone = care_tf.ResNetBackbone(
        depth=18, stem="cifar", base_channels=8, image_shape=(32, 32, 3)
    )
    with pytest.raises(ValueError, match="Unknown preset 'resnet7'"):
        care_tf.CARE.from_preset("resnet7")
    cnn = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="feature_backbone"):
        care_tf.CARE(cnn)
    only_res5 = keras.Model(backbone.input, {"res5": backbone.output["res5"]})
    with pytest.raises(ValueError, match="no res4 output"):
        care_tf.CARE(only_res5)
    with pytest.raises(ValueError, match="num_heads.*divide"):
        care_tf.CARE(backbone, care_tf.TransStack(out_channels=64, num_heads=3))
    wrong = care_tf.TransStack(out_channels=64, num_blocks=1, num_heads=2)
    wrong.build((None, 16, 16, 32))
    with pytest.raises(ValueError, match="built for a \\(16, 16\\) res4 map.*\\(8, 8\\)"):
        care_tf.CARE(backbone, wrong)
    with pytest.raises(ValueError, match="total_steps"):
        care_tf.CARE(backbone, total_steps=0)
    with pytest.raises(ValueError, match="t_stream=False"):
        care_tf.CARE(backbone, care_tf.TransStack(out_channels=64), t_stream=False)
    with pytest.raises(ValueError, match="view1, view2"):
        m = care_tf.CARE(backbone, hidden_dim=16, projection_dim=8)
        m.compile(optimizer="sgd")
        m.train_on_batch(np.zeros((2, 32, 32, 3), "float32"))


def test_device_placement_batches_keep_their_original_sizes():
    """(images, original sizes) batches reach the augmenter with the sizes (the fit route
    and the CLI's compiled step share `CARE.train_step`); (images, labels) is refused."""
    from care_tf.data import TwoViewAugment

    model = tiny_care(augmenter=TwoViewAugment(32, seed=0))
    images = tf.random.uniform((2, 48, 48, 3), maxval=256, dtype=tf.int32, seed=1)
    images = tf.cast(images, tf.uint8)
    sizes = tf.constant([[48, 12], [12, 48]], tf.int32)
    views = model._views((images, sizes))  # the layer's first step: step 0
    with_sizes = model.augmenter(images, step=0, image_sizes=sizes)
    squashed = model.augmenter(images, step=0)
    for got, want in zip(views, with_sizes, strict=True):
        assert got.shape == (2, 32, 32, 3)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-6)
    # The sizes change the crops (drawn in the original frame, not the squashed one).
    for got, other in zip(views, squashed, strict=True):
        assert not np.allclose(got.numpy(), other.numpy(), atol=1e-3)
    with pytest.raises(ValueError, match="look like \\(images, labels\\)"):
        model._views((images, tf.constant([3, 1])))
