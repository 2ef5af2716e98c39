"""Object detection transfer: keras-hub RetinaNet (FPN) on a ResNet backbone, COCO box AP.

    detector = build_detector(backbone, num_classes=10)      # backbone: keras_hub ResNetBackbone
    history = fine_tune_detector(detector, detection_dataset(train, 128, 8), epochs=12)
    detections = predict_detections(detector, test, image_size=128)
    box_ap(test.data, detections)        # {"ap": ..., "ap50": ..., "ap75": ...}

The detector is keras-hub's `RetinaNetObjectDetector` on a `RetinaNetBackbone` (FPN levels
P3-P7 built on the ResNet's P3-P5, P6/P7 from P5) with its default anchors (3 scales x 3
aspect ratios, base size 4 x stride), focal loss and smooth-L1 box loss; we add the data,
the fine-tuning schedule and the COCO evaluation (pycocotools `COCOeval`, iouType "bbox":
AP averaged over IoU 0.50:0.95, AP50, AP75). Predictions are decoded with non-max
suppression (IoU 0.5) keeping up to 100 boxes of score >= 0.05, the usual COCO protocol.
"""

from __future__ import annotations

import contextlib
import copy
import io

import keras
import numpy as np

from care_tf.transfer.fitting import fit_task

BOX_FORMAT = "yxyx"
MIN_LEVEL, MAX_LEVEL = 3, 7
SCORE_THRESHOLD = 0.05
NMS_IOU = 0.5
MAX_DETECTIONS = 100
LEARNING_RATE = 1e-4
PRIOR_PROBABILITY = 0.01


def build_detector(
    backbone: keras.Model,
    num_classes: int,
    *,
    head_convs: int = 4,
    score_threshold: float = SCORE_THRESHOLD,
    max_detections: int = MAX_DETECTIONS,
    freeze_backbone: bool = False,
):
    """A keras-hub RetinaNet on `backbone`'s P3-P5 outputs.

    Args:
        backbone: keras_hub.models.ResNetBackbone (any keras-hub backbone with
            `pyramid_outputs` P3..P5). Its weights are shared, not copied.
        num_classes: int. Object classes (no background class).
        head_convs: int. 3x3 convs (256 channels) before each head's output. Defaults to 4.
        score_threshold: float. Lowest score a decoded box may have. Defaults to 0.05.
        max_detections: int. Boxes kept per image after NMS. Defaults to 100.
        freeze_backbone: bool. Train only the FPN and heads.

    Returns:
        keras_hub.models.RetinaNetObjectDetector taking normalised images (B, H, W, 3)
        (H, W multiples of 128 so that P7 is whole).
    """
    import keras_hub

    if num_classes < 1:
        raise ValueError(f"A detector needs >= 1 class. Received: num_classes={num_classes}")
    backbone.trainable = not freeze_backbone
    fpn = keras_hub.models.RetinaNetBackbone(
        image_encoder=backbone,
        min_level=MIN_LEVEL,
        max_level=MAX_LEVEL,
        use_p5=False,
        image_shape=tuple(backbone.image_shape),
    )
    decoder = keras_hub.layers.NonMaxSuppression(
        bounding_box_format=BOX_FORMAT,
        from_logits=True,
        iou_threshold=NMS_IOU,
        confidence_threshold=score_threshold,
        max_detections=max_detections,
    )
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=fpn,
        num_classes=num_classes,
        bounding_box_format=BOX_FORMAT,
        pre_logits_num_conv_layers=head_convs,
        prediction_decoder=decoder,
    )
    _set_focal_prior(detector)
    return detector


def _set_focal_prior(detector, prior: float = PRIOR_PROBABILITY) -> None:
    """Class logits start at log(p / (1 - p)) and box deltas at 0 (RetinaNet paper, 3.3).

    keras-hub 0.32 gives the prior bias to the box head instead of the classification
    head, so every anchor starts at score 0.5 and the first focal losses are ~1000.
    """
    cls_bias = detector.classification_head.prediction_layer.bias
    box_bias = detector.box_head.prediction_layer.bias
    cls_bias.assign(np.full(cls_bias.shape, -np.log((1 - prior) / prior), np.float32))
    box_bias.assign(np.zeros(box_bias.shape, np.float32))


def fine_tune_detector(
    detector,
    train_data,
    *,
    epochs: int,
    steps_per_epoch: int | None = None,
    learning_rate: float = LEARNING_RATE,
    verbose: int | str = 0,
    callbacks: list | None = None,
    run_eagerly: bool = False,
) -> dict:
    """Fine-tunes with Adam (cosine decay to 0, gradient norm clipped at 10) on
    keras-hub's RetinaNet losses.

    Args:
        detector: from `build_detector`.
        train_data: batched `(images, {"boxes": yxyx px, "labels"})` dataset, e.g.
            `care_tf.transfer.coco.detection_dataset(..., shuffle=True)`.
        epochs: int.
        steps_per_epoch: int. Defaults to the dataset's length (the dataset is
            repeated when given).
        learning_rate: float. Peak learning rate. Defaults to 1e-4.
        run_eagerly: bool. No graph tracing (quicker for a step or two, e.g. in tests).

    Returns:
        The per-epoch loss history.
    """
    return fit_task(
        detector,
        train_data,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        learning_rate=learning_rate,
        global_clipnorm=10.0,
        verbose=verbose,
        callbacks=callbacks,
        run_eagerly=run_eagerly,
    )


def predict_detections(detector, coco, image_size: int, batch_size: int = 8) -> list[dict]:
    """Detections on every image of `coco` as COCO result records.

    Boxes are mapped back from the resized `image_size` image to the original pixels.

    Returns:
        list of {"image_id", "category_id", "bbox": [x, y, w, h], "score"}.
    """
    from care_tf.transfer.coco import image_dataset

    # Eager calls: keras-hub 0.32's NMS needs a static batch size, which `predict` lacks.
    batches = []
    for images in image_dataset(coco, image_size, batch_size):
        raw = detector(images, training=False)
        batches.append(
            {k: np.asarray(v) for k, v in detector.decode_predictions(raw, images).items()}
        )
    out = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]} if batches else {}
    results = []
    for i, image in enumerate(coco.images):
        sy, sx = image["height"] / image_size, image["width"] / image_size
        for j in range(int(out["num_detections"][i])):
            y0, x0, y1, x1 = (float(v) for v in out["boxes"][i, j])
            results.append(
                {
                    "image_id": image["id"],
                    "category_id": coco.category_ids[int(out["labels"][i, j])],
                    "bbox": [x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy],
                    "score": float(out["confidence"][i, j]),
                }
            )
    return results


def box_ap(ground_truth: dict, detections: list[dict]) -> dict:
    """COCO box AP of `detections` against a COCO instances dict (pycocotools COCOeval).

    Args:
        ground_truth: dict with `images`, `annotations`, `categories` (annotations
            missing `area` / `iscrowd` get w * h / 0).
        detections: list of {"image_id", "category_id", "bbox" [x, y, w, h], "score"}.

    Returns:
        {"ap": AP@[.50:.95], "ap50", "ap75", "ap_small", "ap_medium", "ap_large"}, fractions
        (-1 where there is no ground truth of that kind, 0 with no detections).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
    data = copy.deepcopy(ground_truth)
    for ann in data["annotations"]:
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = data
        gt.createIndex()
        if not detections:
            has_gt = any(not a["iscrowd"] for a in data["annotations"])
            return {n: (0.0 if has_gt else -1.0) for n in names}
        dt = gt.loadRes(copy.deepcopy(detections))
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {n: float(v) for n, v in zip(names, np.asarray(evaluator.stats)[:6], strict=True)}


def evaluate_detection(
    backbone: keras.Model,
    train,
    test,
    *,
    image_size: int = 128,
    batch_size: int = 8,
    epochs: int = 12,
    steps_per_epoch: int | None = None,
    learning_rate: float = LEARNING_RATE,
    head_convs: int = 4,
    freeze_backbone: bool = False,
    seed: int = 0,
    verbose: int | str = 0,
    run_eagerly: bool = False,
) -> dict:
    """Builds a RetinaNet on `backbone`, fine-tunes it on `train` and scores it on `test`.

    Args:
        backbone: keras_hub.models.ResNetBackbone (trained in place unless frozen).
        train, test: `care_tf.transfer.coco.CocoSet`s with the same categories.
        image_size: int. Square input side in px (images are resized to it).
        Others: see `build_detector` and `fine_tune_detector`.

    Returns:
        {"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "num_detections",
        "history"}.
    """
    from care_tf.transfer.coco import check_same_categories, detection_dataset

    check_same_categories(train, test)
    keras.utils.set_random_seed(seed)
    detector = build_detector(
        backbone, train.num_classes, head_convs=head_convs, freeze_backbone=freeze_backbone
    )
    data = detection_dataset(train, image_size, batch_size, shuffle=True, flip=True, seed=seed)
    history = fine_tune_detector(
        detector,
        data,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        learning_rate=learning_rate,
        verbose=verbose,
        run_eagerly=run_eagerly,
    )
    detections = predict_detections(detector, test, image_size, batch_size)
    return {
        **box_ap(test.data, detections),
        "num_detections": len(detections),
        "history": history,
    }
