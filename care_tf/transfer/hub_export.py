"""`python -m care_tf.export --format keras_hub`: a verified keras-hub preset under OUT/keras_hub/.

The preset (`care_tf.to_keras_hub`) is reloaded in a fresh Python process that imports
keras-hub but not care_tf; its P2..P5 maps (and, for a classifier preset, the logits
of `ImageClassifier.predict` on raw pixels) are compared with ours on synthetic images.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable

import numpy as np

from care_tf.constants import IMAGENET_MEAN, IMAGENET_STD

SUBDIR = "keras_hub"
REL_TOL = 1e-4  # of the largest magnitude: float32 round-off of a 50-layer network

# Runs in the fresh process: keras-hub only (asserted), so the preset stands alone.
_LOADER = """
import json, sys
import numpy as np
import keras, keras_hub
preset, data, out = sys.argv[1:4]
assert not [m for m in sys.modules if m.split(".")[0] == "care_tf"], "care_tf was imported"
arrays = np.load(data)
backbone = keras_hub.models.ResNetBackbone.from_preset(preset)
pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)(arrays["normalised"])
result = {k: np.asarray(v) for k, v in pyramid.items()}
if "raw" in arrays:
    classifier = keras_hub.models.ImageClassifier.from_preset(preset)
    result["logits"] = np.asarray(classifier.predict(arrays["raw"], verbose=0))
np.savez(out, **result)
"""


def normalise(images: np.ndarray) -> np.ndarray:
    """Pixels 0..255 -> our backbone's input (ImageNet mean/std), float32."""
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    return ((np.asarray(images, np.float64) / 255.0 - mean) / std).astype(np.float32)


def reference(model, classifier, size: int) -> tuple[dict, dict]:
    """`(inputs, expected)`: synthetic images and our stage maps / logits on them."""
    import keras

    from care_tf.export.exporter import synthetic_images
    from care_tf.models.resnet import RESNET_SPECS

    raw = synthetic_images(2, size + 16, size).astype(np.float32)  # keras-hub crops the centre
    normalised = normalise(raw[:, 8 : 8 + size])
    depths = RESNET_SPECS[model.depth][1]
    names = [f"stage{s + 1}_block{n - 1}_out" for s, n in enumerate(depths)]
    maps = keras.Model(model.inputs, [model.get_layer(n).output for n in names])(normalised)
    expected = {f"P{i + 2}": np.asarray(m) for i, m in enumerate(maps)}
    inputs = {"normalised": normalised}
    if classifier is not None:
        inputs["raw"] = raw
        expected["logits"] = np.asarray(classifier(normalised, training=False))
    return inputs, expected


def verify_in_fresh_process(preset_dir: str, inputs: dict, expected: dict) -> list[dict]:
    """Loads `preset_dir` with keras-hub alone and compares its outputs with `expected`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with tempfile.TemporaryDirectory() as tmp:
        data, out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(data, **inputs)
        cmd = [sys.executable, "-c", _LOADER, os.path.abspath(preset_dir), data, out]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        if proc.returncode != 0 or not os.path.isfile(out):
            return [{"name": "load", "ok": False, "detail": proc.stderr.strip()[-2000:]}]
        got = dict(np.load(out))
    checks = []
    for name, want in expected.items():
        have = got.get(name)
        if have is None or have.shape != want.shape:
            shape = None if have is None else have.shape
            checks.append({"name": name, "ok": False, "detail": f"shape {shape} != {want.shape}"})
            continue
        rel = float(np.abs(have - want).max() / max(float(np.abs(want).max()), 1e-12))
        checks.append({"name": name, "ok": rel <= REL_TOL, "detail": f"max_rel_error {rel:.3g}"})
    return checks


def export_keras_hub(
    model_dir: str,
    out: str,
    *,
    classifier: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Writes `out/keras_hub/` (`care_tf.to_keras_hub`) and verifies it in a fresh process.

    Args:
        model_dir: str. A run directory, a converted run or a `.keras` file.
        out: str. Output root; the preset goes to `out/keras_hub/`.
        classifier: bool. Also the ResNetImageClassifier of `model_dir/classifier.keras`.
        overwrite: bool. Replace an existing `out/keras_hub/`.

    Returns:
        {"keras_hub": preset path, "checks": [...]}.

    Raises:
        ExportError: a model keras-hub cannot express, a missing file, an existing
            preset without `overwrite`. VerificationError: the reloaded preset differs.
    """
    from care_tf import atomic
    from care_tf.export.exporter import VerificationError
    from care_tf.export.source import ExportError
    from care_tf.transfer import keras_hub_bridge as bridge

    final = os.path.join(out, SUBDIR)
    if os.path.exists(final) and not overwrite:
        raise ExportError(f"{final} already exists: pass --overwrite to replace it.")
    if not os.path.exists(model_dir):
        raise ExportError(f"--model_dir {model_dir!r} does not exist.")
    log(f"[export] keras-hub preset of {model_dir}")
    try:
        if classifier:
            model = bridge._load_classifier(True, model_dir)
        else:
            model = None
        ours = bridge.care_resnet(model if model is not None else model_dir)
        bridge.check_transferable(ours)
        size = ours.image_shape[0] or 224
        inputs, expected = reference(ours, model, int(size))
        os.makedirs(out, exist_ok=True)
        tmp = atomic.aside_path(final)
        bridge.to_keras_hub(model if model is not None else ours, tmp, classifier=model is not None)
    except bridge.TransferError as err:
        raise ExportError(str(err)) from None
    try:
        log("[export] verifying the preset in a fresh process (keras-hub without care_tf)")
        checks = verify_in_fresh_process(tmp, inputs, expected)
        for c in checks:
            log(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")
        if not all(c["ok"] for c in checks):
            failed = ", ".join(c["name"] for c in checks if not c["ok"])
            raise VerificationError(
                f"The keras-hub preset of {model_dir} does not reproduce it ({failed})."
            )
        atomic.publish_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    preset = final
    log(f"[export] done: {preset}")
    return {"keras_hub": str(preset), "checks": checks}
