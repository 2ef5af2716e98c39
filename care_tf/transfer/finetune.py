"""Fine-tuning with few labels: the semi-supervised protocol of SimCLR and BYOL.

`python -m care_tf.evaluate finetune --model_dir RUN --dataset D --label_fraction 0.01`

1. Labels: a class-balanced, seeded subset of the training split (`label_subset`): the
   same number of images from every class (`round(fraction * N / C)`, at least 1, at
   most the class's size), drawn with `numpy.random.default_rng(seed)`; fraction 1.0
   takes every image. The chosen image ids (positions in the split's unshuffled order)
   are written beside the result, so runs on the same subset are comparable.
2. Model: the whole backbone (trainable, BatchNorm in training mode) + one linear
   layer on the pooled features, trained with softmax cross-entropy.
3. Recipe (SimCLR v1 appendix B.5, restated from the paper's text; BYOL's semi-supervised
   protocol follows it with batch 1024 and a swept learning rate): SGD with Nesterov
   momentum 0.9, learning rate 0.05 x batch / 256, no weight decay or other
   regulariser, no warm-up; random resized crop + horizontal flip for training, resize
   (shorter side S x 256/224) + centre crop for evaluation; 60 epochs on 1% of the labels,
   30 on 10% and on all of them (BYOL: 30 and 50).
   Small-data adaptations (ours): batch `min(256, subset size)` instead of 4096/1024 (a
   1% subset of Fashion-MNIST is 600 images), with the learning rate scaled by the same
   rule; cosine decay of the learning rate to 0 over the run (the papers do not state a
   schedule in the text we restate; cosine is our linear probe's); the head is
   initialised N(0, 0.01) with the seed.
4. Result: top-1 / top-5 on the full evaluation split, as the other probes' JSON
   (`finetune_1pct.json`), the ids (`finetune_1pct_ids.json`) and the fine-tuned
   classifier (`finetune_1pct.keras`, a `LinearClassifier`: `evaluate classifier`,
   `export --classifier` and `care_tf.to_keras_hub(..., classifier=...)` read it).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

BASE_LR = 0.05  # x batch / 256
MOMENTUM = 0.9
BATCH_SIZE = 256


def recipe_epochs(fraction: float) -> int:
    """SimCLR's fine-tuning epochs: 60 for 1% of the labels (or fewer), else 30."""
    return 60 if fraction <= 0.01 else 30


def fraction_name(fraction: float) -> str:
    """`finetune_1pct` for 0.01, `finetune_10pct` for 0.1, `finetune_0.5pct` for 0.005."""
    return f"finetune_{round(fraction * 100, 6):g}pct"


def label_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted ids of a class-balanced, seeded subset of `labels`.

    Args:
        labels: int (N,). Class of each image of the split, in its unshuffled order.
        fraction: float in (0, 1]. Share of the labels to keep.
        seed: int. Subset seed.

    Returns:
        int64 (M,) ascending ids: `round(fraction * N / C)` (>= 1) per class, drawn
        without replacement (a smaller class gives all it has); every id for 1.0.
    """
    labels = np.asarray(labels).reshape(-1)
    if not 0 < fraction <= 1:
        raise ValueError(f"`fraction` must be in (0, 1]. Received: fraction={fraction}")
    if fraction == 1:
        return np.arange(len(labels), dtype=np.int64)
    classes = np.unique(labels)
    per_class = max(1, int(round(fraction * len(labels) / len(classes))))
    rng = np.random.default_rng(seed)
    chosen = []
    for c in classes:
        ids = np.flatnonzero(labels == c)
        chosen.append(rng.choice(ids, min(per_class, len(ids)), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def split_labels(source) -> np.ndarray:
    """Every label of a Source, in its unshuffled order (read once for non-array sources)."""
    labels = getattr(source, "labels", None)
    if labels is not None:
        return np.asarray(labels, np.int64).reshape(-1)
    ds = source.as_dataset(shuffle=False).map(lambda e: e["label"])
    return np.fromiter(ds.as_numpy_iterator(), dtype=np.int64)


def subset_source(source, ids: np.ndarray):
    """The images `ids` of `source` as a Source (same classes and names)."""
    from care_tf.data.sources import ArraySource, Source

    ids = np.asarray(ids, np.int64)
    if isinstance(source, ArraySource):
        return dataclasses.replace(
            source, images=source.images[ids], labels=source.labels[ids], num_examples=len(ids)
        )

    @dataclasses.dataclass
    class SubsetSource(Source):
        base: Source | None = None
        keep: np.ndarray | None = None

        def as_dataset(self, input_context=None, *, shuffle=False, seed=None, **_):
            keep = tf.constant(self.keep, tf.int64)
            table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(keep, tf.ones_like(keep)), default_value=0
            )
            ds = self.base.as_dataset(shuffle=False).enumerate()
            ds = ds.filter(lambda i, _: table.lookup(i) > 0).map(lambda _, e: e)
            if shuffle:
                ds = ds.shuffle(len(self.keep), seed=seed, reshuffle_each_iteration=True)
            return ds

    return SubsetSource(
        name=source.name,
        split=source.split,
        files=source.files,
        num_examples=len(ids),
        num_classes=source.num_classes,
        class_names=source.class_names,
        skip_corrupt=source.skip_corrupt,
        base=source,
        keep=ids,
    )


def finetune_model(backbone: keras.Model, num_classes: int, seed: int = 0) -> keras.Model:
    """Images -> logits: our multi-output backbone (trainable) and one Dense layer.

    Args:
        backbone: keras.Model. A CARE backbone (dict output with "pooled").
        num_classes: int.
        seed: int. Seed of the head's N(0, 0.01) initialiser.
    """
    backbone.trainable = True
    head = keras.Sequential(
        [
            keras.layers.Dense(
                num_classes,
                kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01, seed=seed),
                name="fc",
            )
        ],
        name="finetune_head",
    )
    inputs = keras.Input(backbone.input_shape[1:], name="images")
    logits = head(backbone(inputs)["pooled"])
    model = keras.Model(inputs, logits, name="finetune")
    model.care_backbone, model.care_head = backbone, head
    return model


def finetune_optimizer(learning_rate: float, total_steps: int) -> keras.optimizers.Optimizer:
    """SGD, Nesterov momentum 0.9, no weight decay, cosine decay to 0 over `total_steps`."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, total_steps))
    return keras.optimizers.SGD(schedule, momentum=MOMENTUM, nesterov=True)


def finetune(
    backbone: keras.Model,
    train_data: tf.data.Dataset,
    *,
    num_classes: int,
    steps_per_epoch: int,
    epochs: int,
    learning_rate: float,
    seed: int = 0,
    verbose: int | str = 0,
) -> tuple[keras.Model, dict]:
    """Fine-tunes `backbone` and a new linear head on `train_data` (batched, augmented).

    Returns:
        `(classifier, history)`: a `LinearClassifier` (backbone + head, for inference,
        export and `to_keras_hub`) and the per-epoch loss / top1 / top5.
    """
    from care_tf.evaluate.linear import LinearClassifier

    model = finetune_model(backbone, num_classes, seed)
    model.compile(
        optimizer=finetune_optimizer(learning_rate, steps_per_epoch * epochs),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
        ],
    )
    history = model.fit(
        train_data.repeat(),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        verbose=verbose,
        shuffle=False,
    )
    classifier = LinearClassifier(model.care_backbone, model.care_head, name="classifier")
    return classifier, history.history


def _load_feature_maps(model_dir: str) -> keras.Model:
    import os

    from care_tf.model_dir import load_feature_model
    from care_tf.transfer.keras_hub_bridge import TransferError

    if not os.path.exists(model_dir):
        raise TransferError(f"--model_dir {model_dir!r} does not exist.")
    try:
        return load_feature_model(model_dir)
    except (FileNotFoundError, ValueError) as err:
        raise TransferError(f"--model_dir: {err}") from None


def run_finetune(
    model_dir: str,
    dataset: str,
    *,
    label_fraction: float,
    out: str,
    train_split: str = "train",
    eval_split: str = "test",
    data_dir: str | None = None,
    image_size: int | None = None,
    batch_size: int = BATCH_SIZE,
    epochs: int | None = None,
    learning_rate: float | None = None,
    seed: int = 0,
    verbose: int | str = 0,
) -> dict:
    """Fine-tunes the run's backbone on a label subset and evaluates it (module docstring).

    Args:
        model_dir: str. A run directory or a `.keras` backbone / CARE model file.
        dataset: str. A data spec (`fashion_mnist`, `tfds:NAME`, `folder:/path`, ...).
        label_fraction: float in (0, 1]. Share of the training labels used.
        out: str. Directory for `finetune_<p>pct.json`, `..._ids.json`, `....keras`.
        train_split, eval_split, data_dir: where the data is.
        image_size: int. Input size; defaults to the backbone's.
        batch_size: int. Largest batch (the subset's size caps it). Defaults to 256.
        epochs: int. Defaults to `recipe_epochs(label_fraction)`.
        learning_rate: float. Peak lr; defaults to 0.05 x batch / 256.
        seed: int. Subset, head, shuffling and crop seed.

    Returns:
        The results dict (as written to the JSON), with `paths`.

    Raises:
        TransferError: a missing run, an unlabelled dataset, a bad fraction.
    """
    import os
    import time

    from care_tf import atomic
    from care_tf.data import load_source, make_eval_dataset
    from care_tf.evaluate.linear import predict_scores
    from care_tf.evaluate.report import classification_report, plot_confusion_matrix, write_json
    from care_tf.transfer.keras_hub_bridge import TransferError

    start = time.time()
    if not 0 < label_fraction <= 1:
        raise TransferError(
            f"--label_fraction must be in (0, 1] (e.g. 0.01, 0.1, 1.0); got {label_fraction}."
        )
    backbone = _load_feature_maps(model_dir)
    size = image_size or backbone.input_shape[1] or 224
    try:
        train_source = load_source(dataset, train_split, data_dir=data_dir)
        eval_source = load_source(dataset, eval_split, data_dir=data_dir)
    except (ValueError, FileNotFoundError, OSError) as err:
        raise TransferError(f"--dataset {dataset!r}: {err}") from None
    if not train_source.labelled or not train_source.num_classes:
        raise TransferError(
            f"--dataset {dataset!r} split {train_split!r} has no labels; fine-tuning needs a "
            "labelled dataset (e.g. class sub-folders for folder:/path)."
        )
    ids = label_subset(split_labels(train_source), label_fraction, seed)
    batch = min(batch_size, len(ids))
    lr = learning_rate if learning_rate is not None else BASE_LR * batch / 256
    epochs = epochs or recipe_epochs(label_fraction)
    train_ds = make_eval_dataset(
        subset_source(train_source, ids),
        split=train_split,
        train=True,
        image_size=size,
        batch_size=batch,
        seed=seed,
    )
    classifier, history = finetune(
        backbone,
        train_ds,
        num_classes=train_source.num_classes,
        steps_per_epoch=len(ids) // batch,
        epochs=epochs,
        learning_rate=lr,
        seed=seed,
        verbose=verbose,
    )
    eval_ds = make_eval_dataset(
        eval_source, split=eval_split, train=False, image_size=size, batch_size=batch_size
    )
    scores, labels = predict_scores(classifier, eval_ds)
    report = classification_report(scores, labels, eval_source.class_names)
    stem = os.path.join(out, fraction_name(label_fraction))
    paths = {
        "json": f"{stem}.json",
        "ids": f"{stem}_ids.json",
        "classifier": f"{stem}.keras",
        "confusion_matrix": f"{stem}_confusion.png",
    }
    results = {
        "protocol": "finetune",
        "model_dir": model_dir,
        "dataset": dataset,
        "train_split": train_split,
        "eval_split": eval_split,
        "label_fraction": label_fraction,
        "num_train": int(len(ids)),
        "config": {
            "epochs": epochs,
            "batch_size": batch,
            "lr": lr,
            "optimizer": f"SGD nesterov momentum {MOMENTUM}, cosine to 0, no weight decay",
            "image_size": int(size),
            "seed": seed,
        },
        **report,
        "history": {k: [float(v) for v in vals] for k, vals in history.items()},
        "seconds": round(time.time() - start, 1),
    }
    os.makedirs(out, exist_ok=True)
    atomic.write_json(
        paths["ids"],
        {"dataset": dataset, "split": train_split, "seed": seed, "ids": ids.tolist()},
    )
    with atomic.replacing(paths["classifier"]) as tmp:
        classifier.save(tmp)
    plot_confusion_matrix(
        results["confusion_matrix"],
        results["class_names"],
        paths["confusion_matrix"],
        title=f"Fine-tuned on {100 * label_fraction:g}% of the labels, {dataset}:{eval_split}",
    )
    write_json(results, paths["json"])
    results["paths"] = paths
    return results
