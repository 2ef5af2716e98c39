"""Multi-object scenes from Fashion-MNIST, written as a COCO-format dataset.

    python -m care_tf.transfer.make_scenes --out data/scenes   # train/ and test/ splits

Each scene is a black `canvas` x `canvas` grey image holding `min_objects..max_objects`
garments, each scaled (nearest neighbour) to a random side in `[min_size, max_size]` px and
pasted at a random position where it overlaps no earlier garment's box. Only a garment's
silhouette (pixels > `SILHOUETTE_THRESHOLD`) is pasted, so the canvas is non-zero exactly on
the union of the masks, a box is the tight bound of its silhouette and a mask is the
silhouette itself. Scenes of the `test` split take garments only from the Fashion-MNIST test
images, `train` scenes only from the training images. A scene is a function of
(seed, split, scene index): the same arguments give the same bytes.

Layout written (atomically: built aside, then renamed into place):

    OUT/train/images/000000.png ...   OUT/train/instances.json
    OUT/test/images/000000.png ...    OUT/test/instances.json

Annotations carry exact `bbox` [x, y, w, h], `area` (mask pixels), an RLE `segmentation`,
and, beyond COCO, `source_index` (the garment's index in its Fashion-MNIST split) and
`scaled_size` (its side after scaling, px).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil

import numpy as np

from care_tf import atomic

SILHOUETTE_THRESHOLD = 0  # a garment pixel is part of its silhouette when above this
SPLITS = ("train", "test")
_SPLIT_KEYS = {"train": 0, "test": 1}
_MAX_TRIES = 50  # placements tried per garment before the scene keeps fewer garments


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    """How scenes are drawn.

    Attributes:
        canvas: int. Scene side in px.
        min_objects, max_objects: int. Garments per scene (fewer only when no free spot).
        min_size, max_size: int. Side of a scaled garment (28 x 28 -> s x s) in px.
        seed: int. Master seed.
    """

    canvas: int = 128
    min_objects: int = 2
    max_objects: int = 5
    min_size: int = 20
    max_size: int = 56
    seed: int = 0

    def check(self) -> None:
        """Raises ValueError naming the bad field."""
        if self.canvas < 8:
            raise ValueError(f"canvas must be >= 8 px; got {self.canvas}.")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects; got {self.min_objects}, {self.max_objects}."
            )
        if not 4 <= self.min_size <= self.max_size <= self.canvas:
            raise ValueError(
                f"need 4 <= min_size <= max_size <= canvas; got {self.min_size}, "
                f"{self.max_size}, canvas {self.canvas}."
            )


def scale_garment(image: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) image to (size, size): pixel (i, j) takes
    source pixel (i * h // size, j * w // size)."""
    h, w = image.shape
    rows = np.arange(size) * h // size
    cols = np.arange(size) * w // size
    return image[rows[:, None], cols[None, :]]


def _overlaps(box, boxes) -> bool:
    y0, x0, y1, x1 = box
    return any(y0 < b1 and b0 < y1 and x0 < c1 and c0 < x1 for b0, c0, b1, c1 in boxes)


def make_scene(
    images: np.ndarray, labels: np.ndarray, spec: SceneSpec, split: str, index: int
) -> tuple[np.ndarray, list[dict]]:
    """One scene from garments of `images` (uint8 (N, 28, 28)).

    Returns:
        `(canvas uint8 (canvas, canvas), objects)`; each object holds `label`,
        `source_index`, `size` (scaled side), `box` (y0, x0, y1, x1) exclusive ends,
        `mask` bool (canvas, canvas).
    """
    rng = np.random.default_rng([spec.seed, _SPLIT_KEYS[split], index])
    canvas = np.zeros((spec.canvas, spec.canvas), np.uint8)
    count = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    objects, boxes = [], []
    for _ in range(count):
        source = int(rng.integers(len(images)))
        size = int(rng.integers(spec.min_size, spec.max_size + 1))
        garment = scale_garment(images[source], size)
        silhouette = garment > SILHOUETTE_THRESHOLD
        if not silhouette.any():
            continue
        rows = np.flatnonzero(silhouette.any(axis=1))
        cols = np.flatnonzero(silhouette.any(axis=0))
        top, left = int(rows[0]), int(cols[0])
        height, width = int(rows[-1]) + 1 - top, int(cols[-1]) + 1 - left
        for _ in range(_MAX_TRIES):
            y = int(rng.integers(0, spec.canvas - height + 1))
            x = int(rng.integers(0, spec.canvas - width + 1))
            box = (y, x, y + height, x + width)
            if not _overlaps(box, boxes):
                break
        else:
            continue
        crop = silhouette[top : top + height, left : left + width]
        mask = np.zeros_like(canvas, bool)
        mask[y : y + height, x : x + width] = crop
        canvas[mask] = garment[top : top + height, left : left + width][crop]
        boxes.append(box)
        objects.append(
            {
                "label": int(labels[source]),
                "source_index": source,
                "size": size,
                "box": box,
                "mask": mask,
            }
        )
    return canvas, objects


def _png_bytes(canvas: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(canvas, mode="L").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def scenes_coco(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    spec: SceneSpec,
    split: str,
    num_scenes: int,
    folder: str,
) -> dict:
    """Writes `num_scenes` scenes as `folder/images/NNNNNN.png`; returns their COCO dict."""
    from pycocotools import mask as mask_utils

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    coco_images, annotations = [], []
    for index in range(num_scenes):
        canvas, objects = make_scene(images, labels, spec, split, index)
        name = f"images/{index:06d}.png"
        with open(os.path.join(folder, name), "wb") as f:
            f.write(_png_bytes(canvas))
        image_id = index + 1
        coco_images.append(
            {"id": image_id, "file_name": name, "width": spec.canvas, "height": spec.canvas}
        )
        for obj in objects:
            rle = mask_utils.encode(np.asfortranarray(obj["mask"].astype(np.uint8)))
            y0, x0, y1, x1 = obj["box"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj["label"] + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int(obj["mask"].sum()),
                    "iscrowd": 0,
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                    "source_index": obj["source_index"],
                    "scaled_size": obj["size"],
                }
            )
    return {
        "info": {
            "description": f"Fashion-MNIST scenes ({split} split), care_tf.transfer.scenes",
            "scene_spec": dataclasses.asdict(spec),
            "source_split": split,
        },
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(class_names)],
    }


def write_scenes(
    out: str,
    spec: SceneSpec,
    num_train: int,
    num_test: int,
    *,
    data_dir: str | None = None,
    splits: dict | None = None,
) -> dict[str, str]:
    """Builds both splits and publishes them as `out/` (replacing an old one atomically).

    Args:
        out: str. Output folder.
        spec: SceneSpec.
        num_train, num_test: int. Scenes per split (0 skips the split).
        data_dir: Fashion-MNIST folder (default: `care_tf.data.load_fashion_mnist`'s).
        splits: optional {"train": (images, labels), "test": ...} instead of reading
            Fashion-MNIST (tests).

    Returns:
        {split: path of its instances.json}.
    """
    from care_tf.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist

    spec.check()
    counts = {"train": num_train, "test": num_test}
    if any(n < 0 for n in counts.values()) or not any(counts.values()):
        raise ValueError(f"scene counts must be >= 0 and not all 0; got {counts}.")
    out = os.path.abspath(out)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = atomic.aside_path(out)
    try:
        written = {}
        for split in SPLITS:
            if not counts[split]:
                continue
            if splits is not None:
                images, labels = splits[split]
            else:
                images, labels = load_fashion_mnist(split, data_dir)
            folder = os.path.join(tmp, split)
            coco = scenes_coco(
                images, labels, list(CLASS_NAMES), spec, split, counts[split], folder
            )
            with open(os.path.join(folder, "instances.json"), "w", encoding="utf-8") as f:
                json.dump(coco, f)
            written[split] = os.path.join(out, split, "instances.json")
        atomic.publish_dir(tmp, out)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return written
