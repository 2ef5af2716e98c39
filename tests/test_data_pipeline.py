"""Pretraining and evaluation pipelines: shapes, seeds, placement, distribution."""

import numpy as np
import pytest
import tensorflow as tf

from care_tf.data import (
    TwoViewAugment,
    distribute_pretrain_dataset,
    load_source,
    make_eval_dataset,
    make_pretrain_dataset,
)
from care_tf.data.sources import ArraySource


@pytest.fixture(scope="module")
def small_source():
    """64 real Fashion-MNIST images as an in-memory source."""
    from care_tf.data import load_fashion_mnist

    try:
        images, labels = load_fashion_mnist("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST IDX files not installed (run `make data`)")
    return ArraySource(
        name="fmnist64",
        split="test",
        files=[],
        num_examples=64,
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        images=images[:64],
        labels=labels[:64],
    )


def _first_batches(ds, n=2, threads=None):
    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        ds = ds.with_options(options)
    return [tuple(np.asarray(t) for t in b) for b in ds.take(n)]


def test_host_views_shapes_and_reproducibility(small_source):
    kwargs = dict(batch_size=8, image_size=32, seed=11)
    a = _first_batches(make_pretrain_dataset(small_source, **kwargs), threads=1)
    b = _first_batches(make_pretrain_dataset(small_source, **kwargs), threads=4)
    c = _first_batches(make_pretrain_dataset(small_source, **{**kwargs, "seed": 12}))
    v1, v2 = a[0]
    assert v1.shape == v2.shape == (8, 32, 32, 3) and v1.dtype == np.float32
    assert not np.allclose(v1, v2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[1], y[1])
    assert not np.allclose(a[0][0], c[0][0])


def test_repeat_gives_new_views_every_epoch(small_source):
    ds = make_pretrain_dataset(small_source, batch_size=64, image_size=16, seed=0, cache=True)
    (e1, _), (e2, _) = _first_batches(ds, 2)
    assert e1.shape == (64, 16, 16, 3) and not np.allclose(np.sort(e1.ravel()), np.sort(e2.ravel()))


def test_device_placement_yields_fixed_size_uint8(small_source):
    ds = make_pretrain_dataset(small_source, batch_size=8, image_size=32, placement="device")
    images = next(iter(ds)).numpy()
    assert images.shape == (8, 37, 37, 3) and images.dtype == np.uint8
    ds = make_pretrain_dataset(
        small_source, batch_size=4, image_size=32, placement="device", return_image_sizes=True
    )
    images, sizes = next(iter(ds))
    np.testing.assert_array_equal(sizes, [[28, 28]] * 4)
    v1, v2 = TwoViewAugment(32, seed=0)(images, image_sizes=sizes)
    assert v1.shape == v2.shape == (4, 32, 32, 3)
    with pytest.raises(ValueError, match="placement"):
        make_pretrain_dataset(small_source, batch_size=4, image_size=32, placement="tpu")


def test_input_context_batch_and_sharding(small_source):
    batches = []
    for i in range(2):
        context = tf.distribute.InputContext(2, i, num_replicas_in_sync=2)
        ds = make_pretrain_dataset(
            small_source,
            batch_size=16,
            image_size=16,
            seed=0,
            input_context=context,
            placement="device",
            resolution=28,
        )
        batches.append(next(iter(ds)).numpy())
    assert batches[0].shape == (8, 28, 28, 3)
    flat = [{b.tobytes() for b in batch} for batch in batches]
    assert not flat[0] & flat[1]  # each pipeline reads its own half


def test_distributed_dataset_feeds_two_replicas(small_source):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    dist = distribute_pretrain_dataset(strategy, small_source, batch_size=8, image_size=16, seed=0)
    view1, view2 = next(iter(dist))
    locals1 = strategy.experimental_local_results(view1)
    assert len(locals1) == 2
    for v in locals1 + strategy.experimental_local_results(view2):
        assert v.shape == (4, 16, 16, 3)
    assert not np.allclose(locals1[0], locals1[1])


def test_eval_pipeline_centre_crop_and_train_crop(tmp_path):
    from PIL import Image

    # A 40 x 60 image whose centre 30 x 30 square is white, the rest black.
    array = np.zeros((40, 60, 3), np.uint8)
    array[5:35, 15:45] = 255
    for i in range(5):
        Image.fromarray(array).save(tmp_path / f"{i}.png")
    source = load_source(f"folder:{tmp_path}")
    ds = make_eval_dataset(source, split="train", train=False, image_size=28, batch_size=2)
    batches = list(ds)
    assert [len(b[1]) for b in batches] == [2, 2, 1]  # evaluation keeps every image
    x = batches[0][0].numpy()
    assert x.shape == (2, 28, 28, 3)
    # Shorter side 40 -> 32 (28 * 256 / 224), 60 -> 48; centre 28 x 28 is mostly white.
    pixels = x[0] * np.array([0.229, 0.224, 0.225]) + np.array([0.485, 0.456, 0.406])
    assert pixels[4:24, 4:24].min() > 0.95 and pixels.mean() > 0.7
    ds = make_eval_dataset(source, split="train", train=True, image_size=28, batch_size=2, seed=0)
    train_batches = list(ds)
    assert len(train_batches) == 2 and train_batches[0][0].shape == (2, 28, 28, 3)
    again = list(
        make_eval_dataset(source, split="train", train=True, image_size=28, batch_size=2, seed=0)
    )
    np.testing.assert_array_equal(train_batches[0][0], again[0][0])


def test_eval_pipeline_fashion_mnist_32(small_source):
    ds = make_eval_dataset(small_source, split="test", train=False, image_size=32, batch_size=32)
    x, y = next(iter(ds))
    assert x.shape == (32, 32, 32, 3) and y.dtype == tf.int64
    np.testing.assert_array_equal(y, small_source.labels[:32])
