"""Where CARE follows the authors' code beyond the loss: target view order, logged losses, BN.

Each test computes the expected numbers independently in NumPy.
"""

import keras
import numpy as np
import tensorflow as tf
from care_testing import tiny_care

from care_tf.models.batch_norm import BatchNorm

MOMENTUM = 0.9  # BN moving-statistics momentum (PyTorch's 0.1)


def np_normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def moments(x):
    """Per-channel batch mean and unbiased variance of (N, ..., C), in float64."""
    x = np.asarray(x, "float64").reshape(-1, x.shape[-1])
    return x.mean(0), x.var(0, ddof=1)


def first_bn_input(network: keras.Model, images) -> tuple[BatchNorm, np.ndarray]:
    """The first BatchNorm of a functional network and its input on `images` (no BN before)."""
    bn = next(layer for layer in network.layers if isinstance(layer, BatchNorm))
    return bn, keras.Model(network.input, bn.input)(images).numpy()


def test_authors_logged_losses_equal_numpy():
    model = tiny_care(lambda_att=100.0)
    rng = np.random.RandomState(4)
    q1, q2, a1, a2, k1, k2, t1, t2 = (
        tf.constant(np_normalize(rng.randn(6, 32)).astype("float32")) for _ in range(8)
    )
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([q1, k1, t1])
        # Target dicts are per view: the view-2 target gives k1, t1; view 1 gives k2, t2.
        losses = model.compute_losses(
            {"c": q1, "t": a1}, {"c": q2, "t": a2}, {"c": k2, "t": t2}, {"c": k1, "t": t1}
        )
    tensors = q1, k1, t1
    q1, q2, a1, a2, k1, k2, t1, t2 = (np.float64(v) for v in (q1, q2, a1, a2, k1, k2, t1, t2))
    mse = lambda a, b: np.mean((a - b) ** 2)  # noqa: E731
    dot = lambda a, b: (a * b).sum(-1)  # noqa: E731
    l_c = np.mean(4 - 2 * (dot(q1, k1) + dot(q2, k2)))
    l_t = np.mean(4 - 2 * (dot(a1, t1) + dot(a2, t2)))
    att_authors = 100 * (mse(q1, a1) + mse(q2, a2) + mse(k1, t1) + mse(k2, t2))
    np.testing.assert_allclose(float(losses["loss_att_authors"]), att_authors, rtol=1e-5)
    np.testing.assert_allclose(float(losses["loss_authors"]), l_c + l_t + att_authors, rtol=1e-5)
    # The optimised loss is unchanged: the extra target terms are logged only.
    l_att = mse(q1, a1) + mse(q2, a2)
    np.testing.assert_allclose(float(losses["loss"]), l_c + l_t + 100 * l_att, rtol=1e-5)
    assert float(losses["loss_authors"]) - float(losses["loss"]) > 1e-3
    # No gradient from the extra target terms.
    grad_q1, grad_k1, grad_t1 = tape.gradient(losses["loss_att_authors"], list(tensors))
    assert np.any(grad_q1.numpy())
    for g in (grad_k1, grad_t1):
        assert g is None or not np.any(g.numpy())
    del tape


def two_views(batch=8):
    """Two views with clearly different statistics, so the BN update order shows."""
    rng = np.random.RandomState(0)
    x1 = rng.randn(batch, 32, 32, 3).astype("float32")
    x2 = (3.0 * rng.randn(batch, 32, 32, 3) + 2.0).astype("float32")
    return x1, x2


def test_target_runs_on_view_2_then_view_1():
    """The target's BN moving statistics after one step: view 2's update first, then view 1's."""
    model = tiny_care()
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    x1, x2 = two_views()
    # Independent inputs of two target BNs per view: the stem BN (after the stem conv) and
    # the TransStack's first BN (after its 1x1 conv on res4). The target equals the online
    # network at step 0; the state is restored after these training-mode calls.
    state = [v.numpy() for v in model.weights]
    stem_bn, stem1 = first_bn_input(model.target_backbone, x1)
    _, stem2 = first_bn_input(model.target_backbone, x2)
    block = model.target_transformer.blocks[0]
    res4 = [model.target_backbone(x, training=True)["res4"] for x in (x1, x2)]
    conv1, conv2 = (block.conv_in(r).numpy() for r in res4)
    for v, value in zip(model.weights, state, strict=True):
        v.assign(value)

    checked = [(stem_bn, stem1, stem2), (block.bn_in, conv1, conv2)]
    before = [(bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn, _, _ in checked]
    logs = model.train_on_batch((x1, x2), return_dict=True)
    # The step logs the authors' totals beside ours.
    np.testing.assert_allclose(
        logs["loss_authors"], logs["loss_c"] + logs["loss_t"] + logs["loss_att_authors"], rtol=1e-5
    )
    assert logs["loss_att_authors"] > 100 * logs["loss_att"]
    for (bn, in1, in2), (mean0, var0) in zip(checked, before, strict=True):
        (m1, v1), (m2, v2) = moments(in1), moments(in2)
        m = MOMENTUM
        want_mean = m * (m * mean0 + (1 - m) * m2) + (1 - m) * m1  # view 2, then view 1
        want_var = m * (m * var0 + (1 - m) * v2) + (1 - m) * v1
        other_order = m * (m * var0 + (1 - m) * v1) + (1 - m) * v2
        np.testing.assert_allclose(bn.moving_mean.numpy(), want_mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), want_var, rtol=1e-4, atol=1e-5)
        tolerance = 1e-4 * np.abs(want_var).max() + 1e-5
        assert np.abs(other_order - want_var).max() > 10 * tolerance  # the order shows


def test_transstack_bn_is_per_replica_and_backbone_bn_synchronised():
    """2 replicas x 4 images, sync_bn=True: backbone BN on all 8 images, TransStack BN on 4."""
    x = np.concatenate(two_views(batch=4))  # replica 0 gets view-1-like, replica 1 shifted
    keras.utils.set_random_seed(0)
    single = tiny_care(sync_bn=True)
    # Synchronised backbone BN == one device on the global batch: res4 of all 8 images.
    stem_bn0, stem_in = first_bn_input(single.backbone, x)
    state = [v.numpy() for v in single.weights]
    res4 = single.backbone(x, training=True)["res4"]
    conv_in = single.transformer.blocks[0].conv_in(res4).numpy()

    # Reductions without collective ops (TF's collective executor is per process).
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    with strategy.scope():
        model = tiny_care(sync_bn=True)
        model.set_weights(state)
    stem_bn = next(layer for layer in model.backbone.layers if isinstance(layer, BatchNorm))
    trans_bn = model.transformer.blocks[0].bn_in
    assert stem_bn.synchronized and not trans_bn.synchronized
    assert model.c_projector.bn.synchronized
    batch = next(
        iter(
            strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x).batch(8))
        )
    )

    @tf.function
    def forward(images):
        return strategy.run(lambda a: model.online_outputs(a, training=True)["t"], args=(images,))

    forward(batch)
    m = MOMENTUM
    _, var_all = moments(stem_in)
    # Each replica updates its own copy with its own 4 images (as PyTorch's per-GPU
    # BatchNorm2d); the synchronised stem BN wrote the same global value on both.
    (mean_a, var_a), (mean_b, var_b) = moments(conv_in[:4]), moments(conv_in[4:])
    _, var_global = moments(conv_in)
    local = lambda v: [c.numpy() for c in strategy.experimental_local_results(v.value)]  # noqa: E731
    for copy, mean_r in zip(local(trans_bn.moving_mean), (mean_a, mean_b), strict=True):
        np.testing.assert_allclose(copy, (1 - m) * mean_r, rtol=1e-3, atol=1e-5)
    for copy, var_r in zip(local(trans_bn.moving_variance), (var_a, var_b), strict=True):
        np.testing.assert_allclose(copy, m + (1 - m) * var_r, rtol=1e-3, atol=1e-5)
        synced = m + (1 - m) * var_global
        assert np.abs(synced - copy).max() > 0.05 * np.abs(synced).max()  # not the global one
    for copy in local(stem_bn.moving_variance):
        np.testing.assert_allclose(copy, m + (1 - m) * var_all, rtol=1e-4, atol=1e-5)
