"""Inference latency/throughput of the exported backbone on CPU: SavedModel, TFLite f32/int8.

    python bench/inference.py            # ResNet-50 at 224 px (a few minutes on 2 cores)
    python bench/inference.py --quick    # ResNet-18 (base 32) at 64 px, under a minute

Builds the backbone (random init, BatchNorm statistics from real Fashion-MNIST
images so int8 calibration sees realistic activations), writes a SavedModel and
TFLite float32 / int8 files with the export code, then times each at batch 1
and 32 (median of timed calls after a warm-up) and reports the size on disk.
SavedModel timings use `serve_uint8` on image_size x image_size uint8 images,
so they include the in-graph resize + crop + normalisation; TFLite timings take
pre-cropped pixels. Ends with one JSON line of figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from care_tf import ResNetBackbone  # noqa: E402
from care_tf.data import load_fashion_mnist  # noqa: E402
from care_tf.export import calibration, saved_model, tflite  # noqa: E402
from care_tf.export.source import ExportSource  # noqa: E402
from care_tf.export.testing import set_bn_statistics  # noqa: E402
from care_tf.export.verify import cosine, quantize_input  # noqa: E402


def dir_size(path: str) -> int:
    """Total bytes of the files under `path`."""
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
    )


def timeit(fn, reps: int, warmup: int = 2) -> float:
    """Median seconds per call of `fn()` over `reps` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def figures(seconds: float, batch: int) -> dict:
    return {"latency_ms": round(1000 * seconds, 2), "images_per_s": round(batch / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, under a minute")
    parser.add_argument("--reps", type=int, help="timed calls per measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="TFLite threads")
    args = parser.parse_args(argv)

    if args.quick:
        depth, base, size, calib_n, reps = 18, 32, 64, 16, args.reps or 3
    else:
        depth, base, size, calib_n, reps = 50, 64, 224, 64, args.reps or 5
    batches = (1, 32)
    print(f"[bench] ResNet-{depth} (base {base}) at {size} px, {args.threads} threads", flush=True)
    backbone = ResNetBackbone(depth=depth, base_channels=base, image_shape=(size, size, 3))
    images = calibration.crops(list(load_fashion_mnist("train")[0][: calib_n + 32]), size)
    set_bn_statistics(backbone, images[:calib_n], steps=6 if args.quick else 10, batch=16)
    source = ExportSource(backbone, {}, size, "unknown", "bench")
    test = images[calib_n : calib_n + 32]
    from care_tf.export.preprocess import normalize

    want = backbone(normalize(test.astype(np.float32)), training=False)["pooled"].numpy()

    work = tempfile.mkdtemp(prefix="care_bench_")
    result = {
        "model": f"resnet{depth}",
        "base_channels": base,
        "image_size": size,
        "threads": args.threads,
        "params": int(backbone.count_params()),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    try:
        sm_path = os.path.join(work, "care", "1")
        print("[bench] writing SavedModel", flush=True)
        saved_model.write_saved_model(source, sm_path)
        paths = {}
        for q in ("none", "int8"):
            print(f"[bench] converting TFLite {q}", flush=True)
            paths[q] = os.path.join(work, tflite.file_name("care", q))
            tflite.write_tflite(source, paths[q], q, images[:calib_n] if q == "int8" else None)
        result["size_mb"] = {
            "keras_weights": round(backbone.count_params() * 4 / 1e6, 2),
            "saved_model": round(dir_size(sm_path) / 1e6, 2),
            "tflite_float32": round(os.path.getsize(paths["none"]) / 1e6, 2),
            "tflite_int8": round(os.path.getsize(paths["int8"]) / 1e6, 2),
        }

        loaded = tf.saved_model.load(sm_path)
        serve = loaded.signatures["serve_uint8"]
        result["saved_model"] = {}
        for batch in batches:
            x = tf.constant(np.resize(test, (batch, size, size, 3)))
            seconds = timeit(lambda x=x: serve(images=x), reps)
            result["saved_model"][f"batch{batch}"] = figures(seconds, batch)
            print(f"[bench] SavedModel batch {batch}: {result['saved_model'][f'batch{batch}']}")

        for q, label in (("none", "tflite_float32"), ("int8", "tflite_int8")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                interpreter = tf.lite.Interpreter(model_path=paths[q], num_threads=args.threads)
            runner = interpreter.get_signature_runner("serving_default")
            detail = runner.get_input_details()["images"]
            result[label] = {}
            for batch in batches:
                x = quantize_input(np.resize(test, (batch, size, size, 3)), detail)
                seconds = timeit(lambda x=x, r=runner: r(images=x), reps)
                result[label][f"batch{batch}"] = figures(seconds, batch)
                print(f"[bench] {label} batch {batch}: {result[label][f'batch{batch}']}")
            got = runner(images=quantize_input(test, detail))["embedding"]
            result[label]["cosine_vs_keras"] = round(cosine(got, want)[0], 5)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
