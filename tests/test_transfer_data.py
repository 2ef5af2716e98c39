"""Fashion-MNIST scenes (care_tf.transfer.scenes) and the COCO-format reader
(care_tf.transfer.coco): exact boxes and masks, determinism, validation errors."""

import copy
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from care_tf.transfer import coco as coco_lib
from care_tf.transfer import make_scenes
from care_tf.transfer.scenes import SceneSpec, write_scenes

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402

SPEC = SceneSpec(canvas=64, min_objects=2, max_objects=4, min_size=12, max_size=30, seed=3)


@pytest.fixture(scope="module")
def fmnist():
    from care_tf.data import load_fashion_mnist

    try:
        return {s: load_fashion_mnist(s) for s in ("train", "test")}
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not found (run `make data`)")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, fmnist):
    out = str(tmp_path_factory.mktemp("scenes") / "s")
    write_scenes(out, SPEC, num_train=6, num_test=5)
    return out


def _read(out, split):
    with open(os.path.join(out, split, "instances.json")) as f:
        data = json.load(f)
    canvases = {
        im["id"]: np.asarray(Image.open(os.path.join(out, split, im["file_name"])))
        for im in data["images"]
    }
    return data, canvases


def _scaled(image, size):
    """Nearest neighbour 28 -> size, written independently of scenes.scale_garment."""
    out = np.zeros((size, size), image.dtype)
    for i in range(size):
        for j in range(size):
            out[i, j] = image[int(np.floor(i * 28 / size)), int(np.floor(j * 28 / size))]
    return out


def _files(folder):
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def test_same_seed_same_bytes_other_seed_differs(scenes, tmp_path):
    again = str(tmp_path / "again")
    write_scenes(again, SPEC, num_train=6, num_test=5)
    first, second = _files(scenes), _files(again)
    assert sorted(first) == sorted(second) and len(first) == 6 + 5 + 2
    assert first == second
    other = str(tmp_path / "other")
    write_scenes(other, SceneSpec(**{**SPEC.__dict__, "seed": 4}), num_train=6, num_test=5)
    assert _files(other) != first


@pytest.mark.parametrize("split", ["train", "test"])
def test_boxes_masks_and_pixels_are_the_pasted_garments(scenes, fmnist, split):
    data, canvases = _read(scenes, split)
    images, labels = fmnist[split]
    assert data["categories"][0] == {"id": 1, "name": "T-shirt/top"}
    union = {i: np.zeros((64, 64), bool) for i in canvases}
    counts = {i: 0 for i in canvases}
    for ann in data["annotations"]:
        canvas = canvases[ann["image_id"]]
        mask = mask_utils.decode(dict(ann["segmentation"], counts=ann["segmentation"]["counts"]))
        mask = mask.astype(bool)
        rows, cols = np.nonzero(mask)
        x, y, w, h = ann["bbox"]
        # The box is the tight bound of the silhouette.
        assert (x, y, x + w, y + h) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        assert ann["area"] == mask.sum()
        # The garment comes from this split, with its label, scaled and pasted at the box.
        source = ann["source_index"]
        assert ann["category_id"] == labels[source] + 1
        garment = _scaled(images[source], ann["scaled_size"])
        on = np.argwhere(garment > 0)
        top, left = on.min(axis=0)
        crop = garment[top : top + h, left : left + w]
        np.testing.assert_array_equal(mask[y : y + h, x : x + w], crop > 0)
        np.testing.assert_array_equal(canvas[y : y + h, x : x + w][crop > 0], crop[crop > 0])
        assert not (union[ann["image_id"]] & mask).any()  # garments never overlap
        union[ann["image_id"]] |= mask
        counts[ann["image_id"]] += 1
    for image_id, canvas in canvases.items():
        np.testing.assert_array_equal(canvas > 0, union[image_id])  # nothing else pasted
        assert SPEC.min_objects <= counts[image_id] <= SPEC.max_objects


def test_test_scenes_use_only_test_images(scenes, fmnist):
    data, canvases = _read(scenes, "test")
    train_images, _ = fmnist["train"]
    test_images, _ = fmnist["test"]
    assert data["info"]["source_split"] == "test"
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        size = ann["scaled_size"]
        patch = canvases[ann["image_id"]][y : y + h, x : x + w]
        as_test = _scaled(test_images[ann["source_index"]], size)
        as_train = _scaled(train_images[ann["source_index"]], size)
        top, left = np.argwhere(as_test > 0).min(axis=0)
        crop = as_test[top : top + h, left : left + w]
        np.testing.assert_array_equal(patch[crop > 0], crop[crop > 0])
        assert not np.array_equal(as_train, as_test)


def test_loader_round_trip(scenes):
    split = os.path.join(scenes, "test")
    found = coco_lib.load_coco(os.path.join(split, "instances.json"), split, require_masks=True)
    data, canvases = _read(scenes, "test")
    assert len(found) == 5 and found.num_classes == 10
    assert found.class_names[9] == "Ankle boot"
    boxes, labels = coco_lib.box_targets(found, 32)  # half size: boxes scale by 0.5
    for i, image in enumerate(found.images):
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        xywh = [a["bbox"] for a in anns]
        expected = [[y / 2, x / 2, (y + h) / 2, (x + w) / 2] for x, y, w, h in xywh]
        np.testing.assert_allclose(boxes[i, : len(anns)], expected)
        assert (boxes[i, len(anns) :] == -1).all() and (labels[i, len(anns) :] == -1).all()
        np.testing.assert_array_equal(labels[i, : len(anns)], [a["category_id"] - 1 for a in anns])
        semantic = coco_lib.semantic_mask(found, image)
        expected_mask = np.zeros((64, 64), np.uint8)
        for a in anns:
            expected_mask[mask_utils.decode(a["segmentation"]).astype(bool)] = a["category_id"]
        np.testing.assert_array_equal(semantic, expected_mask)
    images, masks = next(iter(coco_lib.segmentation_dataset(found, 64, 5)))
    assert images.shape == (5, 64, 64, 3) and masks.shape == (5, 64, 64, 1)
    for i, image in enumerate(found.images):
        np.testing.assert_array_equal(masks[i, ..., 0], coco_lib.semantic_mask(found, image))
        grey = canvases[image["id"]] / 255.0
        np.testing.assert_allclose(images[i, ..., 0] * 0.229 + 0.485, grey, atol=1e-5)


def test_polygon_masks_and_negatives(tmp_path):
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "empty.png")
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 30, "height": 20},
            {"id": 2, "file_name": "empty.png", "width": 30, "height": 20},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 7,
                "bbox": [2, 3, 10, 5],
                "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]],
            }
        ],
        "categories": [{"id": 7, "name": "box"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    found = coco_lib.load_coco(str(path), str(tmp_path), require_masks=True)
    mask = coco_lib.semantic_mask(found, found.images[0])
    expected = np.zeros((20, 30), np.uint8)
    expected[3:8, 2:12] = 1  # pycocotools rasterises the rectangle's interior pixels
    np.testing.assert_array_equal(mask, expected)
    assert not coco_lib.semantic_mask(found, found.images[1]).any()
    boxes, labels = coco_lib.box_targets(found, 20)
    assert (boxes[1] == -1).all() and (labels[1] == -1).all()


def _bad_cases():
    def missing_file(d):
        d["images"][0]["file_name"] = "images/nope.png"

    def outside(d):
        d["annotations"][0]["bbox"] = [50, 50, 30, 10]

    def zero_area(d):
        d["annotations"][0]["bbox"][2] = 0

    def unknown_category(d):
        d["annotations"][0]["category_id"] = 99

    def not_coco(d):
        d.pop("categories")

    def no_mask(d):
        d["annotations"][0].pop("segmentation")

    return [
        (missing_file, "does not exist"),
        (outside, "lies outside its 64x64 image"),
        (zero_area, "zero-area box"),
        (unknown_category, "unknown category_id 99"),
        (not_coco, "not a COCO instances file"),
        (no_mask, "has no segmentation"),
    ]


@pytest.mark.parametrize(("breaks", "message"), _bad_cases())
def test_bad_datasets_fail_in_one_line_and_write_nothing(scenes, tmp_path, capsys, breaks, message):
    from care_tf.evaluate import __main__ as cli

    root = tmp_path / "data"
    shutil.copytree(scenes, root)
    path = root / "test" / "instances.json"
    data = json.loads(path.read_text())
    broken = copy.deepcopy(data)
    breaks(broken)
    path.write_text(json.dumps(broken))
    with pytest.raises(coco_lib.CocoFormatError, match=message):
        coco_lib.load_coco(str(path), str(root / "test"), require_masks=True)
    out = tmp_path / "out"
    (tmp_path / "run").mkdir()  # the run is loaded after the data is checked
    argv = ["--model_dir", str(tmp_path / "run"), "--dataset", f"coco:{root}", "--out", str(out)]
    assert cli.main(["segment", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and message in err
    assert str(path) in err
    assert not out.exists()


def test_invalid_json_and_missing_split(tmp_path, capsys):
    from care_tf.evaluate import __main__ as cli

    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "instances.json").write_text("{not json")
    with pytest.raises(coco_lib.CocoFormatError, match="not valid JSON"):
        coco_lib.load_coco(str(tmp_path / "test" / "instances.json"), str(tmp_path / "test"))
    argv = ["detect", "--model_dir", str(tmp_path), "--dataset", f"coco:{tmp_path}"]
    argv += ["--out", str(tmp_path)]
    assert cli.main([*argv, "--train_split", "valid"]) == 2
    assert "no split 'valid'" in capsys.readouterr().err
    assert cli.main([*argv[:2], str(tmp_path / "no_run"), *argv[3:]]) == 2
    assert "no_run' does not exist" in capsys.readouterr().err


def test_make_scenes_cli(tmp_path, capsys, fmnist):
    out = tmp_path / "s"
    assert make_scenes.main(["--out", str(out), "--min_size", "2"]) == 2
    assert "min_size" in capsys.readouterr().err and not out.exists()
    argv = ["--out", str(out), "--num_train", "0", "--num_test", "2", "--canvas", "48"]
    assert make_scenes.main([*argv, "--min_size", "10", "--max_size", "20"]) == 0
    assert sorted(os.listdir(out)) == ["test"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no leftovers
    found = coco_lib.load_coco(str(out / "test" / "instances.json"), str(out / "test"))
    assert [im["width"] for im in found.images] == [48, 48]


def test_tfds_examples_become_a_coco_folder(tmp_path):
    import tensorflow as tf

    from care_tf.transfer.tfds_coco import examples_to_coco

    jpeg = tf.io.encode_jpeg(np.zeros((40, 60, 3), np.uint8)).numpy()
    png = tf.io.encode_png(np.zeros((30, 20, 3), np.uint8)).numpy()
    examples = [
        {
            "image": jpeg,
            "objects": {
                "bbox": np.array([[0.25, 0.5, 0.75, 1.0], [0.1, 0.2, 0.1, 0.3]], np.float32),
                "label": np.array([2, 0]),
                "is_crowd": np.array([False, False]),
            },
        },
        {"image": png, "objects": {"bbox": np.zeros((0, 4), np.float32), "label": np.zeros(0)}},
    ]
    data = examples_to_coco(examples, ["a", "b", "c"], str(tmp_path))
    (tmp_path / "instances.json").write_text(json.dumps(data))
    found = coco_lib.load_coco(str(tmp_path / "instances.json"), str(tmp_path))
    assert [(im["width"], im["height"]) for im in found.images] == [(60, 40), (20, 30)]
    assert data["info"]["dropped_boxes"] == 1  # the zero-height box
    (ann,) = found.annotations[1]
    assert ann["category_id"] == 3 and ann["bbox"] == pytest.approx([30.0, 10.0, 30.0, 20.0])
    assert found.annotations[2] == []  # a negative image


def test_tfds_not_prepared_or_without_masks(tmp_path, capsys):
    pytest.importorskip("tensorflow_datasets")
    from care_tf.evaluate import __main__ as cli

    argv = ["--model_dir", str(tmp_path), "--dataset", "tfds:voc/2012", "--data_dir", str(tmp_path)]
    assert cli.main(["detect", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "is not prepared" in err and "tfds build voc/2012" in err and err.count("\n") == 1
    assert cli.main(["segment", *argv, "--out", str(tmp_path / "o")]) == 2
    assert "no instance masks" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_coco2017_layout_and_limit(scenes, tmp_path):
    from care_tf.transfer.commands import load_split

    root = tmp_path / "coco"
    shutil.copytree(os.path.join(scenes, "test"), root / "val2017")
    (root / "annotations").mkdir()
    os.replace(root / "val2017" / "instances.json", root / "annotations" / "instances_val2017.json")
    full = load_split(f"coco:{root}", "val2017", require_masks=True, limit=None)
    assert full.annotations_path == str(root / "annotations" / "instances_val2017.json")
    small = load_split(str(root), "val2017", require_masks=False, limit=2)
    assert [im["id"] for im in small.images] == [im["id"] for im in full.images[:2]]
    kept = [a["id"] for a in full.data["annotations"] if a["image_id"] in (1, 2)]
    assert [a["id"] for a in small.data["annotations"]] == kept and kept
    assert sum(len(v) for v in small.annotations.values()) == len(kept)


def test_flip_mirrors_images_boxes_and_masks_together(scenes):
    split = os.path.join(scenes, "test")
    found = coco_lib.load_coco(os.path.join(split, "instances.json"), split, require_masks=True)
    n = len(found)
    plain_images, plain_targets = next(iter(coco_lib.detection_dataset(found, 32, n)))
    _, plain_masks = next(iter(coco_lib.segmentation_dataset(found, 32, n)))
    boxes, labels = np.asarray(plain_targets["boxes"]), np.asarray(plain_targets["labels"])
    mirrored = boxes.copy()  # x -> 32 - x, x1 and x2 swapped, padding rows kept
    real = labels >= 0
    mirrored[..., 1][real] = 32 - boxes[..., 3][real]
    mirrored[..., 3][real] = 32 - boxes[..., 1][real]
    seen = set()
    for epoch_batch in coco_lib.detection_dataset(found, 32, n, flip=True, seed=3).repeat(4):
        images, targets = (np.asarray(epoch_batch[0]), epoch_batch[1])
        for i in range(n):
            flipped = not np.array_equal(images[i], plain_images[i])
            seen.add(flipped)
            want_image = plain_images[i][:, ::-1] if flipped else plain_images[i]
            np.testing.assert_array_equal(images[i], want_image)
            want = mirrored[i] if flipped else boxes[i]
            np.testing.assert_allclose(targets["boxes"][i], want, atol=1e-5)
            np.testing.assert_array_equal(targets["labels"][i], labels[i])
    assert seen == {True, False}  # both outcomes over 4 epochs of 5 images
    for images, masks in coco_lib.segmentation_dataset(found, 32, n, flip=True, seed=3).repeat(4):
        for i in range(n):
            flipped = not np.array_equal(images[i], plain_images[i])
            want = plain_masks[i][:, ::-1] if flipped else plain_masks[i]
            np.testing.assert_array_equal(masks[i], want)
