"""`python -m care_tf.convert`: the CARE authors' PyTorch checkpoints -> a care_tf run directory.

Examples:

    python -m care_tf.convert CARE_pretrain.pth --out runs/care_official
    python -m care_tf.convert CARE_pretrain.pth --linear CARE_linear.pth --out runs/care_official
"""

from __future__ import annotations

import argparse
import os
import sys

from care_tf.cli_errors import add_debug_flag, describe, prog_name

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog_name("care_tf.convert"),
        description=(
            "Convert the CARE authors' PyTorch checkpoints (torch.save zip format) into a run "
            "directory: backbone.keras, model.keras (online + target networks), and with "
            "--linear classifier.keras. PyTorch is not needed; the files' pickles are read "
            "with an allow-list and nothing in them is run."
        ),
        epilog="See docs/convert.md.",
    )
    parser.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="pretraining checkpoint (or a linear-evaluation one alone), .pth / .pth.tar",
    )
    parser.add_argument("--out", required=True, help="run directory to write")
    parser.add_argument(
        "--linear",
        metavar="LINEAR",
        help="the authors' linear-evaluation checkpoint: also writes classifier.keras",
    )
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="input size of backbone.keras / classifier.keras (default: the size the "
        "checkpoint was trained at, 224 for ImageNet)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty --out directory"
    )
    add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from care_tf.convert.converter import ConvertError, convert_checkpoint
    from care_tf.convert.mapping import MappingError
    from care_tf.convert.torch_zip import CheckpointError

    try:
        convert_checkpoint(
            args.checkpoint,
            args.out,
            args.linear,
            overwrite=args.overwrite,
            image_size=args.image_size,
        )
    except (ConvertError, CheckpointError, MappingError, FileNotFoundError) as err:
        if args.debug:
            raise
        message = " ".join(str(err).split())
        parser.exit(2, f"error: {message}\n")
    except Exception as err:  # anything no check anticipated: one line, not a traceback
        if args.debug:
            raise
        message, status = describe(err)
        parser.exit(status, f"error: {message}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
