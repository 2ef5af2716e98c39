"""Command line of CARE pre-training.

    python -m care_tf.train --config configs/quickstart.yaml --model_dir runs/quickstart
    python -m care_tf.train --config configs/care_r50_100ep.yaml --strategy mirrored \
        --model_dir runs/care_r50_100ep [--set optimizer.base_lr=0.1] [--max_steps N] [--resume]

Exit codes: 0 done (or stopped at --max_steps), 2 bad config / setup (the
message names the key), 3 non-finite loss (the last good checkpoint is kept),
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys

from care_tf.train.config import ConfigError, load_config, read_yaml
from care_tf.train.strategy import STRATEGIES

EXIT_CONFIG = 2
EXIT_NAN = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m care_tf.train",
        description="CARE self-supervised pre-training (NeurIPS 2021) with Keras 3 / TensorFlow.",
    )
    p.add_argument(
        "--config",
        help="YAML experiment config (configs/*.yaml); with --resume "
        "it defaults to MODEL_DIR/config.yaml",
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
    return p


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    config_path = args.config
    if config_path is None:
        saved = os.path.join(args.model_dir, "config.yaml")
        if args.resume and os.path.isfile(saved):
            config_path = saved
        else:
            _error("--config is required (or --resume with a MODEL_DIR holding config.yaml).")
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

    from care_tf.train import loop

    try:
        result = loop.run(
            cfg,
            strategy,
            args.model_dir,
            max_steps=args.max_steps,
            resume=args.resume,
            progress=not args.no_progress,
        )
    except (ConfigError, strategies.StrategyError) as e:
        _error(str(e))
        return EXIT_CONFIG
    except loop.NonFiniteLossError as e:
        _error(str(e))
        return EXIT_NAN
    except KeyboardInterrupt:
        _error("interrupted; rerun with --resume to continue from the last checkpoint.")
        return 130
    status = "complete" if result.complete else f"stopped at --max_steps {args.max_steps}"
    print(
        f"Training {status}: step {result.step}/{result.total_steps}, epoch {result.epoch}, "
        f"loss {result.logs.get('loss', float('nan')):.4f}. Outputs in {args.model_dir}",
        file=sys.stderr,
    )
    return 0
