"""What `python -m care_tf.evaluate detect|segment` runs (the parser lives in evaluate/__main__).

    python -m care_tf.evaluate detect --model_dir runs/care --dataset coco:data/scenes
    python -m care_tf.evaluate segment --model_dir runs/care --dataset coco:data/scenes

Both validate the two splits (and the run) before anything is built, fine-tune a fresh
keras-hub task on the run's backbone (`care_tf.transfer.keras_hub_bridge.hub_backbone`),
and write `OUT/detect.json` / `OUT/segment.json` (`detect_limitN.json` with `--limit N`).
"""

from __future__ import annotations

import os
import time

from care_tf.cli_errors import UsageError

DATASET_HELP = "coco:ROOT (ROOT/SPLIT/instances.json or ROOT/annotations/instances_SPLIT.json)"


def load_hub_backbone(model_dir: str):
    """The run's backbone as a keras-hub ResNetBackbone taking any image size."""
    if not os.path.exists(model_dir):
        raise UsageError(f"--model_dir {model_dir!r} does not exist.")
    try:
        import keras_hub  # noqa: F401
    except ImportError as e:
        raise UsageError("detect and segment need keras-hub: pip install -e '.[transfer]'.") from e
    from care_tf.transfer.keras_hub_bridge import hub_backbone

    try:
        return hub_backbone(model_dir, image_shape=(None, None, 3))
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--model_dir {model_dir!r}: {e}") from e


def load_split(spec: str, split: str, *, require_masks: bool, limit: int | None, data_dir=None):
    """A validated `CocoSet` of one split of `--dataset`."""
    from care_tf.transfer import coco

    if spec.startswith("tfds:"):
        from care_tf.transfer.tfds_coco import tfds_split

        found = tfds_split(spec[len("tfds:") :], split, data_dir, require_masks=require_masks)
    else:
        root = spec[len("coco:") :] if spec.startswith("coco:") else spec
        if not os.path.isdir(root):
            raise UsageError(f"--dataset {spec!r}: no such folder; expected {DATASET_HELP}.")
        annotations, images = coco.split_files(root, split)
        found = coco.load_coco(annotations, images, require_masks=require_masks)
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--limit must be a positive number of images; got {limit}.")
        found = coco.subset(found, limit)
    if not len(found):
        raise UsageError(f"--dataset {spec!r} split {split!r} has no images.")
    return found


def _common(args, kind: str, require_masks: bool, min_multiple: int):
    if not os.path.exists(args.model_dir):
        raise UsageError(f"--model_dir {args.model_dir!r} does not exist.")
    if args.image_size < min_multiple or args.image_size % min_multiple:
        raise UsageError(
            f"--image_size must be a positive multiple of {min_multiple} for {kind}; "
            f"got {args.image_size}."
        )
    if args.lr <= 0:
        raise UsageError(f"--lr must be > 0; got {args.lr}.")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        raise UsageError(f"--steps_per_epoch must be >= 1; got {args.steps_per_epoch}.")
    kw = dict(require_masks=require_masks, limit=args.limit, data_dir=args.data_dir)
    train = load_split(args.dataset, args.train_split, **kw)
    test = load_split(args.dataset, args.eval_split, **kw)
    if train.category_ids != test.category_ids:
        raise UsageError(
            f"--dataset {args.dataset!r}: splits {args.train_split!r} and {args.eval_split!r} "
            "list different categories; both need the same category table."
        )
    backbone = load_hub_backbone(args.model_dir)
    config = {
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "lr": args.lr,
        "freeze_backbone": args.freeze_backbone,
        "seed": args.seed,
        "limit": args.limit,
    }
    kwargs = dict(
        image_size=args.image_size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        learning_rate=args.lr,
        freeze_backbone=args.freeze_backbone,
        seed=args.seed,
        verbose=0 if args.quiet else "auto",
    )
    return train, test, backbone, config, kwargs


def _finish(args, kind: str, out: str, train, test, config: dict, scores: dict, start) -> dict:
    from care_tf.evaluate.report import result_name, write_json

    results = {
        "protocol": kind,
        "model_dir": args.model_dir,
        "dataset": args.dataset,
        "train_split": args.train_split,
        "eval_split": args.eval_split,
        "num_train": len(train),
        "num_eval": len(test),
        "class_names": test.class_names,
        "config": config,
        **scores,
        "seconds": round(time.time() - start, 1),
    }
    stem = result_name(kind, args.limit)
    path = out if out.endswith(".json") else os.path.join(out, f"{stem}.json")
    write_json(results, path)
    results["paths"] = {"json": path}
    return results


def run_detect(args, out: str) -> dict:
    """Fine-tunes a RetinaNet on the run's backbone; box AP / AP50 / AP75 -> OUT/detect.json."""
    from care_tf.transfer.detect import evaluate_detection

    start = time.time()
    train, test, backbone, config, kwargs = _common(args, "detect", False, 32)
    if args.head_convs < 1:
        raise UsageError(f"--head_convs must be >= 1; got {args.head_convs}.")
    config["head_convs"] = args.head_convs
    scores = evaluate_detection(backbone, train, test, head_convs=args.head_convs, **kwargs)
    results = _finish(args, "detect", out, train, test, config, scores, start)
    results["summary"] = (
        f"detect: AP {100 * scores['ap']:.1f}  AP50 {100 * scores['ap50']:.1f}  "
        f"AP75 {100 * scores['ap75']:.1f}  ({len(test)} images)"
    )
    return results


def run_segment(args, out: str) -> dict:
    """Fine-tunes a DeepLabV3+ on the run's backbone; mean IoU -> OUT/segment.json."""
    from care_tf.transfer.segment import evaluate_segmentation

    start = time.time()
    train, test, backbone, config, kwargs = _common(args, "segment", True, 32)
    scores = evaluate_segmentation(backbone, train, test, **kwargs)
    results = _finish(args, "segment", out, train, test, config, scores, start)
    results["summary"] = (
        f"segment: mIoU {100 * scores['miou']:.1f}  pixel accuracy "
        f"{100 * scores['pixel_accuracy']:.1f}  ({len(test)} images)"
    )
    return results
