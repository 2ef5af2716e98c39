"""COCO-format datasets: read and validate an instances JSON, masks, tf.data pipelines.

    coco = load_coco("scenes/test/instances.json", "scenes/test/images", require_masks=True)
    coco.num_classes, coco.class_names        # contiguous labels 0..C-1 in category-id order
    ds = detection_dataset(coco, image_size=128, batch_size=8)   # (images, {"boxes", "labels"})
    ds = segmentation_dataset(coco, image_size=128, batch_size=8)  # (images, masks (B, S, S, 1))

A COCO instances file holds `images` (id, file_name, width, height), `annotations`
(id, image_id, category_id, bbox = [x, y, w, h] in pixels, optional `segmentation` as
polygons or RLE, optional `iscrowd`) and `categories` (id, name). `load_coco` checks all of
it before anything is trained or written and stops at the first problem with one line
naming the file, the entry and the fix (`CocoFormatError`). Images without annotations are
legal (negatives).

Images are resized to a square `image_size` (aspect ratio not kept) and normalised with the
ImageNet mean / std, like `care_tf.data.make_eval_dataset`; boxes are scaled with them and
given as `yxyx` pixels of the resized image, padded with -1 (label -1) to the largest count
in the set. Masks come from `pycocotools.mask`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from care_tf.cli_errors import UsageError

BACKGROUND = 0  # semantic-mask value of pixels outside every object
IGNORE = 255  # semantic-mask value of crowd regions (not scored)
BOX_TOLERANCE = 1.0  # px a box may stick out of its image (float rounding in real COCO files)


class CocoFormatError(UsageError):
    """A COCO dataset that cannot be used; the message names the file, the entry and the fix."""


@dataclasses.dataclass(frozen=True)
class CocoSet:
    """A validated COCO-format dataset.

    Attributes:
        annotations_path: str. The instances JSON.
        images_dir: str. Folder the images' `file_name`s are relative to.
        images: list of image records (dicts with `id`, `file_name`, `width`, `height`),
            in file order.
        annotations: dict image id -> list of its annotation records.
        categories: list of category records sorted by id.
        data: the whole JSON (ground truth for pycocotools).
    """

    annotations_path: str
    images_dir: str
    images: list
    annotations: dict
    categories: list
    data: dict

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def class_names(self) -> list[str]:
        return [str(c.get("name", c["id"])) for c in self.categories]

    @property
    def category_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.categories]

    def label_of(self, category_id: int) -> int:
        """Contiguous label (0..C-1) of a category id."""
        return self.category_ids.index(int(category_id))

    def image_path(self, image: dict) -> str:
        return os.path.join(self.images_dir, image["file_name"])

    def __len__(self) -> int:
        return len(self.images)


def _fail(path: str, message: str) -> CocoFormatError:
    return CocoFormatError(f"{path}: {message}")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_segmentation(path: str, ann: dict, image: dict) -> None:
    seg = ann.get("segmentation")
    where = f"annotation id {ann.get('id')}"
    if isinstance(seg, list):
        if not seg or not all(
            isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 and all(map(_is_number, p))
            for p in seg
        ):
            raise _fail(
                path,
                f"{where} has a malformed polygon segmentation; each polygon must be a list "
                "of at least 3 x, y pairs.",
            )
    elif isinstance(seg, dict):
        size = seg.get("size")
        if not (isinstance(seg.get("counts"), list | str) and isinstance(size, list)):
            raise _fail(path, f"{where} has a malformed RLE segmentation (needs counts and size).")
        if list(size) != [image["height"], image["width"]]:
            raise _fail(
                path,
                f"{where}: RLE size {size} differs from its image's "
                f"[height, width] = [{image['height']}, {image['width']}].",
            )
    else:
        raise _fail(
            path,
            f"{where} has no segmentation (polygons or RLE); segmentation needs a mask on "
            "every annotation.",
        )


def validate_coco(
    data, annotations_path: str, images_dir: str, *, require_masks: bool = False
) -> CocoSet:
    """Checks a parsed COCO instances JSON; returns it as a `CocoSet`.

    Raises:
        CocoFormatError: on the first problem (not COCO, a missing image file, a box
            outside its image or of zero area, an unknown category or image id, a
            missing or malformed mask when `require_masks`).
    """
    path = annotations_path
    keys = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in keys):
        raise _fail(
            path,
            "not a COCO instances file: it needs 'images', 'annotations' and 'categories' "
            "lists at the top level.",
        )
    categories = data["categories"]
    if not categories:
        raise _fail(path, "'categories' is empty; list at least one {id, name}.")
    category_ids = set()
    for cat in categories:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
            raise _fail(path, f"category {cat!r} has no integer 'id'.")
        if cat["id"] in category_ids:
            raise _fail(path, f"category id {cat['id']} appears twice.")
        category_ids.add(cat["id"])
    images = {}
    for image in data["images"]:
        if not isinstance(image, dict) or not isinstance(image.get("id"), int):
            raise _fail(path, f"image entry {str(image)[:80]} has no integer 'id'.")
        where = f"image id {image['id']}"
        if image["id"] in images:
            raise _fail(path, f"{where} appears twice in 'images'.")
        if not isinstance(image.get("file_name"), str):
            raise _fail(path, f"{where} has no 'file_name'.")
        for key in ("width", "height"):
            if not isinstance(image.get(key), int) or image[key] < 1:
                raise _fail(path, f"{where} needs a positive integer '{key}'.")
        file = os.path.join(images_dir, image["file_name"])
        if not os.path.isfile(file):
            raise _fail(
                path,
                f"{where} names {file}, which does not exist; check the images folder "
                f"({images_dir}) or the file_name.",
            )
        images[image["id"]] = image
    per_image = {i: [] for i in images}
    ann_ids = set()
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            raise _fail(path, f"annotation {str(ann)[:80]} is not an object.")
        where = f"annotation id {ann.get('id')}"
        if ann.get("id") in ann_ids:
            raise _fail(path, f"{where} appears twice.")
        ann_ids.add(ann.get("id"))
        image = images.get(ann.get("image_id"))
        if image is None:
            raise _fail(path, f"{where} names image_id {ann.get('image_id')!r}, not in 'images'.")
        if ann.get("category_id") not in category_ids:
            raise _fail(
                path,
                f"{where} has unknown category_id {ann.get('category_id')!r}; "
                f"the categories are {sorted(category_ids)}.",
            )
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
            raise _fail(path, f"{where} needs 'bbox' = [x, y, width, height] in pixels.")
        x, y, w, h = box
        if w <= 0 or h <= 0:
            raise _fail(path, f"{where} has a zero-area box {box}; width and height must be > 0.")
        t = BOX_TOLERANCE
        if x < -t or y < -t or x + w > image["width"] + t or y + h > image["height"] + t:
            raise _fail(
                path,
                f"{where} box {box} (x, y, w, h) lies outside its "
                f"{image['width']}x{image['height']} image {image['file_name']}.",
            )
        if require_masks or "segmentation" in ann:
            _check_segmentation(path, ann, image)
        per_image[image["id"]].append(ann)
    return CocoSet(
        annotations_path=annotations_path,
        images_dir=images_dir,
        images=list(images.values()),
        annotations=per_image,
        categories=sorted(categories, key=lambda c: c["id"]),
        data=data,
    )


def load_coco(annotations_path: str, images_dir: str, *, require_masks: bool = False) -> CocoSet:
    """Reads and validates a COCO instances JSON whose images lie under `images_dir`.

    Raises:
        CocoFormatError: a missing or unreadable file, or any problem `validate_coco` finds.
    """
    if not os.path.isfile(annotations_path):
        raise CocoFormatError(f"{annotations_path}: no such annotations file.")
    if not os.path.isdir(images_dir):
        raise CocoFormatError(f"{images_dir}: no such images folder.")
    try:
        with open(annotations_path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        msg = f"not valid JSON ({e}); expected a COCO instances file."
        raise _fail(annotations_path, msg) from e
    return validate_coco(data, annotations_path, images_dir, require_masks=require_masks)


# ------------------------------------------------------------------------ masks
def instance_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    """uint8 (height, width) 0/1 mask of an annotation's polygons or RLE."""
    from pycocotools import mask as mask_utils

    seg = annotation["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = dict(seg, counts=seg["counts"].encode("ascii"))
    return np.asarray(mask_utils.decode(rle), np.uint8)


def semantic_mask(coco: CocoSet, image: dict) -> np.ndarray:
    """uint8 (height, width): 0 background, label + 1 on each object, 255 on crowds.

    Objects are painted largest first, so a smaller one lying on a larger one stays visible.
    """
    height, width = image["height"], image["width"]
    out = np.full((height, width), BACKGROUND, np.uint8)
    anns = sorted(coco.annotations[image["id"]], key=lambda a: -a["bbox"][2] * a["bbox"][3])
    for ann in anns:
        mask = instance_mask(ann, height, width).astype(bool)
        out[mask] = IGNORE if ann.get("iscrowd") else coco.label_of(ann["category_id"]) + 1
    return out


def box_targets(coco: CocoSet, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded detection targets of every image, in the resized image's pixels.

    Crowd annotations are left out (COCO scores them as "ignore").

    Returns:
        `(boxes float32 (N, M, 4) yxyx, labels int32 (N, M))`, M = the largest object
        count (at least 1), padding boxes -1 and labels -1.
    """
    counts = [sum(not a.get("iscrowd") for a in coco.annotations[im["id"]]) for im in coco.images]
    m = max([1, *counts])
    boxes = np.full((len(coco), m, 4), -1.0, np.float32)
    labels = np.full((len(coco), m), -1, np.int32)
    for i, image in enumerate(coco.images):
        sy, sx = image_size / image["height"], image_size / image["width"]
        anns = [a for a in coco.annotations[image["id"]] if not a.get("iscrowd")]
        for j, ann in enumerate(anns):
            x, y, w, h = ann["bbox"]
            boxes[i, j] = [y * sy, x * sx, (y + h) * sy, (x + w) * sx]
            labels[i, j] = coco.label_of(ann["category_id"])
    np.clip(boxes, -1.0, image_size, out=boxes)
    return boxes, labels


# -------------------------------------------------------------------- tf.data
def _image_dataset(coco: CocoSet, image_size: int):
    """Dataset of normalised float32 (S, S, 3) images, in `coco.images` order."""
    import tensorflow as tf

    from care_tf.constants import IMAGENET_MEAN, IMAGENET_STD

    mean = tf.constant(IMAGENET_MEAN, tf.float32)
    std = tf.constant(IMAGENET_STD, tf.float32)
    paths = [coco.image_path(im) for im in coco.images]

    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(tf.cast(image, tf.float32), (image_size, image_size))
        image = tf.clip_by_value(image / 255.0, 0.0, 1.0)
        image.set_shape([image_size, image_size, 3])
        return (image - mean) / std

    return tf.data.Dataset.from_tensor_slices(paths).map(
        load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )


def _finish(ds, batch_size: int, shuffle: bool, seed: int, size: int, flip=None):
    """Shuffles (seeded, anew each epoch), applies `flip(example, coin)` with a fresh
    seeded coin (a scalar bool, true half of the time) per example and epoch, batches."""
    import tensorflow as tf

    if shuffle:
        ds = ds.shuffle(min(size, 4096), seed=seed, reshuffle_each_iteration=True)
    if flip is not None:
        coins = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, coins)).map(lambda example, r: flip(example, r % 2 == 1))
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def flip_boxes(boxes, labels, image_size: int):
    """Mirrors `(M, 4)` yxyx px boxes left-right in an image `image_size` px wide; padding
    rows (label -1) stay -1."""
    import tensorflow as tf

    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    mirrored = tf.stack([y1, image_size - x2, y2, image_size - x1], axis=-1)
    return tf.where((labels >= 0)[:, None], mirrored, boxes)


def image_dataset(coco: CocoSet, image_size: int, batch_size: int):
    """Batches of normalised images (B, S, S, 3) in `coco.images` order (for prediction)."""
    return _finish(_image_dataset(coco, image_size), batch_size, False, 0, len(coco))


def detection_dataset(
    coco: CocoSet,
    image_size: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    flip: bool = False,
    seed: int = 0,
):
    """Batches of `(images (B, S, S, 3), {"boxes": (B, M, 4) yxyx px, "labels": (B, M)})`;
    `flip`: each image and its boxes mirrored left-right with probability 1/2 (training)."""
    import tensorflow as tf

    boxes, labels = box_targets(coco, image_size)
    targets = tf.data.Dataset.from_tensor_slices({"boxes": boxes, "labels": labels})
    ds = tf.data.Dataset.zip((_image_dataset(coco, image_size), targets))

    def mirror(example, coin):
        image, target = example
        mirrored = flip_boxes(target["boxes"], target["labels"], image_size)
        return (
            tf.where(coin, tf.reverse(image, [1]), image),
            {"boxes": tf.where(coin, mirrored, target["boxes"]), "labels": target["labels"]},
        )

    return _finish(ds, batch_size, shuffle, seed, len(coco), mirror if flip else None)


def segmentation_dataset(
    coco: CocoSet,
    image_size: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    flip: bool = False,
    seed: int = 0,
):
    """Batches of `(images (B, S, S, 3), masks uint8 (B, S, S, 1))`, masks as
    `semantic_mask` resized with nearest neighbours; `flip`: each image and its mask
    mirrored left-right with probability 1/2 (training)."""
    import tensorflow as tf

    def mask_of(index):
        image = coco.images[int(index)]
        return semantic_mask(coco, image)[..., None]

    def load_mask(index):
        mask = tf.numpy_function(mask_of, [index], tf.uint8)
        mask.set_shape([None, None, 1])
        mask = tf.image.resize(mask, (image_size, image_size), method="nearest")
        return tf.ensure_shape(tf.cast(mask, tf.uint8), [image_size, image_size, 1])

    masks = tf.data.Dataset.range(len(coco)).map(load_mask)
    ds = tf.data.Dataset.zip((_image_dataset(coco, image_size), masks))

    def mirror(example, coin):
        return tuple(tf.where(coin, tf.reverse(x, [1]), x) for x in example)

    return _finish(ds, batch_size, shuffle, seed, len(coco), mirror if flip else None)


def check_same_categories(train: CocoSet, test: CocoSet) -> None:
    """Raises ValueError unless both splits list the same category table (a model trained
    on one is scored on the other's category ids)."""
    if train.category_ids != test.category_ids:
        raise ValueError(
            f"{train.annotations_path} and {test.annotations_path} list different categories "
            f"({train.category_ids} vs {test.category_ids}); use the same category table."
        )


def subset(coco: CocoSet, limit: int) -> CocoSet:
    """The first `limit` images of `coco` (file order) and their annotations."""
    images = coco.images[:limit]
    keep = {im["id"] for im in images}
    data = dict(
        coco.data,
        images=images,
        annotations=[a for a in coco.data["annotations"] if a["image_id"] in keep],
    )
    annotations = {i: coco.annotations[i] for i in keep}
    return dataclasses.replace(coco, images=images, annotations=annotations, data=data)


def split_files(root: str, split: str) -> tuple[str, str]:
    """(instances JSON, images folder) of `split` under a COCO-format dataset folder.

    Two layouts are recognised: `ROOT/SPLIT/instances.json` with file names relative to
    `ROOT/SPLIT` (what `make_scenes` writes), and COCO 2017's
    `ROOT/annotations/instances_SPLIT.json` with images in `ROOT/SPLIT/`.

    Raises:
        CocoFormatError: neither layout is there.
    """
    candidates = [
        (os.path.join(root, split, "instances.json"), os.path.join(root, split)),
        (os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split)),
    ]
    for json_path, images_dir in candidates:
        if os.path.isfile(json_path):
            return json_path, images_dir
    raise CocoFormatError(
        f"{root}: no split {split!r}: expected {candidates[0][0]} or {candidates[1][0]} "
        "(check --dataset and the split names)."
    )
