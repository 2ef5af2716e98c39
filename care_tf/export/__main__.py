"""`python -m care_tf.export`: export a trained backbone for TF Serving and TFLite.

Examples:

    python -m care_tf.export --model_dir runs/quickstart --out exported
    python -m care_tf.export --model_dir runs/quickstart --out exported --format tflite \
        --quantize int8 --calibration fashion_mnist
    python -m care_tf.export --model_dir runs/care_r50 --out exported --format keras_hub

Exit status: 0 exported and verified; 1 a verification failed; 2 a wrong argument,
file or folder, or OUT locked by another export (one `error:` line; `--debug`
shows the traceback). `--help` answers without loading TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import sys

from care_tf.cli_errors import add_debug_flag, prog_name, run_cli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Defaults of care_tf.export.preprocess.SizeLimits (a test checks they agree; that
# module imports TensorFlow, which --help must not load).
MAX_IMAGE_PIXELS = 50_000_000
MAX_ASPECT_RATIO = 100.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog_name("care_tf.export"),
        description=(
            "Export a trained CARE backbone: a SavedModel for TF Serving (OUT/NAME/VERSION/) "
            "and/or TFLite (OUT/tflite/NAME/VERSION/NAME_<q>.tflite). Every export is "
            "reloaded in a fresh process and checked against Keras; a failed check exits 1."
        ),
        epilog="See docs/export.md.",
    )
    parser.add_argument(
        "--model_dir", required=True, help="training run directory (or a .keras backbone file)"
    )
    parser.add_argument("--out", required=True, help="output root directory")
    parser.add_argument(
        "--format",
        default="all",
        choices=["saved_model", "tflite", "all", "keras_hub"],
        help="what to write (default: all = saved_model + tflite); keras_hub: a keras-hub "
        "preset in OUT/keras_hub/ (with --classifier: a ResNetImageClassifier preset)",
    )
    parser.add_argument("--name", default="care", help="model name (default: care)")
    parser.add_argument(
        "--version", type=int, default=1, help="version directory, a positive integer (default: 1)"
    )
    parser.add_argument(
        "--quantize",
        default="none",
        choices=["none", "float16", "dynamic", "int8"],
        help="TFLite quantisation: none = float32; float16 weights; dynamic = int8 weights; "
        "int8 = full integer, calibrated on --calibration (default: none)",
    )
    parser.add_argument(
        "--calibration",
        metavar="SPEC",
        help="real images for int8 calibration and quantised-model checks: a data spec "
        "(fashion_mnist, folder:/path, tfds:NAME, tfrecord:/glob) or a folder of images",
    )
    parser.add_argument(
        "--calibration_samples",
        type=int,
        default=128,
        help="images used to calibrate int8 (default: 128)",
    )
    parser.add_argument(
        "--feature_maps",
        action="store_true",
        help="also output the res4 and res5 maps (pixel signatures and TFLite)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing version / TFLite file"
    )
    parser.add_argument(
        "--image_size", type=int, help="crop size, only for backbones without a fixed input size"
    )
    parser.add_argument(
        "--classifier",
        action="store_true",
        help="export MODEL_DIR/classifier.keras (care_tf.convert --linear) as a SavedModel "
        "serving top-k class ids and scores; --name defaults to care_classifier",
    )
    parser.add_argument(
        "--top_k", type=int, default=5, help="classes returned with --classifier (default: 5)"
    )
    parser.add_argument(
        "--max_image_pixels",
        type=int,
        default=MAX_IMAGE_PIXELS,
        help="served images with more pixels (height x width, read from the header of "
        f"encoded images) are refused (default: {MAX_IMAGE_PIXELS:,})",
    )
    parser.add_argument(
        "--max_aspect_ratio",
        type=float,
        default=MAX_ASPECT_RATIO,
        help="served images whose longer side exceeds this many times the shorter are "
        f"refused (default: {MAX_ASPECT_RATIO:g})",
    )
    add_debug_flag(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Parses `argv` and exports; returns the exit status (see the module docstring)."""
    return run_cli(build_parser(), export, argv)


def export(args: argparse.Namespace) -> int:
    """Runs the export described by parsed arguments; returns the exit status."""
    from care_tf.export.exporter import VerificationError, export_backbone

    try:
        if args.format == "keras_hub":
            from care_tf.export import ExportError
            from care_tf.transfer.hub_export import export_keras_hub

            if args.quantize != "none" or args.feature_maps or args.calibration:
                raise ExportError(
                    "--format keras_hub writes a keras-hub preset (float32, P2-P5 maps "
                    "included): drop --quantize, --calibration and --feature_maps."
                )

            export_keras_hub(
                args.model_dir, args.out, classifier=args.classifier, overwrite=args.overwrite
            )
            return 0
        if args.classifier:
            return _export_classifier(args)
        export_backbone(
            model_dir=args.model_dir,
            out=args.out,
            format=args.format,
            name=args.name,
            version=args.version,
            quantize=args.quantize,
            calibration=args.calibration,
            calibration_samples=args.calibration_samples,
            feature_maps=args.feature_maps,
            overwrite=args.overwrite,
            image_size=args.image_size,
            max_image_pixels=args.max_image_pixels,
            max_aspect_ratio=args.max_aspect_ratio,
        )
    except VerificationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _export_classifier(args: argparse.Namespace) -> int:
    from care_tf.export import ExportError
    from care_tf.export.classifier import export_classifier

    if args.format == "tflite" or args.quantize != "none" or args.feature_maps:
        raise ExportError(
            "--classifier exports a SavedModel only: drop --format tflite, "
            "--quantize and --feature_maps."
        )
    name = "care_classifier" if args.name == "care" else args.name
    export_classifier(args.model_dir, args.out, name, args.version, args.top_k, args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
