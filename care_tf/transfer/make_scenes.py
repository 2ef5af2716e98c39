"""Command line: `python -m care_tf.transfer.make_scenes --out DIR` (see scenes.py).

    python -m care_tf.transfer.make_scenes --out data/scenes --num_train 2000 --num_test 500

Writes DIR/train/{images/,instances.json} and DIR/test/{...} in COCO format, read by
`python -m care_tf.evaluate detect|segment --dataset coco:DIR`. A wrong argument ends in
one `error:` line and nothing is written.
"""

from __future__ import annotations

import argparse
import sys

from care_tf.cli_errors import UsageError, add_debug_flag, prog_name, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog_name("care_tf.transfer.make_scenes"),
        description="Build a deterministic multi-object scene set from Fashion-MNIST "
        "(exact boxes and silhouette masks) in COCO format.",
    )
    add_debug_flag(parser)
    parser.add_argument("--out", required=True, help="output folder (replaced if it exists)")
    parser.add_argument("--num_train", type=int, default=2000, help="train scenes (default: 2000)")
    parser.add_argument("--num_test", type=int, default=500, help="test scenes (default: 500)")
    parser.add_argument("--canvas", type=int, default=128, help="scene side in px (default: 128)")
    parser.add_argument("--min_objects", type=int, default=2, help="garments per scene, min (2)")
    parser.add_argument("--max_objects", type=int, default=5, help="garments per scene, max (5)")
    parser.add_argument("--min_size", type=int, default=20, help="garment side, min px (20)")
    parser.add_argument("--max_size", type=int, default=56, help="garment side, max px (56)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument(
        "--data_dir", default=None, help="Fashion-MNIST IDX folder (default: built-in)"
    )
    return parser


def run(args) -> int:
    from care_tf.transfer.scenes import SceneSpec, write_scenes

    spec = SceneSpec(
        canvas=args.canvas,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        min_size=args.min_size,
        max_size=args.max_size,
        seed=args.seed,
    )
    try:
        spec.check()
    except ValueError as e:
        raise UsageError(f"scene arguments: {e}") from e
    if args.num_train < 0 or args.num_test < 0 or not (args.num_train or args.num_test):
        raise UsageError("--num_train and --num_test must be >= 0 and not both 0.")
    try:
        written = write_scenes(
            args.out, spec, args.num_train, args.num_test, data_dir=args.data_dir
        )
    except FileNotFoundError as e:
        raise UsageError(f"Fashion-MNIST: {e}") from e
    for split, path in written.items():
        print(f"{split}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
