"""Linear probe: learns separable features; the backbone stays frozen (weights and BN stats)."""

import keras
import numpy as np
import pytest

from care_tf import ResNetBackbone
from care_tf.evaluate import (
    LinearClassifier,
    extract_features,
    make_linear_head,
    probe_learning_rate,
    train_linear_probe,
    train_linear_probe_on_features,
)
from care_tf.evaluate.linear import predict_scores, probe_optimizer
from care_tf.train.sgd import TorchSGD


def tiny_backbone():
    return ResNetBackbone(depth=18, base_channels=8, stem="cifar", image_shape=(32, 32, 3))


def test_head_init_and_lr_rule():
    head = make_linear_head(10, seed=3)
    head.build((None, 512))
    kernel, bias = head.get_layer("fc").kernel.numpy(), head.get_layer("fc").bias.numpy()
    assert kernel.shape == (512, 10) and abs(kernel.std() - 0.01) < 1e-3
    np.testing.assert_array_equal(bias, 0)
    assert probe_learning_rate(256) == pytest.approx(0.2)
    assert probe_learning_rate(1024) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="num_classes"):
        make_linear_head(1)


def test_probe_optimizer_is_torch_sgd_with_cosine():
    """The authors' torch.optim.SGD(momentum=0.9, weight_decay=0) under a cosine to 0."""
    opt = probe_optimizer(0.4, total_steps=100)
    assert isinstance(opt, TorchSGD) and opt.momentum == pytest.approx(0.9)
    schedule = opt._learning_rate
    for step in (0, 30, 100):
        expected = 0.4 * 0.5 * (1 + np.cos(np.pi * step / 100))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_probe_separates_linearly_separable_features():
    rng = np.random.default_rng(0)
    num_classes, dim = 10, 32
    directions = rng.normal(size=(num_classes, dim))
    labels = rng.integers(0, num_classes, 2000)
    # ReLU-like non-negative features, classes separable by a linear map.
    features = np.abs(directions[labels] * 3 + rng.normal(size=(2000, dim)) * 0.3)
    head, history = train_linear_probe_on_features(
        features[:1500], labels[:1500], num_classes=num_classes, epochs=15, batch_size=128
    )
    assert history["top1"][-1] > 0.97
    scores, test_labels = predict_scores(head, (features[1500:], labels[1500:]))
    assert np.mean(np.argmax(scores, 1) == test_labels) > 0.97


def test_backbone_frozen_during_end_to_end_probe():
    backbone = tiny_backbone()
    # Non-trivial BN statistics so a training-mode call would visibly move them.
    backbone(np.random.default_rng(1).normal(size=(8, 32, 32, 3)).astype("float32"), training=True)
    before = [w.numpy().copy() for w in backbone.weights]
    rng = np.random.default_rng(0)
    images = rng.normal(size=(48, 32, 32, 3)).astype("float32")
    labels = rng.integers(0, 3, 48)
    classifier, history = train_linear_probe(
        backbone, (images, labels), num_classes=3, epochs=2, batch_size=16
    )
    assert len(history["loss"]) == 2 and np.isfinite(history["loss"]).all()
    after = [w.numpy() for w in backbone.weights]
    for w, b, a in zip(backbone.weights, before, after, strict=True):
        np.testing.assert_array_equal(b, a, err_msg=w.path)
    trained = {id(v) for v in classifier.trainable_weights}
    assert trained == {id(v) for v in classifier.head.trainable_weights}

    # Logits equal the head applied to extracted (inference-mode) features.
    feats, _ = extract_features(backbone, (images[:8], labels[:8]))
    expected = backbone(images[:8], training=False)["pooled"].numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        classifier(images[:8]).numpy(), classifier.head(feats).numpy(), rtol=1e-4, atol=1e-5
    )


def test_linear_classifier_round_trip(tmp_path):
    classifier = LinearClassifier(tiny_backbone(), make_linear_head(4))
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    expected = classifier(images).numpy()
    classifier.save(tmp_path / "probe.keras")
    restored = keras.saving.load_model(tmp_path / "probe.keras")
    np.testing.assert_allclose(restored(images).numpy(), expected, rtol=1e-5, atol=1e-6)
