"""`export_backbone`: a run's backbone -> verified SavedModel and/or TFLite files.

Layout under `out`:

    OUT/NAME/VERSION/                      SavedModel (TF Serving's model base path OUT/NAME)
    OUT/tflite/NAME/VERSION/NAME_<q>.tflite  TFLite, q in float32|float16|dynamic|int8
    OUT/tflite/NAME/VERSION/NAME_<q>.json    its metadata

The whole export holds an exclusive lock on OUT (`OUT/.care.lock`, see
care_tf/locking.py): a second export into the same OUT fails at once. Each
artefact is written aside (`OUT/NAME/.tmp-VERSION-PID`, `....tflite.PID.tmp`),
verified, and only then renamed into place, replacing an old version only after
the new one is complete.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from care_tf import atomic
from care_tf.export import calibration as calib
from care_tf.export import preprocess, saved_model, tflite, verify
from care_tf.export.source import (
    ExportError,
    ExportSource,
    load_source,
    metadata,
    read_train_state,
)
from care_tf.locking import DirLock

FORMATS = ("saved_model", "tflite", "all")
VERIFY_EXAMPLES = 4
HOLDOUT = 16  # calibration images kept out of calibration to verify quantised models


def saved_model_dir(out: str, name: str, version: int) -> str:
    """`OUT/NAME/VERSION`."""
    return os.path.join(out, name, str(version))


def tflite_path(out: str, name: str, version: int, quantize: str) -> str:
    """`OUT/tflite/NAME/VERSION/NAME_<q>.tflite`."""
    return os.path.join(out, "tflite", name, str(version), tflite.file_name(name, quantize))


def synthetic_images(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(count, height, width, 3) uint8 smooth random images (upsampled noise + detail)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 5, 5, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, [height, width], method="bicubic").numpy()
    detail = rng.normal(0, 12, (count, height, width, 3))
    return np.clip(smooth + detail, 0, 255).astype(np.uint8)


def keras_outputs(source: ExportSource, normalized: np.ndarray, maps: bool) -> dict:
    """The backbone's outputs (inference mode) on normalised inputs, as numpy."""
    out = source.backbone(tf.constant(normalized), training=False)
    result = {"expected_embedding": out["pooled"].numpy()}
    if maps:
        result["expected_res4"] = out["res4"].numpy()
        result["expected_res5"] = out["res5"].numpy()
    return result


def run_verification(kind: str, path: str, data: dict, quantize: str = "none") -> dict:
    """Runs care_tf/export/verify.py in a fresh Python process; returns its JSON report."""
    with tempfile.TemporaryDirectory() as tmp:
        data_path = os.path.join(tmp, "reference.npz")
        report_path = os.path.join(tmp, "report.json")
        np.savez(data_path, **data)
        cmd = [sys.executable, verify.__file__, "--kind", kind, "--path", path]
        cmd += ["--data", data_path, "--report", report_path, "--quantize", quantize]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if not os.path.isfile(report_path):
            raise ExportError(
                f"Verification of {path} crashed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
            )
        with open(report_path) as f:
            report = json.load(f)
    report["returncode"] = proc.returncode
    return report


def format_check(check: dict) -> str:
    """One line per check: status, name, metric."""
    status = "ok  " if check["ok"] else "FAIL"
    if check["metric"] == "check":
        return f"  {status} {check['name']}: {check['value']}"
    text = f"  {status} {check['name']}: {check['metric']} {check['value']:.3g}"
    if check["metric"] == "mean_cosine":
        text += f" (min {check['min_cosine']:.4f}, max_rel_error {check['max_rel_error']:.3g})"
        return text + f" >= {check['tolerance']}"
    if check.get("max_abs_error") is not None:
        text += f" (max_abs_error {check['max_abs_error']:.3g})"
    return text + f" <= {check['tolerance']:g}"


class VerificationError(ExportError):
    """The written export does not reproduce the Keras model (the CLI exits 1)."""


def _prepare_destination(path: str, overwrite: bool, what: str) -> None:
    if os.path.exists(path):
        if not overwrite:
            raise ExportError(
                f"{what} {path} already exists: pass --overwrite to replace it, or choose "
                "another --version."
            )


def _check_out(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"--out {out!r} is a file; give a directory (created if missing).")


def export_backbone(
    model_dir: str,
    out: str,
    format: str = "all",
    name: str = "care",
    version: int = 1,
    quantize: str = "none",
    calibration: str | None = None,
    calibration_samples: int = 128,
    feature_maps: bool = False,
    overwrite: bool = False,
    image_size: int | None = None,
    max_image_pixels: int = preprocess.DEFAULT_LIMITS.max_pixels,
    max_aspect_ratio: float = preprocess.DEFAULT_LIMITS.max_aspect_ratio,
    log: Callable[[str], None] = print,
) -> dict:
    """Exports a run's backbone and verifies every file in a fresh process.

    Args:
        model_dir: str. Training run directory (or a `.keras` backbone file).
        out: str. Output root (see the module docstring for the layout).
        format: str. "saved_model", "tflite" or "all".
        name: str. Model name (TF Serving's model name). Defaults to "care".
        version: int. Version directory, >= 1.
        quantize: str. TFLite weights/activations: "none" (float32), "float16",
            "dynamic" or "int8".
        calibration: str. Data spec or image folder; needed for int8, also used
            to verify quantised models on real images.
        calibration_samples: int. Images used for int8 calibration.
        feature_maps: bool. Also output res4 and res5 (pixel signatures, TFLite).
        overwrite: bool. Replace an existing version directory / TFLite file.
        image_size: int. Only for backbones with unknown input size.
        max_image_pixels: int. Served images with more pixels (height x width, read
            from the header for encoded images) are refused. Defaults to 50 MP.
        max_aspect_ratio: float. Served images more elongated than this are refused.
            Defaults to 100.
        log: where progress lines go.

    Returns:
        {"saved_model": path, "tflite": path, "checks": {...}} for what was written.

    Raises:
        ExportError: bad arguments or input; VerificationError (a subclass) for a
            failed verification; care_tf.locking.LockError when another export
            holds `out`.
    """
    if format not in FORMATS:
        raise ExportError(f"--format must be one of {FORMATS}; got {format!r}.")
    if quantize not in tflite.QUANTIZATIONS:
        raise ExportError(f"--quantize must be one of {tflite.QUANTIZATIONS}; got {quantize!r}.")
    if format == "saved_model" and quantize != "none":
        raise ExportError("--quantize applies to TFLite; use --format tflite or all.")
    if not isinstance(version, int) or version < 1:
        raise ExportError(f"--version must be a positive integer; got {version!r}.")
    if not name or os.sep in name or name.startswith("."):
        raise ExportError(f"--name must be a plain directory name; got {name!r}.")
    if not isinstance(calibration_samples, int) or calibration_samples < 1:
        raise ExportError(
            f"--calibration_samples must be a positive number of images; got "
            f"{calibration_samples!r} (default 128; more calibrates int8 better)."
        )
    if quantize == "int8" and not calibration:
        raise ExportError(
            "--quantize int8 needs real images to calibrate on: pass --calibration SPEC "
            "(e.g. fashion_mnist, folder:/path/to/images)."
        )
    try:
        limits = preprocess.SizeLimits(int(max_image_pixels), float(max_aspect_ratio))
    except ValueError as err:
        raise ExportError(f"--max_image_pixels / --max_aspect_ratio: {err}") from None
    _check_out(out)
    with DirLock(
        out, "export directory", hint="Wait for it to finish, or export to another --out."
    ):
        return _export_locked(
            model_dir, out, format, name, version, quantize, calibration,
            calibration_samples, feature_maps, overwrite, image_size, limits, log,
        )  # fmt: skip


def _export_locked(
    model_dir, out, format, name, version, quantize, calibration,
    calibration_samples, feature_maps, overwrite, image_size, limits, log,
) -> dict:  # fmt: skip
    """`export_backbone` once `out` is locked and the arguments are checked."""
    want_sm = format in ("saved_model", "all")
    want_tfl = format in ("tflite", "all")
    sm_path = saved_model_dir(out, name, version)
    tfl_path = tflite_path(out, name, version, quantize)
    if want_sm:
        _prepare_destination(sm_path, overwrite, "Version directory")
    if want_tfl:
        _prepare_destination(tfl_path, overwrite, "TFLite file")

    started = time.time()
    log(f"[export] loading backbone from {model_dir}")
    source = load_source(model_dir, image_size=image_size)
    source.limits = limits
    size = source.image_size
    log(
        f"[export] {source.backbone.name}: {source.backbone.count_params():,} parameters, "
        f"{size}x{size} input, embedding {source.output_shapes['embedding'][0]}, "
        f"training step {source.step}"
    )
    warn_if_incomplete(source, log)
    result: dict = {"checks": {}}

    real = None
    if calibration:
        count = calibration_samples + HOLDOUT if quantize == "int8" else HOLDOUT
        log(f"[export] reading {count} calibration images from {calibration}")
        real = calib.calibration_crops(calibration, size, count)
        log(f"[export] {len(real)} images cropped to {size}x{size}")

    if want_sm:
        os.makedirs(os.path.dirname(sm_path), exist_ok=True)
        # Leftovers of killed exports (we hold the lock, so none is in progress).
        atomic.remove_stale(os.path.dirname(sm_path), f".tmp-{version}-")
        tmp = os.path.join(os.path.dirname(sm_path), f".tmp-{version}-{os.getpid()}")
        log(f"[export] writing SavedModel to {sm_path}")
        saved_model.write_saved_model(source, tmp, feature_maps)
        raw = synthetic_images(VERIFY_EXAMPLES, size + 13, size + 5)
        gray = raw[..., :1]
        data = {"raw": raw, "gray": gray}
        data.update(keras_outputs(source, preprocess.preprocess(raw, size).numpy(), feature_maps))
        gray_ref = keras_outputs(source, preprocess.preprocess(gray, size).numpy(), False)
        data["expected_gray_embedding"] = gray_ref["expected_embedding"]
        report = _verify(log, "saved_model", tmp, data, "none")
        atomic.publish_dir(tmp, sm_path)
        result["saved_model"] = sm_path
        result["checks"]["saved_model"] = report

    if want_tfl:
        os.makedirs(os.path.dirname(tfl_path), exist_ok=True)
        stale = os.path.basename(tfl_path) + "."
        atomic.remove_stale(os.path.dirname(tfl_path), stale)
        label = "float32" if quantize == "none" else quantize
        cal = None
        if quantize == "int8":
            held = min(HOLDOUT, max(1, len(real) // 4))
            cal, test = real[:-held], real[-held:]
            log(f"[export] TFLite {label}: calibrating on {len(cal)} images")
        elif real is not None:
            test = real[:HOLDOUT]
        else:
            test = preprocess.crop_pixels(
                synthetic_images(VERIFY_EXAMPLES, size + 13, size + 5), size
            ).numpy()
            test = np.round(test).astype(np.uint8)
            if quantize == "dynamic":
                log("[export] note: no --calibration, verifying on synthetic images")
        log(f"[export] converting to TFLite {label}: {tfl_path}")
        tmp = f"{tfl_path}.{os.getpid()}.tmp"
        nbytes = tflite.write_tflite(source, tmp, quantize, cal, feature_maps)
        data = {"pixels": test}
        data.update(keras_outputs(source, preprocess.normalize(test).numpy(), feature_maps))
        report = _verify(log, "tflite", tmp, data, quantize)
        meta = metadata(
            source,
            format="tflite",
            quantize=label,
            file=os.path.basename(tfl_path),
            bytes=nbytes,
            calibration=calibration if quantize == "int8" else None,
            calibration_images=len(cal) if cal is not None else 0,
            signature={
                "name": tflite.SIGNATURE,
                "inputs": {
                    "images": f"{'uint8 quantised' if quantize == 'int8' else 'float32'} "
                    f"(B, {size}, {size}, 3) pixels 0..255, already resized and centre-cropped"
                },
                "outputs": {"embedding": f"float32 (B, {source.output_shapes['embedding'][0]})"},
            },
            input_contract=tflite.input_contract(size, quantize),
            verification=report["checks"],
        )
        atomic.publish_dir(tmp, tfl_path)
        atomic.write_json(os.path.splitext(tfl_path)[0] + ".json", meta)
        log(f"[export] TFLite {label}: {nbytes / 1e6:.2f} MB")
        result["tflite"] = tfl_path
        result["checks"]["tflite"] = report

    log(f"[export] done in {time.time() - started:.0f}s")
    return result


def warn_if_incomplete(source: ExportSource, log: Callable[[str], None]) -> bool:
    """Says on the console when the run stopped before its schedule ended (train_state.json
    `"complete": false`, e.g. `--max_steps`); returns whether it did."""
    run = source.model_dir
    run = os.path.dirname(run) if run.endswith(".keras") else run
    state = read_train_state(run)
    if state.get("complete") is not False:
        return False
    total = state.get("total_steps")
    of = f" of {total}" if isinstance(total, int) else ""
    log(
        f"[export] warning: this run stopped at step {state.get('step', '?')}{of} before its "
        "schedule ended (--max_steps?): the backbone is only partly trained. Resume it "
        "(python -m care_tf.train --model_dir ... --resume) to finish; exporting anyway "
        '(care_export.json records "complete": false).'
    )
    return True


def _verify(log, kind: str, path: str, data: dict, quantize: str) -> dict:
    log(f"[export] verifying {kind} in a fresh process")
    report = run_verification(kind, path, data, quantize)
    for check in report["checks"]:
        log(format_check(check))
    if not report["ok"]:
        failed = [c["name"] for c in report["checks"] if not c["ok"]]
        raise VerificationError(
            f"Verification of the {kind} export failed ({', '.join(failed)}); "
            f"the unverified export is left at {path}."
        )
    return report
