"""SavedModel of a classifier (backbone + linear head) serving top-k class ids and scores.

`python -m care_tf.export --classifier --model_dir RUN --out OUT` exports
`RUN/classifier.keras` (e.g. the authors' ImageNet linear classifier converted by
`python -m care_tf.convert --linear`) to `OUT/NAME/VERSION/`. The signatures take
the same inputs as the backbone export, with the same in-graph preprocessing
(resize shorter side, centre crop, ImageNet normalisation):

- `serving_default`: `images` float32 (B, H, W, 1|3) pixels 0..255, any size;
- `serve_uint8`: `images` uint8 (B, H, W, 1|3);
- `serve_image_bytes`: `image_bytes` string (B,) encoded JPEG/PNG/GIF/BMP;

and each returns `classes` int64 (B, k), the class ids of the k highest scores
(best first; for the authors' ImageNet head, the index in the sorted WordNet-ID
order of the ILSVRC-2012 class folders, as torchvision's ImageFolder and TFDS's
`imagenet2012` number them), and `scores` float32 (B, k), their softmax
probabilities. The export is reloaded in a fresh process and checked against Keras.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from care_tf import model_dir as run_dir
from care_tf.export import preprocess
from care_tf.export.saved_model import (
    METADATA_FILE,
    add_serving_functions,
    save_serving_module,
)
from care_tf.export.source import (
    ExportError,
    ExportSource,
    check_care_backbone,
    metadata,
    read_run_config,
    read_step,
    tf_variables,
)

DEFAULT_TOP_K = 5
SCORE_REL_TOL = 1e-5


def load_classifier_source(model_dir: str) -> tuple[keras.Model, ExportSource]:
    """`(classifier, source)`: the run's classifier.keras and its backbone as an ExportSource.

    Raises:
        ExportError: no classifier there, or one whose backbone is not a CARE backbone
            with a fixed square input.
    """
    if not os.path.exists(model_dir):
        raise ExportError(f"--model_dir {model_dir!r} does not exist.")
    try:
        classifier = run_dir.load_classifier(model_dir)
    except FileNotFoundError as err:
        raise ExportError(str(err)) from None
    except (ValueError, TypeError, OSError) as err:
        raise ExportError(f"Could not load a classifier from {model_dir!r}: {err}") from None
    backbone = getattr(classifier, "backbone", None)
    if backbone is None or not hasattr(classifier, "head"):
        raise ExportError(
            f"{model_dir!r}: classifier.keras is not a care_tf LinearClassifier (backbone + head)."
        )
    check_care_backbone(backbone)
    height, width = tuple(backbone.inputs[0].shape[1:3])
    if height is None or height != width:
        raise ExportError(
            f"The classifier's backbone takes {height}x{width} images; a fixed square size is "
            "needed to export it."
        )
    config_dir = os.path.dirname(model_dir) if model_dir.endswith(".keras") else model_dir
    config = read_run_config(config_dir)
    source = ExportSource(
        backbone=backbone,
        config=config,
        image_size=int(height),
        step=read_step(config_dir, config),
        model_dir=os.path.abspath(model_dir),
    )
    return classifier, source


def num_classes_of(classifier) -> int:
    return int(classifier.head.output_shape[-1])


def build_module(classifier, image_size: int, top_k: int, limits=None) -> tf.Module:
    """A tf.Module with the three serving functions returning `classes` and `scores`.

    Inputs are checked as the backbone export's (`limits`: pixels, aspect ratio, finite).
    """

    def run(images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = tf.cast(classifier(images, training=False), tf.float32)
        top = tf.math.top_k(tf.nn.softmax(logits, axis=-1), k=top_k)
        return {
            "classes": tf.cast(top.indices, tf.int64, name="classes"),
            "scores": tf.identity(top.values, name="scores"),
        }

    module = tf.Module(name="care_classifier")
    module.classifier_variables = tf_variables(classifier)
    limits = limits or preprocess.DEFAULT_LIMITS
    add_serving_functions(module, image_size, limits, run_pixels=run, run_bytes=run)
    return module


def write_classifier_saved_model(classifier, source: ExportSource, path: str, top_k: int) -> dict:
    """Writes the SavedModel (with assets/care_export.json and warm-up requests) to `path`."""
    module = build_module(classifier, source.image_size, top_k, source.limits)
    outputs = {
        "classes": f"int64 (B, {top_k}) class ids, highest score first",
        "scores": f"float32 (B, {top_k}) softmax probabilities",
    }
    meta = metadata(
        source,
        format="saved_model",
        task="classification",
        num_classes=num_classes_of(classifier),
        top_k=top_k,
        signatures={
            "serving_default": {"inputs": {"images": "float32 (B >= 1, H, W, 1|3) pixels 0..255"}},
            "serve_uint8": {"inputs": {"images": "uint8 (B >= 1, H, W, 1|3)"}},
            "serve_image_bytes": {"inputs": {"image_bytes": "string (B,) JPEG/PNG/GIF/BMP"}},
            "outputs": outputs,
        },
    )
    assets = {"metadata_file": (METADATA_FILE, json.dumps(meta, indent=2))}
    save_serving_module(module, path, source.image_size, assets)
    return meta


def reference_data(classifier, image_size: int, top_k: int) -> dict:
    """Test images (pixels and PNG bytes) and the Keras classifier's top-k on them."""
    from care_tf.export.exporter import synthetic_images

    raw = synthetic_images(4, image_size + 13, image_size + 5)
    logits = classifier(preprocess.preprocess(raw, image_size), training=False)
    top = tf.math.top_k(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1), k=top_k)
    return {
        "raw": raw,
        "png": np.array([tf.io.encode_png(image).numpy() for image in raw], dtype=object),
        "expected_classes": top.indices.numpy().astype(np.int64),
        "expected_scores": top.values.numpy(),
    }


def verify_in_fresh_process(path: str, data: dict) -> list[dict]:
    """Runs `_verify_main` in a new Python process; returns its checks."""
    with tempfile.TemporaryDirectory() as tmp:
        data_path = os.path.join(tmp, "reference.npz")
        report_path = os.path.join(tmp, "report.json")
        np.savez(data_path, **data)
        code = (
            "import sys; sys.path.insert(0, sys.argv[4]); "
            "from care_tf.export.classifier import _verify_main; "
            "_verify_main(sys.argv[1], sys.argv[2], sys.argv[3])"
        )
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        cmd = [sys.executable, "-c", code, path, data_path, report_path, root]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if not os.path.isfile(report_path):
            raise ExportError(f"Verification of {path} crashed:\n{proc.stderr[-3000:]}")
        with open(report_path) as f:
            return json.load(f)


def _verify_main(path: str, data_path: str, report_path: str) -> None:
    """Loads the SavedModel and checks every signature against the Keras results."""
    data = dict(np.load(data_path, allow_pickle=True))
    loaded = tf.saved_model.load(path)
    checks = []

    def check(name: str, fn) -> None:
        try:
            detail = fn()
            checks.append({"name": name, "ok": True, "detail": detail})
        except Exception as err:  # reported to the parent, which raises ExportError
            checks.append({"name": name, "ok": False, "detail": f"{type(err).__name__}: {err}"})

    def compare(out) -> str:
        classes, scores = out["classes"].numpy(), out["scores"].numpy()
        if not np.array_equal(classes, data["expected_classes"]):
            raise AssertionError(
                f"classes {classes.tolist()} != {data['expected_classes'].tolist()}"
            )
        expected = data["expected_scores"]
        rel = float(np.abs(scores - expected).max() / max(np.abs(expected).max(), 1e-12))
        if rel > SCORE_REL_TOL:
            raise AssertionError(f"scores max_rel_error {rel:.3g} > {SCORE_REL_TOL}")
        return f"classes equal, scores max_rel_error {rel:.3g}"

    signatures = loaded.signatures
    raw = data["raw"]
    check(
        "serving_default",
        lambda: compare(signatures["serving_default"](images=tf.constant(raw, tf.float32))),
    )
    check("serve_uint8", lambda: compare(signatures["serve_uint8"](images=tf.constant(raw))))
    png = [bytes(b) for b in data["png"]]
    check(
        "serve_image_bytes",
        lambda: compare(signatures["serve_image_bytes"](image_bytes=tf.constant(png))),
    )

    def garbage():
        try:
            signatures["serve_image_bytes"](image_bytes=tf.constant([b"not an image" * 4]))
        except tf.errors.InvalidArgumentError:
            return "InvalidArgumentError"
        raise AssertionError("non-image bytes were accepted")

    check("non-image bytes rejected", garbage)
    with open(report_path, "w") as f:
        json.dump(checks, f)


def export_classifier(
    model_dir: str,
    out: str,
    name: str = "care_classifier",
    version: int = 1,
    top_k: int = DEFAULT_TOP_K,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Exports `model_dir/classifier.keras` as a verified SavedModel at `out/name/version`.

    Returns:
        {"saved_model": path, "checks": [...]}.

    Raises:
        ExportError: bad arguments, no classifier, or a failed verification.
    """
    if not isinstance(version, int) or version < 1:
        raise ExportError(f"--version must be a positive integer; got {version!r}.")
    if not name or os.sep in name or name.startswith("."):
        raise ExportError(f"--name must be a plain directory name; got {name!r}.")
    final = os.path.join(out, name, str(version))
    if os.path.exists(final) and not overwrite:
        raise ExportError(
            f"Version directory {final} already exists: pass --overwrite to replace it, or "
            "choose another --version."
        )
    log(f"[export] loading classifier from {model_dir}")
    classifier, source = load_classifier_source(model_dir)
    classes = num_classes_of(classifier)
    if not 1 <= top_k <= classes:
        raise ExportError(f"--top_k must be in 1..{classes} (the classes); got {top_k}.")
    log(f"[export] {classes} classes, {source.image_size}x{source.image_size} input, top {top_k}")
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = os.path.join(os.path.dirname(final), f".tmp-{version}")  # as export_backbone
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        log(f"[export] writing SavedModel to {final}")
        write_classifier_saved_model(classifier, source, tmp, top_k)
        log("[export] verifying the SavedModel in a fresh process")
        checks = verify_in_fresh_process(tmp, reference_data(classifier, source.image_size, top_k))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for c in checks:
        log(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")
    if not all(c["ok"] for c in checks):
        failed = ", ".join(c["name"] for c in checks if not c["ok"])
        raise ExportError(
            f"Verification of the classifier export failed ({failed}); left at {tmp}."
        )
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    log(f"[export] done: {final}")
    return {"saved_model": final, "checks": checks}
