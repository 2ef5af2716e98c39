"""Prepared TFDS detection datasets (`coco/2017`, `voc/2012`, ...) as COCO-format folders.

    coco = tfds_split("coco/2017", "validation", data_dir="~/tensorflow_datasets")

A split is exported once, as `CACHE/NAME/VERSION/SPLIT/{images/, instances.json}` (the
encoded images as stored, boxes converted from TFDS's relative `ymin, xmin, ymax, xmax`
to COCO pixels), and then read by `care_tf.transfer.coco.load_coco` like any other
COCO-format folder. `CACHE` is `$CARE_CACHE_DIR/tfds_coco`, else
`~/.cache/care_tf/tfds_coco`. TFDS detection datasets carry boxes only (no instance masks),
so they serve `detect`, not `segment`. Nothing is downloaded here: an unprepared dataset
ends in one line saying how to prepare it.
"""

from __future__ import annotations

import json
import os
import shutil

from care_tf import atomic
from care_tf.cli_errors import UsageError


def cache_root() -> str:
    base = os.environ.get("CARE_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "care_tf"
    )
    return os.path.join(base, "tfds_coco")


def _image_size(encoded: bytes) -> tuple[int, int]:
    """(height, width) of an encoded image without decoding its pixels when it is a JPEG."""
    import tensorflow as tf

    if encoded[:2] == b"\xff\xd8":
        shape = tf.image.extract_jpeg_shape(encoded).numpy()
    else:
        shape = tf.shape(tf.io.decode_image(encoded, channels=3)).numpy()
    return int(shape[0]), int(shape[1])


def examples_to_coco(examples, class_names: list[str], folder: str) -> dict:
    """Writes TFDS detection examples as `folder/images/*` and returns their COCO dict.

    Args:
        examples: iterable of dicts of NumPy values: `image` (encoded bytes), optional
            `image/id`, `objects` with `bbox` float (K, 4) relative ymin, xmin, ymax, xmax,
            `label` int (K,), optional `is_crowd` bool (K,).
        class_names: names of labels 0..C-1 (category ids are label + 1).
        folder: output folder (created).

    Boxes are clipped to the image; those left with no area are dropped (counted in
    `info.dropped_boxes`).
    """
    import numpy as np

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    images, annotations, dropped = [], [], 0
    for index, example in enumerate(examples):
        encoded = bytes(example["image"])
        height, width = _image_size(encoded)
        ext = ".jpg" if encoded[:2] == b"\xff\xd8" else ".png"
        name = f"images/{index:07d}{ext}"
        with open(os.path.join(folder, name), "wb") as f:
            f.write(encoded)
        image_id = index + 1
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        objects = example["objects"]
        boxes = np.clip(np.asarray(objects["bbox"], np.float64).reshape(-1, 4), 0.0, 1.0)
        crowd = np.asarray(objects.get("is_crowd", np.zeros(len(boxes), bool)), bool)
        for box, label, is_crowd in zip(boxes, np.asarray(objects["label"]), crowd, strict=True):
            y0, x0, y1, x1 = box * [height, width, height, width]
            if y1 - y0 <= 0 or x1 - x0 <= 0:
                dropped += 1
                continue
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label) + 1,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float((x1 - x0) * (y1 - y0)),
                    "iscrowd": int(is_crowd),
                }
            )
    return {
        "info": {"dropped_boxes": dropped},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)],
    }


def tfds_split(name: str, split: str, data_dir: str | None, *, require_masks: bool = False):
    """A prepared TFDS detection split as a validated `CocoSet` (exported once, cached).

    Raises:
        UsageError: TFDS missing, an unknown dataset or split, a dataset that is not
            prepared in `data_dir` (with the command that prepares it), or masks asked of
            a dataset that has none.
    """
    from care_tf.transfer.coco import load_coco

    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise UsageError(
            "tfds:NAME needs tensorflow-datasets (pip install tensorflow-datasets)."
        ) from e
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises DatasetNotFoundError and friends
        raise UsageError(f"--dataset tfds:{name}: {str(e).splitlines()[0]}") from e
    features = builder.info.features
    objects = features["objects"] if "objects" in features else None
    if objects is None or "bbox" not in objects.feature or "label" not in objects.feature:
        raise UsageError(
            f"--dataset tfds:{name} has no objects/bbox and objects/label; detection "
            "needs a TFDS detection dataset (coco/2017, voc/2012) or a coco:ROOT folder."
        )
    if require_masks:
        raise UsageError(
            f"--dataset tfds:{name} has boxes but no instance masks; segment needs a "
            "COCO-format folder with polygon or RLE masks (--dataset coco:ROOT)."
        )
    if not builder.is_prepared():
        raise UsageError(
            f"--dataset tfds:{name} is not prepared in {builder.data_dir_root}: prepare it "
            f"once with `tfds build {name} --data_dir DIR` (downloads the data; COCO 2017 "
            "is about 25 GB) and pass --data_dir DIR."
        )
    if split not in builder.info.splits:
        raise UsageError(
            f"--dataset tfds:{name} has no split {split!r}; it has {sorted(builder.info.splits)}."
        )
    version = str(builder.info.version)
    folder = os.path.join(cache_root(), name.replace("/", "_"), version, split)
    annotations = os.path.join(folder, "instances.json")
    if not os.path.isfile(annotations):
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        tmp = atomic.aside_path(folder)
        try:
            data = examples_to_coco(tfds.as_numpy(ds), list(objects["label"].names), tmp)
            with open(os.path.join(tmp, "instances.json"), "w", encoding="utf-8") as f:
                json.dump(data, f)
            atomic.publish_dir(tmp, folder)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    return load_coco(annotations, folder)
