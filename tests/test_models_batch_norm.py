"""BatchNorm: PyTorch semantics (biased normalisation, unbiased running variance), fused."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from care_tf.models.batch_norm import BatchNorm


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 3, 5)])
def test_training_matches_numpy_and_keras(shape):
    rng = np.random.RandomState(0)
    x = (rng.randn(*shape) * 3 + 1).astype("float32")
    bn = BatchNorm(momentum=0.9, epsilon=1e-5)
    bn.build(shape)
    bn.gamma.assign(rng.rand(5).astype("float32") + 0.5)
    bn.beta.assign(rng.randn(5).astype("float32"))
    reference = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    reference.build(shape)
    reference.set_weights(bn.get_weights())

    xt = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        y = bn(xt, training=True)
        y_ref = reference(xt, training=True)
        loss, loss_ref = tf.reduce_sum(y * y[::-1]), tf.reduce_sum(y_ref * y_ref[::-1])

    flat = x.reshape(-1, 5).astype("float64")
    mean, var = flat.mean(0), flat.var(0)
    want = (x - mean) / np.sqrt(var + 1e-5) * bn.gamma.numpy() + bn.beta.numpy()
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), rtol=1e-4, atol=1e-4)
    n = flat.shape[0]
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * mean, rtol=1e-5, atol=1e-6)
    # PyTorch updates running_var with the unbiased batch variance.
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
    for a, b in zip(
        tape.gradient(loss, [xt, bn.gamma, bn.beta]),
        tape.gradient(loss_ref, [xt, reference.gamma, reference.beta]),
        strict=True,
    ):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4)
    # Inference mode uses the moving statistics.
    y_inf = bn(xt, training=False).numpy()
    mv, mm = bn.moving_variance.numpy(), bn.moving_mean.numpy()
    np.testing.assert_allclose(
        y_inf,
        (x - mm) / np.sqrt(mv + 1e-5) * bn.gamma.numpy() + bn.beta.numpy(),
        rtol=1e-4,
        atol=1e-4,
    )


def test_synchronized_matches_one_device_forward_and_backward():
    """2 replicas x 4 with synchronized=True == 1 device x 8: outputs, statistics, gradients."""
    rng = np.random.RandomState(1)
    x = (rng.randn(8, 2, 2, 3) * 2 + 3).astype("float32")
    w = rng.randn(8, 2, 2, 3).astype("float32")
    single = BatchNorm(momentum=0.9, epsilon=1e-5)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = single(xt, training=True)
        loss = tf.reduce_sum(y * w)
    dx, dgamma, dbeta = tape.gradient(loss, [xt, single.gamma, single.beta])

    # Not collective ops: TF's collective executor is per process and keyed per
    # strategy, so two collective strategies in one test session can collide.
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    with strategy.scope():
        bn = BatchNorm(momentum=0.9, epsilon=1e-5, synchronized=True)
        bn.build(x.shape)
    batch = next(
        iter(
            strategy.experimental_distribute_dataset(
                tf.data.Dataset.from_tensor_slices((x, w)).batch(8)
            )
        )
    )

    @tf.function
    def step(xb, wb):
        def replica(a, b):
            with tf.GradientTape() as tape:
                tape.watch(a)
                out = bn(a, training=True)
                replica_loss = tf.reduce_sum(out * b)
            return (out, *tape.gradient(replica_loss, [a, bn.gamma, bn.beta]))

        return strategy.run(replica, args=(xb, wb))

    results = [strategy.experimental_local_results(t) for t in step(*batch)]
    local = lambda i: np.concatenate([t.numpy() for t in results[i]])  # noqa: E731
    summed = lambda i: sum(t.numpy() for t in results[i])  # noqa: E731
    np.testing.assert_allclose(local(0), y.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(local(1), dx.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(summed(2), dgamma.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(summed(3), dbeta.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        bn.moving_variance.numpy(), single.moving_variance.numpy(), rtol=1e-5
    )
    np.testing.assert_allclose(
        bn.moving_mean.numpy(), single.moving_mean.numpy(), rtol=1e-5, atol=1e-6
    )


def test_serialisation():
    bn = BatchNorm(momentum=0.9, epsilon=1e-5, synchronized=True, name="bn")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(bn))
    assert isinstance(clone, BatchNorm) and clone.get_config() == bn.get_config()
