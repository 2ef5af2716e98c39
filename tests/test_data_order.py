"""The input as a function of (seed, position): epochs, resume from a position, record
lanes and windows, device crops in the original geometry, the tf.data service."""

import numpy as np
import pytest
import tensorflow as tf
from care_testing import start_data_service

from care_tf.data import TwoViewAugment, make_pretrain_dataset
from care_tf.data.order import lane_bounds, random_access_positions, record_positions
from care_tf.data.sources import ArraySource
from care_tf.data.tfrecord import scan_shard


def _array_source(n=40, h=12, w=12):
    rng = np.random.default_rng(0)
    return ArraySource(
        name="arrays", split="train", files=[], num_examples=n, num_classes=None,
        class_names=None, images=rng.integers(0, 256, (n, h, w, 3), np.uint8),
        labels=np.full(n, -1),
    )  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Five TFRecord files of unequal sizes whose records name themselves ("file:record")."""
    root = tmp_path_factory.mktemp("shards")
    segments = []
    for j, n in enumerate([7, 3, 11, 1, 9]):
        path = str(root / f"s{j}.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(n):
                writer.write(f"{j}:{i}".encode())
        segments.append((path, 0, n))
    return segments


def test_random_access_epochs_are_new_permutations():
    got = [(int(k), int(i)) for k, i in random_access_positions(10, 0, 0).take(30)]
    assert [k for k, _ in got] == list(range(30))
    epochs = [[i for _, i in got[e * 10 : (e + 1) * 10]] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(10))
    assert epochs[0] != epochs[1] != epochs[2]
    other_pipeline = [int(i) for _, i in random_access_positions(10, 0, 1).take(10)]
    assert other_pipeline != epochs[0]
    resumed = [(int(k), int(i)) for k, i in random_access_positions(10, 0, 0, start=13).take(17)]
    assert resumed == got[13:]


def test_lane_bounds_put_longer_lanes_first():
    np.testing.assert_array_equal(lane_bounds(11, 3), [0, 4, 8, 11])
    np.testing.assert_array_equal(lane_bounds(2, 3), [0, 1, 2, 2])


def test_record_stream_resumes_at_any_position(shards):
    segments = list(shards)
    segments[2] = (segments[2][0], 2, 8)  # part of a file, as TFDS split slices give
    total = sum(s[2] for s in segments)
    assert [scan_shard(s[0])[:2] for s in shards] == [(n, False) for n in (7, 3, 11, 1, 9)]

    def run(start, n):
        ds = record_positions(segments, seed=3, pipeline=1, start=start, window=4, lanes=3)
        return [(int(k), r.numpy().decode()) for k, _, _, r in ds.take(n)]

    ref = run(0, 2 * total)
    assert [k for k, _ in ref] == list(range(2 * total))
    expected = sorted(f"{j}:{i}" for j, (_, a, n) in enumerate(segments) for i in range(a, a + n))
    for e in range(2):
        assert sorted(r for _, r in ref[e * total : (e + 1) * total]) == expected
    assert ref[:total] != ref[total:]
    for start in (5, total - 1, total + 6):  # inside a window, the last record, next epoch
        assert run(start, 2 * total - start) == ref[start:], start


@pytest.mark.parametrize("placement", ["host", "device"])
def test_pipeline_from_a_position_continues_the_stream(placement):
    source = _array_source()
    kwargs = dict(batch_size=4, image_size=16, seed=5, placement=placement)
    full = make_pretrain_dataset(source, **kwargs).take(12)  # 40 examples: 10 per epoch
    full = [np.asarray(tf.nest.flatten(b)[0]) for b in full]
    later = make_pretrain_dataset(source, start_position=4 * 9, **kwargs).take(3)
    for a, b in zip(full[9:], later, strict=True):
        np.testing.assert_array_equal(a, np.asarray(tf.nest.flatten(b)[0]))


def test_device_crops_follow_the_original_aspect_ratio():
    """Images 48 x 96 whose red/green encode the original row/column: a view spans
    rows and columns in the drawn aspect ratio of the ORIGINAL frame, not the squashed one."""
    h, w, n = 48, 96, 256
    rows = np.repeat(np.linspace(0, 255, h)[:, None], w, axis=1)
    cols = np.repeat(np.linspace(0, 255, w)[None, :], h, axis=0)
    image = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).round().astype(np.uint8)
    source = ArraySource(
        name="ramps", split="train", files=[], num_examples=n, num_classes=None,
        class_names=None, images=np.repeat(image[None], n, axis=0), labels=np.full(n, -1),
    )  # fmt: skip
    images, sizes = next(iter(make_pretrain_dataset(
        source, batch_size=n, image_size=32, seed=0, placement="device", return_image_sizes=True
    )))  # fmt: skip
    np.testing.assert_array_equal(sizes, [[h, w]] * n)
    aug = TwoViewAugment(
        32, seed=1, flip_prob=(0, 0), jitter_prob=(0, 0), gray_prob=(0, 0), blur_prob=(0, 0),
        solarize_prob=(0, 0), mean=(0, 0, 0), std=(1, 1, 1),
    )  # fmt: skip

    def log_aspects(views):
        v = np.asarray(views)
        row_span = (v[..., 0].max(axis=(1, 2)) - v[..., 0].min(axis=(1, 2))) * (h - 1)
        col_span = (v[..., 1].max(axis=(1, 2)) - v[..., 1].min(axis=(1, 2))) * (w - 1)
        return np.log(col_span / row_span)

    following = np.concatenate([log_aspects(x) for x in aug(images, image_sizes=sizes)])
    squashed = np.concatenate([log_aspects(x) for x in aug(images)])
    lo, hi = np.log(3 / 4), np.log(4 / 3)
    # ratio (3/4, 4/3), log-uniform: mean 0, sd (hi - lo) / sqrt(12) = 0.166
    assert np.all((following > lo - 0.12) & (following < hi + 0.12))
    assert abs(following.mean()) < 0.05 and 0.12 < following.std() < 0.21
    assert abs(squashed.mean() - np.log(2)) < 0.1  # drawn in the 37 x 37 frame: 2x too wide


def test_tf_data_service_serves_the_same_examples():
    """Through a dispatcher and two workers: every view is one of the local stream's
    (each is a function of its position); only the grouping into batches may differ."""
    address, dispatcher, workers = start_data_service(2)
    source = _array_source(n=24)
    kwargs = dict(batch_size=4, image_size=16, seed=2, placement="device")
    local = make_pretrain_dataset(source, **kwargs).take(12)  # two epochs of 24
    known = {image.tobytes() for batch in local for image in np.asarray(batch)}
    served = make_pretrain_dataset(source, service=address, service_job="test", **kwargs)
    for batch in served.take(3):
        assert batch.shape == (4, 18, 18, 3)
        for image in np.asarray(batch):
            assert image.tobytes() in known
    del workers, dispatcher
