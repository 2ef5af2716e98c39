"""oneDNN's Conv2D against MatmulConv2D (one matrix product) on CARE's convolution shapes.

    python bench/conv_impl.py            # every ResNet-50 / TransStack shape, batch 8
    python bench/conv_impl.py --quick    # the shapes that decide the rule, under a minute

Times forward + backward (input and kernel gradients) of each convolution on one
thread (the per-core figure), fastest of `--repeats` calls after one warm-up, and
reports milliseconds for both and their ratio. `care_tf.models.resnet.use_matmul`
and the TransStack's shortcut pick the matrix product where it wins here. Ends with
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from care_tf.models.conv import MatmulConv2D  # noqa: E402

# (name, map size, in channels, out channels, kernel, stride), ResNet-50 at 224 px.
SHAPES = [
    ("stage1 1x1 64->256", 56, 64, 256, 1, 1),
    ("stage1 3x3 64", 56, 64, 64, 3, 1),
    ("stage2 proj 1x1/2 256->512", 56, 256, 512, 1, 2),
    ("stage2 3x3 128", 28, 128, 128, 3, 1),
    ("stage3 1x1 256->1024", 14, 256, 1024, 1, 1),
    ("stage3 1x1 1024->256", 14, 1024, 256, 1, 1),
    ("stage3 3x3 256", 14, 256, 256, 3, 1),
    ("stage4 proj 1x1/2 1024->2048", 14, 1024, 2048, 1, 2),
    ("stage4 1x1 512->2048", 7, 512, 2048, 1, 1),
    ("stage4 1x1 2048->512", 7, 2048, 512, 1, 1),
    ("stage4 3x3 512", 7, 512, 512, 3, 1),
    ("transstack shortcut 3x3/2 1024->2048", 14, 1024, 2048, 3, 2),
    ("transstack qkv 1x1 512->1536", 7, 512, 1536, 1, 1),
]
QUICK = {"stage3 1x1 1024->256", "stage4 1x1 2048->512", "transstack shortcut 3x3/2 1024->2048"}


def onednn_conv(x, kernel, stride: int):
    """What Conv2D runs: PyTorch-style padding k // 2, then a VALID conv."""
    k = kernel.shape[0]
    if k > 1:
        x = tf.pad(x, [[0, 0], [k // 2, k // 2], [k // 2, k // 2], [0, 0]])
    return tf.nn.conv2d(x, kernel, stride, "VALID")


def timed(fn, args, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls of `fn(*args)` after one warm-up."""
    for value in tf.nest.flatten(fn(*args)):
        value.numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for value in tf.nest.flatten(fn(*args)):
            value.numpy()
        best = min(best, time.perf_counter() - start)
    return best


def forward_backward(forward):
    @tf.function(autograph=False)
    def step(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = forward(x, kernel)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x, kernel])

    return step


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three shapes, under a minute")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="0 = TF's default pools")
    args = parser.parse_args(argv)
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    rng = np.random.default_rng(0)
    results = {}
    for name, size, cin, cout, k, stride in SHAPES:
        if args.quick and name not in QUICK:
            continue
        x = tf.constant(rng.normal(size=(args.batch, size, size, cin)), "float32")
        std = (2 / (k * k * cout)) ** 0.5
        kernel = tf.constant(rng.normal(size=(k, k, cin, cout)) * std, "float32")
        layer = MatmulConv2D(cout, k, strides=stride, use_bias=False)
        padded_shape = (args.batch, size + k - 1, size + k - 1, cin)
        layer.build(padded_shape)

        def matmul(x, kernel, layer=layer, k=k):
            if k > 1:
                x = tf.pad(x, [[0, 0], [k // 2, k // 2], [k // 2, k // 2], [0, 0]])
            return layer.convolution_op(x, kernel)

        difference = float(
            tf.reduce_max(tf.abs(matmul(x, kernel) - onednn_conv(x, kernel, stride)))
        )

        def conv(x, kernel, stride=stride):
            return onednn_conv(x, kernel, stride)

        conv_s = timed(forward_backward(conv), (x, kernel), args.repeats)
        matmul_s = timed(forward_backward(matmul), (x, kernel), args.repeats)
        results[name] = {
            "conv2d_ms": round(conv_s * 1e3, 1),
            "matmul_ms": round(matmul_s * 1e3, 1),
            "speedup": round(conv_s / matmul_s, 2),
            "max_abs_difference": float(f"{difference:.2e}"),
        }
        print(f"{name:<40} {results[name]}", file=sys.stderr, flush=True)
    figures = {
        "batch": args.batch,
        "threads": args.threads or "default",
        "load_average_1min": round(os.getloadavg()[0], 2),
        "forward_backward": results,
    }
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
