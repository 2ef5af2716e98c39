"""The transfer table: four starting points fine-tuned on each protocol (docs/results.md).

    python bench/transfer.py --work_dir runs/transfer              # the table (2-3 hours)
    python bench/transfer.py --quick                               # smoke run (a few minutes)
    python bench/transfer.py --work_dir runs/transfer --protocols detect segment

Starting points, all the same architecture (ResNet-18, ImageNet stem, width 64, 64 px:
what keras-hub's ResNetBackbone takes, so the detection and segmentation protocols can
run on it; the Fashion-MNIST images are upscaled to 64 px):

- `random`: the backbone as `care_tf.train` builds it, untrained (seeded);
- `byol`, `care`: `python -m care_tf.train` with configs/quickstart_byol.yaml and
  configs/quickstart.yaml (same budget `--pretrain_steps` and seed; only the T-stream
  differs), with `model.stem=imagenet model.base_channels=64 model.image_size=IMAGE_SIZE`;
- `supervised`: the random backbone and a linear layer trained with cross-entropy on
  every Fashion-MNIST training label for the same number of steps and batch size as
  the pretraining (`care_tf.transfer.finetune.finetune`: random resized crop + flip).

Protocols (library functions, same fine-tuning budget and seed for every start):

- `finetune_1`, `finetune_10`: fine-tuning with 1% / 10% of the Fashion-MNIST labels
  (`care_tf.transfer.finetune`), top-1 (%) on the test split;
- `detect`: RetinaNet on the Fashion-MNIST scenes (`care_tf.transfer.detect`), box AP (%);
- `segment`: DeepLabV3+ on the same scenes (`care_tf.transfer.segment`), mIoU (%).

Pretraining seed k gives the start of seed k and is also its fine-tuning seed (label
subset, head initialisation, shuffling). Runs are kept in `--work_dir` (`care_seedk`,
`byol_seedk`, `random_seedk`, `supervised_seedk`, `scenes_N_M/`) and a run whose
`train_state.json` says complete is reused (refused if trained for other steps). Every
score is kept too (`scores/PROTOCOL-START-K.json` with the budget it depends on) and
reused under the same budget, so an interrupted run resumes where it stopped. Every start
is built first, then each protocol in `--protocols` order runs on every seed and start.
Prints one JSON line: `table` {protocol: {start: {seed: metric}}}, `metrics` (what each
protocol's number is), the budget and the wall seconds of every stage.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from study_fashion_mnist import study_backbone  # noqa: E402  (bench/ is not a package)

STARTS = ("random", "byol", "care", "supervised")
PROTOCOLS = ("finetune_1", "finetune_10", "detect", "segment")
METRICS = {
    "finetune_1": "top-1 (%), 1% of the labels",
    "finetune_10": "top-1 (%), 10% of the labels",
    "detect": "box AP (%), IoU 0.50:0.95",
    "segment": "mIoU (%), background included",
}
CONFIGS = {"care": "configs/quickstart.yaml", "byol": "configs/quickstart_byol.yaml"}
# What keras-hub's ResNetBackbone can express (docs/transfer.md), at a small-image size.
IMAGE_SIZE = 64
MODEL_SET = ["model.stem=imagenet", "model.base_channels=64", f"model.image_size={IMAGE_SIZE}"]
QUICK_SET = [
    "model.transformer_kwargs={num_blocks: 1}",
    "model.hidden_dim=32",
    "model.projection_dim=16",
    "data.max_examples=256",
    "data.shuffle_buffer=256",
    "train.global_batch_size=16",
    "checkpoint.every_steps=0",
]
QUICK = {
    "pretrain_steps": 2,
    "seeds": [0],
    "ft_epochs": 1,
    "ft_steps": 2,
    "ft_max_steps": 4,
    "ft_batch": 32,
    "eval_limit": 128,
    "scenes": (16, 8),
    "detect_epochs": 1,
    "segment_epochs": 1,
    "task_steps": 2,
    "task_batch": 4,
    "task_image_size": 64,
}
# The table in docs/results.md (about 2 h 15 min on 2 cores): 3 pretraining epochs of the
# 16,384-image quickstart subset; the fine-tuning recipe's epochs capped at 80 steps; 1000 /
# 250 scenes at 96 px, 3 detection epochs and 1 segmentation epoch.
FULL = {
    "pretrain_steps": 768,
    "seeds": [0, 1],
    "ft_epochs": None,
    "ft_steps": None,
    "ft_max_steps": 80,
    "ft_batch": 256,
    "eval_limit": None,
    "scenes": (1000, 250),
    "detect_epochs": 3,
    "segment_epochs": 1,
    "task_steps": None,
    "task_batch": 8,
    "task_image_size": 96,
}


def pretrain_set(args, seed: int) -> list[str]:
    """`--set` overrides of every start's architecture and (for CARE / BYOL) budget."""
    steps = args.pretrain_steps
    extra = QUICK_SET if args.quick else []
    return (
        MODEL_SET
        + extra
        + [
            f"schedule.steps={steps}",
            f"schedule.warmup_steps={max(1, steps // 8)}",
            f"train.seed={seed}",
        ]
    )


def train_state(model_dir: str) -> dict:
    """`model_dir/train_state.json`, or {} when missing or unreadable."""
    try:
        with open(os.path.join(model_dir, "train_state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def complete(model_dir: str) -> bool:
    """True when `model_dir/train_state.json` says the run finished."""
    return bool(train_state(model_dir).get("complete"))


def cell_budget(protocol: str, args) -> dict:
    """The budget settings a protocol's score depends on (a cached score is reused only
    under the same ones)."""
    keys = ["pretrain_steps"]
    if protocol.startswith("finetune_"):
        keys += ["ft_epochs", "ft_steps", "ft_max_steps", "ft_batch", "eval_limit"]
    else:
        keys += [f"{protocol}_epochs", "scenes", "task_steps", "task_batch", "task_image_size"]
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items() if k in keys}


def cell_path(work_dir: str, cell: str) -> str:
    return os.path.join(work_dir, "scores", cell.replace("/", "-") + ".json")


def load_cell(work_dir: str, cell: str, args) -> float | None:
    """The score of `cell` (protocol/start/seed) kept in work_dir under this budget, or None."""
    try:
        with open(cell_path(work_dir, cell)) as f:
            kept = json.load(f)
    except (OSError, ValueError):
        return None
    same = kept.get("budget") == cell_budget(cell.split("/")[0], args)
    return kept.get("score") if same else None


def save_cell(work_dir: str, cell: str, args, score: float, seconds: float) -> None:
    """Keeps one table cell, so an interrupted or split run (one seed per process) resumes."""
    from care_tf import atomic

    record = {"score": score, "seconds": seconds, "budget": cell_budget(cell.split("/")[0], args)}
    os.makedirs(os.path.dirname(cell_path(work_dir, cell)), exist_ok=True)
    atomic.write_json(cell_path(work_dir, cell), record)


def write_state(model_dir: str, state: dict) -> None:
    """Marks a baseline run complete (the same file `care_tf.train` writes)."""
    from care_tf import atomic

    atomic.write_json(os.path.join(model_dir, "train_state.json"), {**state, "complete": True})


def pretrain(method: str, model_dir: str, args, seed: int) -> None:
    """`python -m care_tf.train` for `method` (care / byol) into `model_dir`."""
    cmd = [sys.executable, "-m", "care_tf.train", "--config", CONFIGS[method]]
    cmd += ["--model_dir", model_dir, "--no_progress", "--resume"]  # an interrupted run goes on
    cmd += [a for o in pretrain_set(args, seed) for a in ("--set", o)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)


def make_random(model_dir: str, args, seed: int) -> None:
    """Saves the untrained backbone `care_tf.train` would build for seed `seed`."""
    import keras

    keras.utils.set_random_seed(seed)
    backbone = study_backbone(CONFIGS["care"], pretrain_set(args, seed))
    os.makedirs(model_dir, exist_ok=True)
    backbone.save(os.path.join(model_dir, "backbone.keras"))  # our ResNet, as keras-hub needs
    write_state(model_dir, {"step": 0, "seed": seed})


def make_supervised(model_dir: str, random_dir: str, args, seed: int) -> None:
    """The random start trained on every label, with the pretraining's steps and batch."""
    from care_tf.data import load_source, make_eval_dataset
    from care_tf.model_dir import load_feature_model
    from care_tf.train.config import load_config
    from care_tf.transfer.finetune import BASE_LR, finetune

    cfg = load_config(os.path.join(ROOT, CONFIGS["care"]), pretrain_set(args, seed))
    batch = cfg.train.global_batch_size
    source = load_source("fashion_mnist", "train")
    data = make_eval_dataset(
        source, split="train", train=True, image_size=IMAGE_SIZE, batch_size=batch, seed=seed
    )
    backbone = load_feature_model(random_dir)
    classifier, history = finetune(
        backbone,
        data,
        num_classes=source.num_classes,
        steps_per_epoch=args.pretrain_steps,
        epochs=1,
        learning_rate=BASE_LR * batch / 256,
        seed=seed,
    )
    os.makedirs(model_dir, exist_ok=True)
    backbone.save(os.path.join(model_dir, "backbone.keras"))
    write_state(
        model_dir,
        {"step": args.pretrain_steps, "batch_size": batch, "seed": seed, "loss": history["loss"]},
    )


def build_start(start: str, work_dir: str, args, seed: int) -> tuple[str, float | None]:
    """The run directory of `start` with seed `seed` and its build's wall seconds (None:
    reused, its train_state.json says complete)."""
    model_dir = os.path.join(work_dir, f"{start}_seed{seed}")
    t0 = time.time()
    if complete(model_dir):
        steps = train_state(model_dir).get("step")
        if start != "random" and steps != args.pretrain_steps:
            sys.exit(
                f"error: {model_dir} was trained for {steps} steps, not --pretrain_steps "
                f"{args.pretrain_steps}; use another --work_dir or the same budget."
            )
        return model_dir, None
    if start in CONFIGS:
        pretrain(start, model_dir, args, seed)
    elif start == "random":
        make_random(model_dir, args, seed)
    else:
        random_dir, _ = build_start("random", work_dir, args, seed)
        make_supervised(model_dir, random_dir, args, seed)
    return model_dir, round(time.time() - t0, 1)


def finetune_top1(model_dir: str, fraction: float, args, seed: int) -> float:
    """Top-1 (%) after fine-tuning on `fraction` of the labels (the `finetune` protocol)."""
    from care_tf.data import load_source, make_eval_dataset
    from care_tf.evaluate.linear import predict_scores
    from care_tf.model_dir import load_feature_model
    from care_tf.transfer.finetune import (
        BASE_LR,
        finetune,
        label_subset,
        recipe_epochs,
        split_labels,
        subset_source,
    )

    source = load_source("fashion_mnist", "train")
    ids = label_subset(split_labels(source), fraction, seed)
    batch = min(args.ft_batch, len(ids))
    steps = len(ids) // batch
    if args.ft_steps:
        steps = min(steps, args.ft_steps)
    epochs = args.ft_epochs or recipe_epochs(fraction)
    if args.ft_max_steps:  # the recipe's epochs, as many as fit the cap (at least one)
        epochs = max(1, min(epochs, args.ft_max_steps // steps))
    train = make_eval_dataset(
        subset_source(source, ids),
        split="train",
        train=True,
        image_size=IMAGE_SIZE,
        batch_size=batch,
        seed=seed,
    )
    classifier, _ = finetune(
        load_feature_model(model_dir),
        train,
        num_classes=source.num_classes,
        steps_per_epoch=steps,
        epochs=epochs,
        learning_rate=BASE_LR * batch / 256,
        seed=seed,
    )
    test = make_eval_dataset(
        "fashion_mnist", split="test", train=False, image_size=IMAGE_SIZE, batch_size=256
    )
    if args.eval_limit:
        test = test.unbatch().take(args.eval_limit).batch(256)
    scores, labels = predict_scores(classifier, test)
    return round(100 * float(np.mean(scores.argmax(-1) == labels)), 2)


def scenes(work_dir: str, args):
    """(train, test) `CocoSet`s of the Fashion-MNIST scenes, written once to work_dir."""
    from care_tf.transfer.coco import load_coco, split_files
    from care_tf.transfer.scenes import SceneSpec, write_scenes

    root = os.path.join(work_dir, f"scenes_{args.scenes[0]}_{args.scenes[1]}")
    if not os.path.isdir(root):
        write_scenes(root, SceneSpec(), *args.scenes)
    return tuple(
        load_coco(*split_files(root, split), require_masks=True) for split in ("train", "test")
    )


def task_score(protocol: str, model_dir: str, data, args, seed: int) -> float:
    """Box AP (%) or mIoU (%) of the run fine-tuned on the scenes."""
    from care_tf.transfer.detect import evaluate_detection
    from care_tf.transfer.keras_hub_bridge import hub_backbone
    from care_tf.transfer.segment import evaluate_segmentation

    evaluate = evaluate_detection if protocol == "detect" else evaluate_segmentation
    # A training run's backbone.keras is a plain extractor the bridge cannot map; its
    # model.keras holds our ResNet (baselines save the ResNet as backbone.keras).
    full = os.path.join(model_dir, "model.keras")
    source = full if os.path.isfile(full) else model_dir
    result = evaluate(
        hub_backbone(source, image_shape=(None, None, 3)),
        *data,
        image_size=args.task_image_size,
        batch_size=args.task_batch,
        epochs=args.detect_epochs if protocol == "detect" else args.segment_epochs,
        steps_per_epoch=args.task_steps,
        seed=seed,
    )
    return round(100 * max(0.0, result["ap" if protocol == "detect" else "miou"]), 2)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny budget and limits")
    p.add_argument("--work_dir", default=None, help="runs kept for reuse (default: a temp dir)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="pretraining seeds")
    p.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS))
    p.add_argument("--starts", nargs="+", choices=STARTS, default=list(STARTS))
    p.add_argument("--pretrain_steps", type=int, default=None, help="CARE / BYOL / supervised")
    p.add_argument("--ft_epochs", type=int, default=None, help="finetune: epochs (recipe)")
    p.add_argument("--ft_steps", type=int, default=None, help="finetune: max steps / epoch")
    p.add_argument(
        "--ft_max_steps",
        type=int,
        default=None,
        help="finetune: cap on all steps, fewer epochs (0: no cap, the recipe's epochs)",
    )
    p.add_argument("--ft_batch", type=int, default=None, help="finetune: largest batch")
    p.add_argument("--eval_limit", type=int, default=None, help="finetune: test images")
    p.add_argument("--scenes", type=int, nargs=2, default=None, metavar=("TRAIN", "TEST"))
    p.add_argument("--detect_epochs", type=int, default=None, help="detect: epochs")
    p.add_argument("--segment_epochs", type=int, default=None, help="segment: epochs")
    p.add_argument("--task_steps", type=int, default=None, help="detect / segment steps/epoch")
    p.add_argument("--task_batch", type=int, default=None, help="detect / segment batch")
    p.add_argument("--task_image_size", type=int, default=None, help="multiple of 32")
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.ft_max_steps is not None and args.ft_max_steps < 0:
        parser.error(f"--ft_max_steps must be >= 0 (0: no cap); got {args.ft_max_steps}.")
    positive = ("pretrain_steps", "ft_epochs", "ft_steps", "ft_batch", "eval_limit")
    for key in positive + ("detect_epochs", "segment_epochs", "task_steps", "task_batch"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            parser.error(f"--{key} must be >= 1; got {getattr(args, key)}.")
    if args.task_image_size < 32 or args.task_image_size % 32:
        parser.error(f"--task_image_size must be a multiple of 32; got {args.task_image_size}.")
    if min(args.scenes) < 1:
        parser.error(f"--scenes needs at least one train and one test scene; got {args.scenes}.")
    if min(args.seeds) < 0:
        parser.error(f"--seeds must be >= 0; got {args.seeds}.")
    start_time = time.time()
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="transfer_")
    work_dir = os.path.abspath(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    timings: dict[str, float] = {}
    reused: list[str] = []
    reused_cells: list[str] = []
    table = {p: {s: {} for s in args.starts} for p in args.protocols}
    data = None
    runs = {}
    for seed in args.seeds:
        for start in args.starts:
            runs[start, seed], seconds = build_start(start, work_dir, args, seed)
            if seconds is None:
                reused.append(os.path.basename(runs[start, seed]))
            else:
                timings[f"build/{start}/{seed}"] = seconds
    for protocol in args.protocols:  # protocol-major: a run cut short has whole rows
        for seed in args.seeds:
            for start in args.starts:
                cell = f"{protocol}/{start}/{seed}"
                score = load_cell(work_dir, cell, args)
                if score is not None:
                    reused_cells.append(cell)
                else:
                    t0 = time.time()
                    if protocol.startswith("finetune_"):
                        fraction = int(protocol.split("_")[1]) / 100
                        score = finetune_top1(runs[start, seed], fraction, args, seed)
                    else:
                        data = data or scenes(work_dir, args)
                        score = task_score(protocol, runs[start, seed], data, args, seed)
                    timings[cell] = round(time.time() - t0, 1)
                    save_cell(work_dir, cell, args, score, timings[cell])
                table[protocol][start][seed] = score
                print(f"{protocol} {start} seed {seed}: {score}", file=sys.stderr, flush=True)
    budget = {k: getattr(args, k) for k in list(FULL) if k not in ("seeds",)}
    out = {
        "quick": args.quick,
        "table": table,
        "metrics": {p: METRICS[p] for p in args.protocols},
        "seeds": args.seeds,
        "budget": budget,
        "work_dir": work_dir,
        "reused": reused,
        "reused_cells": reused_cells,
        "timings": timings,
        "wall_s": round(time.time() - start_time, 1),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
