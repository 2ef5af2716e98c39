"""Semantic segmentation transfer: keras-hub DeepLabV3+ on a ResNet backbone, mean IoU.

    segmenter = build_segmenter(backbone, num_classes=coco.num_classes + 1)  # + background
    fine_tune_segmenter(segmenter, segmentation_dataset(train, 128, 8), epochs=12)
    cm = score_confusion(segmenter, test, 128, 8)  # each test image at its own size
    iou_report(cm, ["background", *coco.class_names])   # {"miou": ..., "per_class_iou": ...}

The segmenter is keras-hub's `DeepLabV3ImageSegmenter` on a `DeepLabV3Backbone`: atrous
spatial pyramid pooling (rates 6, 12, 18) on the ResNet's P5 (stride 32), upsampled x8 and
joined with the projected P2 features (stride 4, the DeepLabV3+ decoder), then x4 to the
input size. Training minimises pixel-wise softmax cross-entropy, crowd pixels (255)
ignored (training masks are resized with nearest neighbours). Scores are read at each
test image's own size (logits resized back bilinearly, as VOC and COCO score), from one
confusion matrix over every scored pixel of the split:
IoU_c = TP / (TP + FP + FN), mean over classes that occur in the ground truth or the
predictions (the PASCAL VOC convention, background included).
"""

from __future__ import annotations

import keras
import numpy as np

from care_tf.transfer.coco import IGNORE
from care_tf.transfer.fitting import fit_task

LEARNING_RATE = 1e-4
DILATION_RATES = (6, 12, 18)


def build_segmenter(
    backbone: keras.Model,
    num_classes: int,
    *,
    dilation_rates: tuple[int, ...] = DILATION_RATES,
    freeze_backbone: bool = False,
):
    """A keras-hub DeepLabV3+ on `backbone`'s P2 and P5 outputs.

    Args:
        backbone: keras_hub.models.ResNetBackbone (pyramid outputs P2..P5).
        num_classes: int. Classes including background (label 0).
        dilation_rates: ASPP rates. Defaults to (6, 12, 18).
        freeze_backbone: bool. Train only ASPP, decoder and head.

    Returns:
        keras_hub.models.DeepLabV3ImageSegmenter: normalised images (B, H, W, 3), H and W
        multiples of 32, -> logits (B, H, W, num_classes).
    """
    import keras_hub

    if num_classes < 2:
        raise ValueError(
            f"Segmentation needs >= 2 classes (with background). Received: {num_classes}"
        )
    backbone.trainable = not freeze_backbone
    deeplab = keras_hub.models.DeepLabV3Backbone(
        image_encoder=backbone,
        spatial_pyramid_pooling_key="P5",
        upsampling_size=8,
        dilation_rates=list(dilation_rates),
        low_level_feature_key="P2",
        image_shape=tuple(backbone.image_shape),
    )
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=deeplab, num_classes=num_classes)


def fine_tune_segmenter(
    segmenter,
    train_data,
    *,
    epochs: int,
    steps_per_epoch: int | None = None,
    learning_rate: float = LEARNING_RATE,
    verbose: int | str = 0,
    callbacks: list | None = None,
    run_eagerly: bool = False,
) -> dict:
    """Fine-tunes with Adam (cosine decay to 0) on pixel-wise cross-entropy.

    Args:
        segmenter: from `build_segmenter`.
        train_data: batched `(images, masks (B, H, W, 1))` dataset, e.g.
            `care_tf.transfer.coco.segmentation_dataset(..., shuffle=True)`.
        epochs: int.
        steps_per_epoch: int. Defaults to the dataset's length (repeated when given).
        learning_rate: float. Peak learning rate. Defaults to 1e-4.
        run_eagerly: bool. No graph tracing (quicker for a step or two, e.g. in tests).

    Returns:
        The per-epoch loss history.
    """
    return fit_task(
        segmenter,
        train_data.map(lambda x, m: (x, keras.ops.cast(m, "int32"))),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        learning_rate=learning_rate,
        compile_kwargs={
            "loss": keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, ignore_class=IGNORE
            ),
            # not keras-hub's "auto" CategoricalAccuracy (one-hot masks; [] replaces it)
            "metrics": [],
        },
        verbose=verbose,
        callbacks=callbacks,
        run_eagerly=run_eagerly,
    )


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, ignore: int = IGNORE
) -> np.ndarray:
    """int64 (C, C) pixel counts, row = true class, column = predicted; `ignore` pixels
    of `labels` are left out."""
    from care_tf.evaluate.report import confusion_matrix as counts

    labels = np.asarray(labels).reshape(-1)
    keep = labels != ignore
    return counts(labels[keep], np.asarray(predictions).reshape(-1)[keep], num_classes)


def score_confusion(
    segmenter, coco, image_size: int, batch_size: int = 8, *, eager: bool = False
) -> np.ndarray:
    """Confusion matrix over `coco`'s images at their own sizes: each image's logits
    (predicted at `image_size`) are resized back bilinearly to its height x width, then
    compared with its `semantic_mask` (crowd pixels ignored), as VOC and COCO score."""
    import tensorflow as tf

    from care_tf.transfer.coco import image_dataset, semantic_mask

    def forward(x):
        return segmenter(x, training=False)

    if not eager:
        forward = tf.function(forward, reduce_retracing=True)
    num_classes = coco.num_classes + 1
    cm = np.zeros((num_classes, num_classes), np.int64)
    images = iter(coco.images)
    for batch in image_dataset(coco, image_size, batch_size):
        for logits in forward(batch):
            image = next(images)
            full = tf.image.resize(logits, (image["height"], image["width"]), method="bilinear")
            predicted = np.asarray(tf.argmax(full, axis=-1))
            cm += confusion_matrix(semantic_mask(coco, image), predicted, num_classes)
    return cm


def iou_report(cm: np.ndarray, class_names: list[str] | None = None) -> dict:
    """Per-class IoU and their mean from a confusion matrix.

    Returns:
        {"miou": mean over classes present in labels or predictions, "pixel_accuracy",
        "per_class_iou": {name: IoU or None when absent}, "class_names",
        "confusion_matrix"} (JSON-serialisable).
    """
    cm = np.asarray(cm, np.int64)
    num_classes = cm.shape[0]
    names = list(class_names or [str(i) for i in range(num_classes)])
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    total = cm.sum()
    return {
        "miou": float(np.nanmean(iou)) if present.any() else 0.0,
        "pixel_accuracy": float(tp.sum() / total) if total else 0.0,
        "per_class_iou": {
            n: (float(v) if p else None) for n, v, p in zip(names, iou, present, strict=True)
        },
        "class_names": names,
        "confusion_matrix": cm.tolist(),
    }


def evaluate_segmentation(
    backbone: keras.Model,
    train,
    test,
    *,
    image_size: int = 128,
    batch_size: int = 8,
    epochs: int = 12,
    steps_per_epoch: int | None = None,
    learning_rate: float = LEARNING_RATE,
    freeze_backbone: bool = False,
    seed: int = 0,
    verbose: int | str = 0,
    run_eagerly: bool = False,
) -> dict:
    """Builds a DeepLabV3+ on `backbone`, fine-tunes it on `train`'s masks, scores `test`.

    Args:
        backbone: keras_hub.models.ResNetBackbone (trained in place unless frozen).
        train, test: `care_tf.transfer.coco.CocoSet`s with masks and the same categories.
        image_size: int. Square input side in px, a multiple of 32.
        Others: see `build_segmenter` and `fine_tune_segmenter`.

    Returns:
        `iou_report` of the test split (scored at each image's own size) plus "history".
    """
    from care_tf.transfer.coco import check_same_categories, segmentation_dataset

    check_same_categories(train, test)
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32 (DeepLabV3+); got {image_size}.")
    keras.utils.set_random_seed(seed)
    num_classes = train.num_classes + 1
    segmenter = build_segmenter(backbone, num_classes, freeze_backbone=freeze_backbone)
    data = segmentation_dataset(train, image_size, batch_size, shuffle=True, flip=True, seed=seed)
    history = fine_tune_segmenter(
        segmenter,
        data,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        learning_rate=learning_rate,
        verbose=verbose,
        run_eagerly=run_eagerly,
    )
    cm = score_confusion(segmenter, test, image_size, batch_size, eager=run_eagerly)
    return {**iou_report(cm, ["background", *test.class_names]), "history": history}
