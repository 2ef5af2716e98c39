"""Command line of CARE pre-training.

    python -m care_tf.train --config quickstart --model_dir runs/quickstart
    python -m care_tf.train --list_configs
    python -m care_tf.train --config configs/care_r50_100ep.yaml --strategy mirrored \
        --model_dir runs/care_r50_100ep [--set optimizer.base_lr=0.1] [--max_steps N] [--resume]

Exit codes: 0 done (or stopped at --max_steps), 2 bad config / setup / argument /
file (one `error:` line naming it; `--debug` shows the traceback), 3 non-finite
loss (the last good checkpoint is kept), 130 interrupted. The run directory is
locked for the whole run: a second training into it fails at once.
`--help` answers without loading TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing

from care_tf.cli_errors import add_debug_flag, prog_name, run_cli
from care_tf.train.config import ConfigError, TrainConfig, load_config, read_yaml
from care_tf.train.config_names import config_dir, list_configs

EXIT_CONFIG = 2
EXIT_NAN = 3
# The names of care_tf.train.strategy.STRATEGIES (which imports TensorFlow): the
# config's own field lists them too, and a test checks that the three agree.
STRATEGIES = typing.get_args(typing.get_type_hints(TrainConfig)["strategy"])


class ListConfigs(argparse.Action):
    """`--list_configs`: prints each shipped config's name and file, then exits 0."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        folder = config_dir()
        names = list_configs()
        if not names:
            parser.exit(2, "error: no shipped configs found (a broken install?).\n")
        width = max(len(n) for n in names)
        lines = [f"{name:<{width}}  {folder / (name + '.yaml')}\n" for name in names]
        sys.stdout.write("".join(lines))
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog_name("care_tf.train"),
        description="CARE self-supervised pre-training (NeurIPS 2021) with Keras 3 / TensorFlow.",
    )
    p.add_argument(
        "--config",
        help="experiment config: a YAML file, or the name of a shipped one (quickstart, "
        "care_r50_100ep, ...; see --list_configs); with --resume it defaults to "
        "MODEL_DIR/config.yaml",
    )
    p.add_argument(
        "--list_configs",
        action=ListConfigs,
        help="print the names of the shipped configs (with their files) and exit",
    )
    p.add_argument(
        "--model_dir",
        required=True,
        help="run directory (checkpoints, logs, config.yaml, model.keras, backbone.keras)",
    )
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=None,
        help="distribution strategy (default: the config's train.strategy, 'auto')",
    )
    p.add_argument("--tpu", default=None, help="TPU name or grpc://address for --strategy tpu")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optimizer.base_lr=0.1 (repeatable)",
    )
    p.add_argument(
        "--max_steps",
        type=int,
        default=None,
        help="stop at this global step (smoke runs; schedules still span the run)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --model_dir"
    )
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_debug_flag(p)
    return p


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Parses `argv` and trains; returns the exit status (see the module docstring)."""
    return run_cli(build_parser(), train, argv)


def train(args: argparse.Namespace) -> int:
    """Runs the training described by parsed arguments; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    config_path = args.config
    if config_path is None:
        saved = os.path.join(args.model_dir, "config.yaml")
        if args.resume and os.path.isfile(saved):
            config_path = saved
        else:
            _error("--config is required (or --resume with a MODEL_DIR holding config.yaml).")
            return EXIT_CONFIG
    if os.path.exists(args.model_dir) and not os.path.isdir(args.model_dir):
        _error(f"--model_dir {args.model_dir!r} is a file; give a directory (created if missing).")
        return EXIT_CONFIG
    overrides = list(args.set)
    if args.strategy:
        overrides.append(f"train.strategy={args.strategy}")
    try:
        read_yaml(config_path)
        cfg = load_config(config_path, overrides)
    except ConfigError as e:
        _error(str(e))
        return EXIT_CONFIG
    if args.max_steps is not None and args.max_steps < 1:
        _error(f"--max_steps must be >= 1; got {args.max_steps}.")
        return EXIT_CONFIG

    # Devices first: splitting the CPU must precede TensorFlow's runtime start.
    from care_tf.train import strategy as strategies

    try:
        name = strategies.resolve_name(cfg.train.strategy)
        strategies.configure_devices(name, cfg.train.num_cpu_replicas)
        strategy = strategies.make_strategy(
            name, tpu=args.tpu, num_cpu_replicas=cfg.train.num_cpu_replicas
        )
    except strategies.StrategyError as e:
        _error(str(e))
        return EXIT_CONFIG

    from care_tf.locking import DirLock
    from care_tf.train import loop

    # One training per run directory (the chief holds the lock; other workers of a
    # multi-worker run write only under checkpoints/workers/).
    lock = DirLock(
        args.model_dir,
        "training run directory",
        hint="Wait for it to finish, or train into another --model_dir.",
    )
    if strategies.worker_info(strategy).is_chief:
        lock.acquire()
    try:
        result = loop.run(
            cfg,
            strategy,
            args.model_dir,
            max_steps=args.max_steps,
            resume=args.resume,
            progress=not args.no_progress,
        )
    except loop.NonFiniteLossError as e:
        _error(str(e))
        return EXIT_NAN
    except KeyboardInterrupt:
        _error("interrupted; rerun with --resume to continue from the last checkpoint.")
        return 130
    finally:
        lock.release()
    status = "complete" if result.complete else f"stopped at --max_steps {args.max_steps}"
    loss = result.logs.get("loss")
    loss = f"loss {loss:.4f}" if loss is not None else "loss of the last step not recorded"
    print(
        f"Training {status}: step {result.step}/{result.total_steps}, epoch {result.epoch}, "
        f"{loss}. Outputs in {args.model_dir}",
        file=sys.stderr,
    )
    return 0
