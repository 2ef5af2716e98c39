"""Input-pipeline throughput: two-view 224 px images per second per CPU core.

    python bench/data_pipeline.py [--quick] [--images 64] [--batch_size 32] [--batches 30]

Real JPEGs: scikit-learn's two 640x427 sample photos (china.jpg, flower.jpg), copied
into a temporary image folder. The host pipeline (read + decode + two augmented views
+ batching) runs with every TF thread pool limited to one thread
(tf.config.threading intra/inter-op = 1, tf.data private_threadpool_size = 1,
max_intra_op_parallelism = 1); throughput is reported per wall-clock second and
per CPU second of the whole process (robust to other jobs sharing the machine).
Ends by printing one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

AUTHORS_PER_CORE = 74.0  # docs/method.md (Cost): the authors' two-view PIL pipeline, 640x427 JPEGs


def _photo_folder(n: int) -> str:
    import sklearn.datasets

    src = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    folder = tempfile.mkdtemp(prefix="care_bench_")
    for i in range(n):
        name = ("china.jpg", "flower.jpg")[i % 2]
        shutil.copy(os.path.join(src, name), os.path.join(folder, f"{i:04d}_{name}"))
    return folder


def _one_thread(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def _measure(ds: tf.data.Dataset, batches: int, batch_size: int, warmup: int = 3) -> dict:
    it = iter(ds)
    for _ in range(warmup):  # tracing, XLA compilation, first file reads
        next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = batches * batch_size
    return {"images_per_s_wall": round(n / wall, 1), "images_per_s_per_cpu_s": round(n / cpu, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches (under a minute)")
    parser.add_argument("--images", type=int, default=64, help="JPEG files in the folder")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per figure")
    parser.add_argument("--image_size", type=int, default=224)
    args = parser.parse_args(argv)
    batches = 6 if args.quick else args.batches

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from care_tf.data import TwoViewAugment, load_source, make_pretrain_dataset
    from care_tf.data.pipeline import device_resolution

    folder = _photo_folder(args.images)
    try:
        source = load_source(f"folder:{folder}")
        figures = {"image_size": args.image_size, "batch_size": args.batch_size}

        # Decode only: read + JPEG decode of 640x427 photos.
        decode = source.as_dataset(shuffle=True, seed=0).repeat()
        decode = decode.map(lambda e: tf.reduce_sum(tf.cast(e["image"][0, 0], tf.int32)))
        decode = _one_thread(decode.batch(args.batch_size))
        figures["decode_only"] = _measure(decode, batches, args.batch_size)

        # Host placement: decode + two views, the tf.data pipeline training reads.
        host = make_pretrain_dataset(
            source, batch_size=args.batch_size, image_size=args.image_size, seed=0
        )
        figures["host_two_views"] = _measure(_one_thread(host), batches, args.batch_size)

        # Device placement on this CPU: decode + resize in tf.data, then the batched
        # TwoViewAugment in one XLA-compiled function (what a train step would run).
        device = make_pretrain_dataset(
            source,
            batch_size=args.batch_size,
            image_size=args.image_size,
            seed=0,
            placement="device",
        )
        aug = TwoViewAugment(args.image_size, seed=0)
        augment = tf.function(lambda x: aug(x), jit_compile=True)
        it = iter(_one_thread(device))
        for _ in range(2):
            augment(next(it))
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(max(2, batches // 2)):
            v1, _ = augment(next(it))
        v1.numpy()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        n = max(2, batches // 2) * args.batch_size
        figures["device_two_views_on_cpu"] = {
            "images_per_s_wall": round(n / wall, 1),
            "images_per_s_per_cpu_s": round(n / cpu, 1),
            "resolution": device_resolution(args.image_size),
        }
        per_core = figures["host_two_views"]["images_per_s_per_cpu_s"]
        figures["host_vs_authors_per_core"] = round(per_core / AUTHORS_PER_CORE, 2)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
