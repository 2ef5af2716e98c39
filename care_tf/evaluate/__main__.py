"""Command line: `python -m care_tf.evaluate {linear,knn,attention,classifier,finetune} ...`.

    python -m care_tf.evaluate linear --model_dir runs/care --dataset fashion_mnist
    python -m care_tf.evaluate linear --model_dir runs/care --dataset fashion_mnist \
        --extract_features --epochs 80
    python -m care_tf.evaluate knn --model_dir runs/care --dataset fashion_mnist --limit 5000
    python -m care_tf.evaluate attention --model_dir runs/byol --model_dir runs/care \
        --dataset fashion_mnist --num_images 8
    python -m care_tf.evaluate finetune --model_dir runs/care --dataset fashion_mnist \
        --label_fraction 0.01
    python -m care_tf.evaluate detect --model_dir runs/care --dataset coco:data/scenes
    python -m care_tf.evaluate segment --model_dir runs/care --dataset coco:data/scenes

Results go to `--out` (default `MODEL_DIR/eval/`): `linear.json` or `knn.json`,
`linear_confusion.png` / `knn_confusion.png`, `attention.png`; a run with `--limit N`
writes `knn_limitN.json` etc., never overwriting the full evaluation. `--model_dir`
takes a run directory, its `backbone.keras` or its full `model.keras` (whose results
are `knn_model.json` etc., apart from the directory's). `--dataset` defaults to the
run's own (its config.yaml's `monitor.source`, else `data.source`). A wrong
argument, file or folder ends in one `error:` line (exit 2); `--debug` shows the
traceback. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from care_tf.cli_errors import UsageError, add_debug_flag, prog_name, run_cli
from care_tf.constants import DEFAULT_K, DEFAULT_TEMPERATURE


# --------------------------------------------------------------------- loading
def load_backbone(model_dir: str):
    """The run's backbone (`model_dir/backbone.keras`, or a `.keras` file)."""
    if not os.path.exists(model_dir):
        raise UsageError(f"--model_dir {model_dir!r} does not exist.")
    from care_tf.model_dir import load_backbone as _load

    try:
        return _load(model_dir)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--model_dir: {e}") from e


def _is_model_file(model_dir: str) -> bool:
    return model_dir.endswith(".keras") or os.path.isfile(model_dir)


def dataset_of_run(model_dir: str) -> str:
    """The labelled source a run was trained and monitored on, from its config.yaml:
    `monitor.source`, else `data.source` (what `--dataset` defaults to)."""
    import yaml

    from care_tf.model_dir import CONFIG, read_config

    if not os.path.exists(model_dir):
        raise UsageError(f"--model_dir {model_dir!r} does not exist.")
    run = os.path.dirname(model_dir) if _is_model_file(model_dir) else model_dir
    try:
        config = read_config(run)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UsageError(
            f"--dataset is required: {os.path.join(run, CONFIG)} cannot be read ({e})."
        ) from e
    config = config if isinstance(config, dict) else {}
    monitor, data = config.get("monitor") or {}, config.get("data") or {}
    spec = (monitor.get("source") if isinstance(monitor, dict) else None) or (
        data.get("source") if isinstance(data, dict) else None
    )
    if not isinstance(spec, str) or not spec:
        raise UsageError(
            f"--dataset is required: {run!r} holds no {CONFIG} naming the dataset the run "
            "was trained on (e.g. --dataset fashion_mnist)."
        )
    return spec


def image_size_of(backbone, override: int | None) -> int:
    """`override`, else the backbone's fixed input height, else 224."""
    if override:
        return override
    shape = backbone.input_shape
    return int(shape[1]) if shape[1] is not None else 224


def _load_source(spec: str, split: str, data_dir: str | None = None):
    from care_tf.data import load_source

    return load_source(spec, split, data_dir=data_dir)


def _make_eval_dataset(source, **kwargs):
    from care_tf.data import make_eval_dataset

    return make_eval_dataset(source, **kwargs)


def load_split(
    spec: str,
    split: str,
    *,
    train: bool,
    image_size: int,
    batch_size: int,
    limit: int | None = None,
    data_dir: str | None = None,
    require_labels: bool = True,
    seed: int | None = None,
):
    """A labelled split as batches of `(images float32 normalised, labels int64)`.

    With `limit`, the first `limit` examples the pipeline yields are kept (for
    `train=True` the pipeline shuffles, so a different subset each epoch).

    Returns:
        `(dataset, source, num_examples)`; `num_examples` is None when unknown.
    """
    import tensorflow as tf

    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be a positive number of examples; got {limit}.")
    try:
        source = _load_source(spec, split, data_dir=data_dir)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise UsageError(f"--dataset {spec!r} (split {split!r}): {e}") from e
    if require_labels and not source.labelled:
        raise UsageError(
            f"--dataset {spec!r} split {split!r} has no labels; linear and knn evaluation "
            "need a labelled dataset (e.g. class sub-folders for folder:/path)."
        )
    dataset = _make_eval_dataset(
        source, split=split, train=train, image_size=image_size, batch_size=batch_size, seed=seed
    )
    num_examples = source.num_examples
    if limit:
        dataset = dataset.unbatch().take(limit).batch(batch_size)
        num_examples = min(limit, num_examples) if num_examples else None
        if num_examples and not train:  # a known length gives progress bars a total
            dataset = dataset.apply(
                tf.data.experimental.assert_cardinality(-(-num_examples // batch_size))
            )
    return dataset, source, num_examples


def default_out(model_dir: str, out: str | None) -> str:
    """`--out`, else `MODEL_DIR/eval` (next to the `.keras` file if one was given)."""
    if out:
        return out
    base = os.path.dirname(model_dir) if _is_model_file(model_dir) else model_dir
    return os.path.join(base, "eval")


def _out_paths(out: str, stem: str) -> tuple[str, str]:
    if out.endswith(".json"):
        return out, out[: -len(".json")] + "_confusion.png"
    return os.path.join(out, f"{stem}.json"), os.path.join(out, f"{stem}_confusion.png")


def _check_classes(labels, what: str, dataset: str) -> None:
    """Refuses a probe on fewer than two classes (its accuracy would be 100% by default)."""
    import numpy as np

    found = np.unique(labels)
    if len(found) < 2:
        raise UsageError(
            f"--dataset {dataset!r}: the {what} holds {len(found)} class(es) "
            f"({found.tolist()}); a probe needs at least two classes to mean anything."
        )


def _check_args(args) -> None:
    for name in ("batch_size", "k", "epochs", "num_images"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be >= 1; got {value}.")
    if getattr(args, "temperature", 1.0) <= 0:
        raise UsageError(f"--temperature must be > 0; got {args.temperature}.")
    if getattr(args, "limit", None) is not None and args.limit < 1:
        raise UsageError(
            f"--limit must be a positive number of examples; got {args.limit} "
            "(omit --limit to use every example)."
        )


# -------------------------------------------------------------------- commands
def run_knn(args) -> dict:
    """Weighted kNN of pooled features: train split = memory bank, eval split = queries."""
    from care_tf.evaluate.features import extract_features
    from care_tf.evaluate.knn import knn_scores
    from care_tf.evaluate.report import classification_report

    start = time.time()
    backbone = load_backbone(args.model_dir)
    size = image_size_of(backbone, args.image_size)
    common = dict(
        image_size=size,
        batch_size=args.batch_size,
        limit=args.limit,
        data_dir=args.data_dir,
        train=False,
    )
    train_ds, source, _ = load_split(args.dataset, args.train_split, **common)
    eval_ds, _, _ = load_split(args.dataset, args.eval_split, **common)
    progress = not args.quiet
    train_x, train_y = extract_features(
        backbone, train_ds, progress=progress, desc="train features"
    )
    eval_x, eval_y = extract_features(backbone, eval_ds, progress=progress, desc="eval features")
    _check_classes(train_y, f"memory bank ({args.train_split})", args.dataset)
    num_classes = source.num_classes or int(max(train_y.max(), eval_y.max())) + 1
    scores = knn_scores(
        train_x, train_y, eval_x, num_classes=num_classes, k=args.k, temperature=args.temperature
    )
    report = classification_report(scores, eval_y, source.class_names)
    results = {
        "protocol": "knn",
        "model_dir": args.model_dir,
        "dataset": args.dataset,
        "train_split": args.train_split,
        "eval_split": args.eval_split,
        "num_train": int(len(train_y)),
        "config": {
            "k": args.k,
            "temperature": args.temperature,
            "image_size": size,
            "feature": "pooled",
            "limit": args.limit,
        },
        **report,
        "seconds": round(time.time() - start, 1),
    }
    return _save_results(args, "knn", results, f"kNN (k={args.k})")


def _save_results(args, kind: str, results: dict, title: str) -> dict:
    """Writes `kind`.json and its confusion-matrix PNG; returns results with their paths."""
    from care_tf.evaluate.report import plot_confusion_matrix, result_name, write_json

    model_file = args.model_dir if _is_model_file(args.model_dir) else None
    stem = result_name(kind, args.limit, model_file)
    json_path, png_path = _out_paths(default_out(args.model_dir, args.out), stem)
    plot_confusion_matrix(
        results["confusion_matrix"],
        results["class_names"],
        png_path,
        title=f"{title} on {args.dataset}:{args.eval_split}",
    )
    write_json(results, json_path)
    results["paths"] = {"json": json_path, "confusion_matrix": png_path}
    return results


def run_linear(args) -> dict:
    """The paper's linear probe (docs/method.md), end to end or on extracted features."""
    from care_tf.evaluate.features import extract_features
    from care_tf.evaluate.linear import (
        predict_scores,
        probe_learning_rate,
        train_linear_probe,
        train_linear_probe_on_features,
    )
    from care_tf.evaluate.report import classification_report

    start = time.time()
    backbone = load_backbone(args.model_dir)
    size = image_size_of(backbone, args.image_size)
    lr = args.lr if args.lr is not None else probe_learning_rate(args.batch_size)
    common = dict(
        image_size=size, batch_size=args.batch_size, limit=args.limit, data_dir=args.data_dir
    )
    eval_ds, source, _ = load_split(args.dataset, args.eval_split, train=False, **common)
    progress = not args.quiet
    verbose = 0 if args.quiet else "auto"
    if args.extract_features:
        train_ds, _, _ = load_split(args.dataset, args.train_split, train=False, **common)
        train_x, train_y = extract_features(
            backbone, train_ds, progress=progress, desc="train features"
        )
        eval_x, eval_y = extract_features(
            backbone, eval_ds, progress=progress, desc="eval features"
        )
        _check_classes(train_y, f"training split ({args.train_split})", args.dataset)
        num_classes = source.num_classes or int(max(train_y.max(), eval_y.max())) + 1
        head, history = train_linear_probe_on_features(
            train_x,
            train_y,
            num_classes=num_classes,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=lr,
            seed=args.seed,
            verbose=verbose,
        )
        scores, labels = predict_scores(head, (eval_x, eval_y))
        num_train = len(train_y)
    else:
        if not source.num_classes:
            raise UsageError(f"--dataset {args.dataset!r} does not tell its number of classes.")
        num_classes = source.num_classes
        train_ds, _, num_train = load_split(
            args.dataset, args.train_split, train=True, seed=args.seed, **common
        )
        # The augmented pipeline drops the last partial batch.
        steps = max(1, num_train // args.batch_size) if num_train else None
        classifier, history = train_linear_probe(
            backbone,
            train_ds,
            num_classes=num_classes,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=lr,
            steps_per_epoch=steps,
            seed=args.seed,
            verbose=verbose,
        )
        scores, labels = predict_scores(classifier, eval_ds)
    report = classification_report(scores, labels, source.class_names)
    results = {
        "protocol": "linear",
        "model_dir": args.model_dir,
        "dataset": args.dataset,
        "train_split": args.train_split,
        "eval_split": args.eval_split,
        "num_train": int(num_train) if num_train else None,
        "config": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": lr,
            "extract_features": args.extract_features,
            "image_size": size,
            "seed": args.seed,
            "limit": args.limit,
        },
        **report,
        "history": {k: [float(v) for v in vals] for k, vals in history.items()},
        "seconds": round(time.time() - start, 1),
    }
    return _save_results(args, "linear", results, "Linear probe")


def run_classifier(args) -> dict:
    """Top-1/top-5 of a trained classifier (`classifier.keras`, e.g. converted) on a split."""
    from care_tf.evaluate.linear import predict_scores
    from care_tf.evaluate.report import classification_report
    from care_tf.model_dir import load_classifier

    start = time.time()
    try:
        classifier = load_classifier(args.model_dir)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    size = image_size_of(classifier.backbone, args.image_size)
    common = dict(image_size=size, batch_size=args.batch_size, limit=args.limit)
    eval_ds, source, _ = load_split(
        args.dataset, args.eval_split, train=False, data_dir=args.data_dir, **common
    )
    scores, labels = predict_scores(classifier, eval_ds)
    report = classification_report(scores, labels, source.class_names)
    results = {"protocol": "classifier", "model_dir": args.model_dir, "dataset": args.dataset}
    results.update(eval_split=args.eval_split, config=common, **report)
    results["seconds"] = round(time.time() - start, 1)
    return _save_results(args, "classifier", results, "Classifier")


def run_finetune(args) -> dict:
    """Fine-tuning with few labels (care_tf.transfer.finetune)."""
    from care_tf.transfer.finetune import run_finetune as finetune

    return finetune(
        args.model_dir,
        args.dataset,
        label_fraction=args.label_fraction,
        out=default_out(args.model_dir, args.out),
        train_split=args.train_split,
        eval_split=args.eval_split,
        data_dir=args.data_dir,
        image_size=args.image_size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        learning_rate=args.lr,
        seed=args.seed,
        verbose=0 if args.quiet else "auto",
    )


def run_attention(args) -> dict:
    """Attention overlays of one or more backbones on the first N images of a split."""
    from care_tf.evaluate.attention import attention_maps, save_attention_grid

    names = args.name or []
    if names and len(names) != len(args.model_dir):
        raise UsageError(
            f"Give one --name per --model_dir ({len(args.model_dir)}); got {len(names)}."
        )
    backbones = [load_backbone(d) for d in args.model_dir]
    names = names or [os.path.basename(os.path.normpath(d)) for d in args.model_dir]
    size = image_size_of(backbones[0], args.image_size)
    dataset, source, _ = load_split(
        args.dataset,
        args.split,
        train=False,
        image_size=size,
        batch_size=args.num_images,
        limit=args.num_images,
        data_dir=args.data_dir,
        require_labels=False,
    )
    batch = next(iter(dataset), None)
    if batch is None:
        raise UsageError(f"--dataset {args.dataset!r} split {args.split!r} has no images.")
    images, labels = batch
    import numpy as np

    images, labels = np.asarray(images), np.asarray(labels)
    maps = {
        name: attention_maps(b, images, method=args.method, feature_key=args.feature)
        for name, b in zip(names, backbones, strict=True)
    }
    class_names = source.class_names
    titles = [class_names[i] if class_names and 0 <= i < len(class_names) else "" for i in labels]
    out = args.out or os.path.join(default_out(args.model_dir[-1], None), "attention.png")
    save_attention_grid(images, maps, out, titles=titles)
    return {
        "protocol": "attention",
        "method": args.method,
        "feature": args.feature,
        "models": dict(zip(names, args.model_dir, strict=True)),
        "paths": {"png": out},
    }


def run_detect(args) -> dict:
    """RetinaNet transfer: COCO box AP (care_tf/transfer/commands.py)."""
    from care_tf.transfer.commands import run_detect as run

    return run(args, out=default_out(args.model_dir, args.out))


def run_segment(args) -> dict:
    """DeepLabV3+ transfer: mean IoU (care_tf/transfer/commands.py)."""
    from care_tf.transfer.commands import run_segment as run

    return run(args, out=default_out(args.model_dir, args.out))


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog_name("care_tf.evaluate"),
        description="Evaluate a pretrained CARE backbone: linear probe, kNN, attention maps, "
        "detection and segmentation transfer.",
    )
    add_debug_flag(parser)
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="{linear,knn,attention,classifier,finetune,detect,segment}",
    )

    def data_args(p, splits=True, train_split=True):
        p.add_argument(
            "--dataset",
            default=None,
            help="labelled images: fashion_mnist | tfds:NAME | folder:/path | tfrecord:/glob "
            "(default: the run's own, monitor.source else data.source of MODEL_DIR/config.yaml)",
        )
        p.add_argument(
            "--data_dir",
            default=None,
            help="TFDS data dir or Fashion-MNIST IDX folder (default: built-in)",
        )
        if splits and train_split:
            p.add_argument(
                "--train_split",
                default="train",
                help="labelled split to train on / memory bank (default: train)",
            )
        if splits:
            p.add_argument(
                "--eval_split", default="test", help="split to evaluate on (default: test)"
            )
        p.add_argument(
            "--image_size",
            type=int,
            default=None,
            help="input size in px (default: the backbone's input size, else 224)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    def common(p, train_split=True):
        p.add_argument(
            "--model_dir",
            required=True,
            help="training run directory, or its backbone.keras or model.keras file",
        )
        data_args(p, train_split=train_split)
        p.add_argument("--batch_size", type=int, default=256, help="batch size (default: 256)")
        p.add_argument(
            "--limit",
            type=int,
            default=None,
            help="use at most N examples per split (smoke runs); results go to "
            "KIND_limitN.json, apart from the full evaluation's (default: every example)",
        )
        p.add_argument(
            "--out",
            default=None,
            help="output directory or .json path (default: MODEL_DIR/eval/, where a .keras "
            "file given as --model_dir writes KIND_FILE.json, e.g. knn_model.json)",
        )

    linear = sub.add_parser(
        "linear",
        help="linear probe on the frozen backbone (docs/method.md)",
        description="Linear probe: Dense + BN head on frozen pooled "
        "features; SGD momentum 0.9, lr 0.2 x batch/256, cosine.",
    )
    common(linear)
    linear.add_argument("--epochs", type=int, default=80, help="epochs (default: 80)")
    linear.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate (default: 0.2 x batch_size / 256)",
    )
    linear.add_argument(
        "--extract_features",
        action="store_true",
        help="extract centre-crop features once and train the head on them (fast; no augmentation)",
    )
    linear.add_argument(
        "--seed", type=int, default=0, help="head init / shuffle seed (default: %(default)s)"
    )

    knn = sub.add_parser(
        "knn",
        help="weighted kNN on L2-normalised pooled features",
        description="Weighted kNN (InstDisc): cosine top-k neighbours "
        "vote with weight exp(sim / T).",
    )
    common(knn)
    knn.add_argument("--k", type=int, default=DEFAULT_K, help=f"neighbours (default: {DEFAULT_K})")
    knn.add_argument(
        "--temperature",
        type=float,
        default=DEFAULT_TEMPERATURE,
        help=f"vote temperature (default: {DEFAULT_TEMPERATURE})",
    )

    classifier = sub.add_parser(
        "classifier",
        help="accuracy of a trained classifier (classifier.keras, e.g. from care_tf.convert)",
        description="Top-1 / top-5 of MODEL_DIR/classifier.keras on --eval_split; no training.",
    )
    common(classifier, train_split=False)

    finetune = sub.add_parser(
        "finetune",
        help="fine-tune the whole backbone + a linear head on a few labels (SimCLR/BYOL)",
        description="Semi-supervised protocol of SimCLR/BYOL: a class-balanced, seeded "
        "subset of the labels (ids written beside the result), the backbone and a linear "
        "head fine-tuned (SGD Nesterov 0.9, lr 0.05 x batch/256, no weight decay), "
        "top-1/top-5 on the full --eval_split. See docs/transfer.md.",
    )
    finetune.add_argument(
        "--model_dir",
        required=True,
        help="training run directory, or its backbone.keras or model.keras file",
    )
    data_args(finetune)
    finetune.add_argument(
        "--label_fraction",
        type=float,
        required=True,
        help="share of the training labels, in (0, 1]: 0.01, 0.1 or 1.0 in the papers",
    )
    finetune.add_argument(
        "--batch_size", type=int, default=256, help="batch size, capped by the subset (256)"
    )
    finetune.add_argument(
        "--epochs", type=int, default=None, help="epochs (default: 60 for <= 1%%, else 30)"
    )
    finetune.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default: 0.05 x batch / 256)"
    )
    finetune.add_argument("--seed", type=int, default=0, help="subset / head / order seed")
    finetune.add_argument("--out", default=None, help="output directory (default: MODEL_DIR/eval/)")

    attention = sub.add_parser(
        "attention",
        help="attention-map overlays comparing models",
        description="Class-agnostic attention heatmaps (Grad-CAM on "
        "the pooled feature, or channel mean), one column per model.",
    )
    attention.add_argument(
        "--model_dir",
        required=True,
        action="append",
        help="run directory or .keras file; repeat to compare models",
    )
    attention.add_argument(
        "--name",
        action="append",
        default=None,
        help="column title per --model_dir (default: directory names)",
    )
    data_args(attention, splits=False)
    attention.add_argument(
        "--split", default="test", help="split to take images from (default: test)"
    )
    attention.add_argument("--num_images", type=int, default=8, help="rows (default: 8)")
    attention.add_argument(
        "--method",
        choices=("gradcam", "mean"),
        default="gradcam",
        help="gradcam (default) or mean (channel mean)",
    )
    attention.add_argument(
        "--feature", choices=("res5", "res4"), default="res5", help="feature map (default: res5)"
    )
    attention.add_argument(
        "--out", default=None, help="PNG path (default: LAST_MODEL_DIR/eval/attention.png)"
    )
    for kind, help_text, description in (
        (
            "detect",
            "fine-tune a keras-hub RetinaNet on the backbone; COCO box AP "
            "(docs/detection_segmentation.md)",
            "RetinaNet (FPN P3-P7) on the run's backbone, fine-tuned on a COCO-format "
            "dataset; box AP, AP50, AP75 from pycocotools.",
        ),
        (
            "segment",
            "fine-tune a keras-hub DeepLabV3+ on the backbone; mean IoU "
            "(docs/detection_segmentation.md)",
            "DeepLabV3+ (ASPP on P5, decoder on P2) on the run's backbone, fine-tuned on "
            "the masks of a COCO-format dataset; mean IoU with background.",
        ),
    ):
        p = sub.add_parser(kind, help=help_text, description=description)
        p.add_argument(
            "--model_dir", required=True, help="training run directory or its backbone.keras"
        )
        p.add_argument(
            "--dataset",
            required=True,
            help="coco:ROOT with ROOT/SPLIT/instances.json (python -m "
            "care_tf.transfer.make_scenes) or ROOT/annotations/instances_SPLIT.json; tfds:NAME",
        )
        p.add_argument("--data_dir", default=None, help="TFDS data dir (tfds:NAME)")
        p.add_argument("--train_split", default="train", help="split to fine-tune on (train)")
        p.add_argument("--eval_split", default="test", help="split to score (default: test)")
        p.add_argument(
            "--image_size", type=int, default=128, help="square input side, px (default: 128)"
        )
        p.add_argument("--batch_size", type=int, default=8, help="batch size (default: 8)")
        p.add_argument("--epochs", type=int, default=12, help="epochs (default: 12)")
        p.add_argument(
            "--steps_per_epoch", type=int, default=None, help="steps per epoch (default: all)"
        )
        p.add_argument("--lr", type=float, default=1e-4, help="peak Adam lr (default: 1e-4)")
        p.add_argument(
            "--freeze_backbone", action="store_true", help="train only the task's own layers"
        )
        if kind == "detect":
            p.add_argument(
                "--head_convs", type=int, default=4, help="convs per RetinaNet head (default: 4)"
            )
        p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
        p.add_argument(
            "--limit", type=int, default=None, help="use the first N images of each split"
        )
        p.add_argument(
            "--out", default=None, help="output directory or .json path (default: MODEL_DIR/eval/)"
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


COMMANDS = {
    "linear": run_linear,
    "knn": run_knn,
    "attention": run_attention,
    "classifier": run_classifier,
    "finetune": run_finetune,
    "detect": run_detect,
    "segment": run_segment,
}


def evaluate(argv: list[str] | None = None) -> dict:
    """Runs the command of `argv` and returns its results dict (raises UsageError)."""
    args = build_parser().parse_args(argv)
    return _run(args)


def _run(args) -> dict:
    _check_args(args)
    if args.dataset is None:
        runs = args.model_dir if isinstance(args.model_dir, list) else [args.model_dir]
        args.dataset = dataset_of_run(runs[-1])
    return COMMANDS[args.command](args)


def _report(args) -> int:
    results = _run(args)
    if "top1" in results:
        print(
            f"{args.command}: top-1 {100 * results['top1']:.2f}%  "
            f"top-5 {100 * results['top5']:.2f}%  ({results['num_examples']} examples)"
        )
    if "summary" in results:
        print(results["summary"])
    for name, path in results.get("paths", {}).items():
        print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parses `argv`, runs the command, prints a summary; returns the exit status."""
    return run_cli(build_parser(), _report, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
