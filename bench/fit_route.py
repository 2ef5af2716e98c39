"""`model.fit` (notebook) vs `python -m care_tf.train` (CLI): same config, same kNN.

    python bench/fit_route.py                 # configs/quickstart.yaml, seed 0 (~2 x 3 min idle)
    python bench/fit_route.py --seeds 0 1     # run-to-run noise of both routes
    python bench/fit_route.py --quick         # smoke run of both routes (< 1 min)
    python bench/fit_route.py --routes fit fit_keras_sgd   # the optimizer convention alone

Routes, each trained from the same config and seed:

- `fit`: `care_tf.build_experiment(config).fit()` in this process (the notebook's route);
- `cli`: `python -m care_tf.train --config CONFIG` in a subprocess (the CLI's route);
- `fit_keras_sgd`: the `fit` route with Keras' `SGD` (lr inside the velocity) in place of
  the config's `TorchSGD`, as the notebook had before the builder (an ablation).

Every backbone, and the untrained one the routes start from (`random`), is measured with
the same kNN: k = 200, T = 0.1, the first `--bank` training images (centre crop) as memory
bank, the first `--queries` test images as queries. Prints one JSON line: kNN top-1 (%) of
every route and seed, the random-weight baseline, each route's gain over it, wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUTES = ("fit", "cli", "fit_keras_sgd")
QUICK_SET = [
    "model.base_channels=4",
    "model.transformer_kwargs={num_blocks: 1}",
    "model.hidden_dim=32",
    "model.projection_dim=16",
    "data.max_examples=256",
    "data.shuffle_buffer=256",
    "train.global_batch_size=16",
    "schedule.steps=6",
    "schedule.warmup_steps=2",
    "checkpoint.every_steps=0",
]


def probe(backbone, cfg, bank: int, queries: int, linear_epochs: int = 0) -> dict:
    """kNN top-1 (%) of `backbone`'s pooled features (the evaluate CLI's protocol) and,
    with `linear_epochs`, the linear probe's top-1 (%) trained on the bank's features."""
    from care_tf.data import make_eval_dataset
    from care_tf.evaluate import extract_features, knn_evaluate
    from care_tf.evaluate.linear import train_linear_probe_on_features

    def features(split: str, limit: int):
        ds = make_eval_dataset(
            cfg.data.source,
            split=split,
            train=False,
            image_size=cfg.model.image_size,
            batch_size=256,
        )
        return extract_features(backbone, ds.unbatch().take(limit).batch(256))

    train_x, train_y = features("train", bank)
    test_x, test_y = features("test", queries)
    out = {"knn": round(100 * knn_evaluate(train_x, train_y, test_x, test_y)["top1"], 2)}
    if linear_epochs:
        num_classes = int(max(train_y.max(), test_y.max())) + 1
        head, _ = train_linear_probe_on_features(
            train_x, train_y, num_classes=num_classes, epochs=linear_epochs
        )
        logits = head.predict(test_x, batch_size=1024, verbose=0)
        out["linear"] = round(100 * float(np.mean(logits.argmax(-1) == test_y)), 2)
    return out


def run_fit(config: str, overrides: list[str], keras_sgd: bool):
    """Trains with `build_experiment(...).fit()`; returns the trained backbone."""
    import keras

    import care_tf

    exp = care_tf.build_experiment(config, overrides=overrides)
    if keras_sgd:
        opt = keras.optimizers.SGD(exp.schedule, momentum=exp.config.optimizer.momentum)
        exp.model.compile(optimizer=opt)
        exp.model.optimizer.build(exp.model.trainable_weights)
    exp.fit(verbose=0)
    return exp.model.backbone


def run_cli(config: str, overrides: list[str], model_dir: str) -> None:
    """`python -m care_tf.train` into `model_dir` (a fresh process)."""
    cmd = [sys.executable, "-m", "care_tf.train", "--config", config, "--model_dir", model_dir]
    cmd += [a for o in overrides for a in ("--set", o)] + ["--no_progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "quickstart.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--routes", nargs="+", choices=ROUTES, default=["fit", "cli"])
    p.add_argument("--bank", type=int, default=10_000, help="kNN memory bank (train images)")
    p.add_argument("--queries", type=int, default=10_000, help="kNN queries (test images)")
    p.add_argument("--work_dir", default=None, help="CLI run directories (default: a temp dir)")
    p.add_argument(
        "--linear_epochs",
        type=int,
        default=0,
        help="also train a linear probe for this many epochs on the bank's features and "
        "report its top-1 on the queries (default 0: kNN only)",
    )
    p.add_argument("--quick", action="store_true", help="tiny model and budget (< 1 min)")
    args = p.parse_args(argv)
    if args.quick:
        args.set = QUICK_SET + args.set
        args.bank = args.queries = 256

    import care_tf
    from care_tf.model_dir import load_backbone
    from care_tf.train.config import load_config

    work = args.work_dir or tempfile.mkdtemp(prefix="fit_route_")
    out: dict = {"config": os.path.relpath(args.config, ROOT), "set": args.set, "seeds": args.seeds}
    out.update({"random": {}, **{r: {} for r in args.routes}, "seconds": {}})
    linear: dict = {"random": {}, **{r: {} for r in args.routes}}
    for seed in args.seeds:
        overrides = [*args.set, f"train.seed={seed}"]
        cfg = load_config(args.config, overrides)
        # The untrained weights every route starts from (same config and seed).
        untrained = care_tf.build_experiment(cfg).model.backbone
        scores = probe(untrained, cfg, args.bank, args.queries, args.linear_epochs)
        out["random"][seed] = scores["knn"]
        if "linear" in scores:
            linear["random"][seed] = scores["linear"]
        for route in args.routes:
            start = time.time()
            if route == "cli":
                model_dir = os.path.join(work, f"cli_seed{seed}")
                run_cli(args.config, overrides, model_dir)
                backbone = load_backbone(model_dir)
            else:
                backbone = run_fit(args.config, overrides, route == "fit_keras_sgd")
            out["seconds"][f"{route}_seed{seed}"] = round(time.time() - start, 1)
            scores = probe(backbone, cfg, args.bank, args.queries, args.linear_epochs)
            out[route][seed] = scores["knn"]
            if "linear" in scores:
                linear[route][seed] = scores["linear"]
            print(f"seed {seed} {route}: {scores} (random {out['random'][seed]})", file=sys.stderr)
    for route in args.routes:
        gains = [out[route][s] - out["random"][s] for s in args.seeds]
        out[f"{route}_gain"] = round(sum(gains) / len(gains), 2)
        out[f"{route}_min_gain"] = round(min(gains), 2)
        if args.linear_epochs:
            lin = [linear[route][s] - linear["random"][s] for s in args.seeds]
            out[f"{route}_linear_gain"] = round(sum(lin) / len(lin), 2)
            out[f"{route}_linear_min_gain"] = round(min(lin), 2)
    if args.linear_epochs:
        out["linear"] = linear
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
