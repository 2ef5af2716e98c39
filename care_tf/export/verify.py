"""Checks an export in a fresh process against the Keras outputs saved by the exporter.

Run as a script (it imports only numpy and TensorFlow, like a serving host):

    python care_tf/export/verify.py --kind saved_model|tflite --path P \
        --data reference.npz --report report.json [--quantize none|float16|dynamic|int8]

The report is JSON: {"ok": bool, "checks": [{"name", "metric", "value",
"tolerance", "ok", ...}]}; the exit status is 1 when a check fails.

SavedModel checks: every signature through `tf.saved_model.load`, the
`serving_default` signature again through the TF1 session loader that TF
Serving uses, a PNG through `serve_image_bytes`, a grayscale image, and
non-image bytes (which must give an InvalidArgumentError).
TFLite checks: the `serving_default` signature runner at batch N and batch 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

# Run as a script, Python puts this file's folder first on sys.path, where our module
# names (e.g. tflite, calibration) would shadow installed packages: drop it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Tolerances: relative max error = max|export - keras| / max|keras|.
SAVED_MODEL_REL_TOL = 1e-5
TFLITE_REL_TOL = {"none": 1e-4, "float16": 5e-3}
# Quantised activations: mean cosine similarity of the embeddings.
TFLITE_COSINE_TOL = {"dynamic": 0.98, "int8": 0.98}
GARBAGE = b"this is not an image \x00\x01\x02" * 4


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected| (0 when both are 0)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    scale = np.abs(expected).max()
    diff = np.abs(actual - expected).max()
    return float(diff / scale) if scale > 0 else float(diff)


def cosine(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(mean, min) over the batch of the cosine similarity of flattened rows."""
    a = np.asarray(actual, np.float64).reshape(len(actual), -1)
    b = np.asarray(expected, np.float64).reshape(len(expected), -1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return float(cos.mean()), float(cos.min())


class Report:
    """Collects named checks."""

    def __init__(self):
        self.checks: list[dict] = []

    def close(self, name: str, actual, expected, tol: float) -> None:
        value = relative_error(actual, expected)
        self.checks.append(
            {
                "name": name,
                "metric": "max_rel_error",
                "value": value,
                "max_abs_error": float(np.abs(np.asarray(actual) - expected).max())
                if np.shape(actual) == np.shape(expected)
                else None,
                "tolerance": tol,
                "ok": bool(value <= tol),
            }
        )

    def similar(self, name: str, actual, expected, tol: float) -> None:
        mean, low = cosine(actual, expected)
        self.checks.append(
            {
                "name": name,
                "metric": "mean_cosine",
                "value": mean,
                "min_cosine": low,
                "max_rel_error": relative_error(actual, expected),
                "tolerance": tol,
                "ok": bool(mean >= tol),
            }
        )

    def fact(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append({"name": name, "metric": "check", "value": detail, "ok": bool(ok)})

    def run(self, name: str, fn) -> None:
        """Runs `fn()`; an exception becomes a failed check instead of a crash."""
        try:
            fn()
        except Exception as err:  # report, do not crash: the parent prints it
            self.fact(name, False, f"{type(err).__name__}: {str(err)[:500]}")

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c["ok"] for c in self.checks)


def verify_saved_model(path: str, data: dict, report: Report) -> None:
    loaded = tf.saved_model.load(path)
    names = sorted(loaded.signatures.keys())
    wanted = ["serve_image_bytes", "serve_uint8", "serving_default"]
    report.fact("signatures", names == wanted, f"{names}")
    raw = data["raw"]
    maps = [k for k in ("res4", "res5") if f"expected_{k}" in data]

    def pixels(signature: str, images: np.ndarray, expected_key: str, label: str = "") -> None:
        out = loaded.signatures[signature](images=tf.constant(images))
        report.close(
            f"{signature}{label} embedding",
            out["embedding"],
            data[expected_key],
            SAVED_MODEL_REL_TOL,
        )
        for k in maps if expected_key == "expected_embedding" else []:
            report.close(f"{signature} {k}", out[k], data[f"expected_{k}"], SAVED_MODEL_REL_TOL)
        extra = sorted(set(out) - {"embedding", *maps})
        if extra:
            report.fact(f"{signature} outputs", False, f"unexpected outputs {extra}")

    report.run(
        "serving_default",
        lambda: pixels("serving_default", raw.astype(np.float32), "expected_embedding"),
    )
    report.run("serve_uint8", lambda: pixels("serve_uint8", raw, "expected_embedding"))
    report.run(
        "serving_default grayscale",
        lambda: pixels(
            "serving_default",
            data["gray"].astype(np.float32),
            "expected_gray_embedding",
            " grayscale",
        ),
    )

    def png() -> None:
        encoded = tf.stack([tf.io.encode_png(image) for image in raw])
        out = loaded.signatures["serve_image_bytes"](image_bytes=encoded)
        report.close(
            "serve_image_bytes PNG embedding",
            out["embedding"],
            data["expected_embedding"],
            SAVED_MODEL_REL_TOL,
        )

    report.run("serve_image_bytes PNG", png)

    def garbage() -> None:
        try:
            loaded.signatures["serve_image_bytes"](image_bytes=tf.constant([GARBAGE]))
        except tf.errors.InvalidArgumentError as err:
            lines = [line.strip() for line in err.message.splitlines() if line.strip()]
            message = next((line for line in lines if "image_bytes" in line), lines[0])[:200]
            report.fact("serve_image_bytes garbage -> InvalidArgumentError", True, message)
            return
        report.fact("serve_image_bytes garbage -> InvalidArgumentError", False, "no error raised")

    report.run("serve_image_bytes garbage", garbage)
    report.run("TF1 session loader (TF Serving)", lambda: _tf1_session(path, data, report))


def _tf1_session(path: str, data: dict, report: Report) -> None:
    """Loads with the TF1 loader (restore op + session), as TF Serving does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tf.Graph()
        with tf.compat.v1.Session(graph=graph) as sess:
            meta = tf.compat.v1.saved_model.load(sess, ["serve"], path)
            sig = meta.signature_def["serving_default"]
            fetch = sig.outputs["embedding"].name
            feed = {sig.inputs["images"].name: data["raw"].astype(np.float32)}
            out = sess.run(fetch, feed)
    report.close(
        "TF1 session serving_default embedding",
        out,
        data["expected_embedding"],
        SAVED_MODEL_REL_TOL,
    )


def _interpreter(path: str):
    try:  # the maintained runtime when installed
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            Interpreter = tf.lite.Interpreter  # noqa: N806
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Interpreter(model_path=path)


def quantize_input(pixels: np.ndarray, detail: dict) -> np.ndarray:
    """Pixels (0..255) -> the runner's input dtype, applying its quantisation if any."""
    dtype = detail["dtype"]
    scale, zero = detail["quantization"]
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        q = np.round(pixels.astype(np.float32) / scale + zero)
        return np.clip(q, info.min, info.max).astype(dtype)
    return pixels.astype(dtype)


def verify_tflite(path: str, data: dict, quantize: str, report: Report) -> None:
    interpreter = _interpreter(path)
    signatures = interpreter.get_signature_list()
    report.fact("signatures", "serving_default" in signatures, json.dumps(signatures))
    runner = interpreter.get_signature_runner("serving_default")
    detail = runner.get_input_details()["images"]
    pixels = data["pixels"]
    maps = [k for k in ("res4", "res5") if f"expected_{k}" in data]

    def batch(images: np.ndarray, expected: dict, label: str) -> None:
        out = runner(images=quantize_input(images, detail))
        for key in ["embedding", *maps]:
            if quantize in TFLITE_COSINE_TOL:
                report.similar(
                    f"{label} {key}", out[key], expected[key], TFLITE_COSINE_TOL[quantize]
                )
            else:
                report.close(f"{label} {key}", out[key], expected[key], TFLITE_REL_TOL[quantize])

    expected = {k: data[f"expected_{k}"] for k in ["embedding", *maps]}
    report.run(f"batch {len(pixels)}", lambda: batch(pixels, expected, f"batch {len(pixels)}"))
    first = {k: v[:1] for k, v in expected.items()}
    report.run("batch 1", lambda: batch(pixels[:1], first, "batch 1"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["saved_model", "tflite"], required=True)
    parser.add_argument("--path", required=True, help="SavedModel directory or .tflite file")
    parser.add_argument("--data", required=True, help=".npz of inputs and Keras outputs")
    parser.add_argument("--report", required=True, help="where to write the JSON report")
    parser.add_argument(
        "--quantize", default="none", choices=["none", "float16", "dynamic", "int8"]
    )
    args = parser.parse_args(argv)
    data = dict(np.load(args.data))
    report = Report()
    if args.kind == "saved_model":
        report.run("load SavedModel", lambda: verify_saved_model(args.path, data, report))
    else:
        report.run("load TFLite", lambda: verify_tflite(args.path, data, args.quantize, report))
    with open(args.report, "w") as f:
        json.dump({"ok": report.ok, "path": args.path, "checks": report.checks}, f, indent=2)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
