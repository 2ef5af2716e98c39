"""Detection and segmentation transfer (care_tf.transfer.detect / segment): the metrics
against independent computations, one fit step of each task, the CLI on a saved run."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("keras_hub")
pytest.importorskip("pycocotools")

from care_tf.transfer import coco as coco_lib  # noqa: E402
from care_tf.transfer.detect import box_ap, evaluate_detection  # noqa: E402
from care_tf.transfer.scenes import SceneSpec, write_scenes  # noqa: E402
from care_tf.transfer.segment import (  # noqa: E402
    confusion_matrix,
    evaluate_segmentation,
    iou_report,
    score_confusion,
)

SPEC = SceneSpec(canvas=64, min_objects=1, max_objects=3, min_size=16, max_size=32, seed=1)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from care_tf.data import load_fashion_mnist

    try:
        load_fashion_mnist("test")
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not found (run `make data`)")
    out = str(tmp_path_factory.mktemp("scenes") / "s")
    write_scenes(out, SPEC, num_train=4, num_test=3)
    splits = {}
    for split in ("train", "test"):
        folder = os.path.join(out, split)
        splits[split] = coco_lib.load_coco(
            os.path.join(folder, "instances.json"), folder, require_masks=True
        )
    return out, splits


def tiny_hub_backbone():
    """A small keras-hub ResNetBackbone (first stage 64 wide, later stages narrow)."""
    import keras_hub

    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 16, 16, 16],
        stackwise_num_blocks=[1, 1, 1, 1],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="basic_block",
        image_shape=(None, None, 3),
    )


# ----------------------------------------------------------------- metrics
def test_miou_against_hand_computed_confusion_matrix():
    labels = np.array([[0, 0, 1], [1, 2, 255]])
    predictions = np.array([[0, 1, 1], [2, 2, 0]])
    cm = confusion_matrix(labels, predictions, num_classes=4)
    # Scored pixels (true, predicted): (0,0) (0,1) (1,1) (1,2) (2,2); the 255 one is ignored.
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = expected[0, 1] = expected[1, 1] = expected[1, 2] = expected[2, 2] = 1
    np.testing.assert_array_equal(cm, expected)
    report = iou_report(cm, ["bg", "a", "b", "absent"])
    # IoU = TP / (row + column - TP): bg 1/2, a 1/3, b 1/2; "absent" has no pixels.
    per_class = report["per_class_iou"]
    assert per_class.pop("absent") is None
    assert per_class == pytest.approx({"bg": 0.5, "a": 1 / 3, "b": 0.5})
    assert report["miou"] == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)
    assert report["pixel_accuracy"] == pytest.approx(3 / 5)


def _ground_truth():
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in (1, 2, 3):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 100, "height": 80})
        for k in range(3):
            x, y = 30 * k + 2, float(rng.integers(0, 50))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1 + k % 2,
                    "bbox": [x, y, 20.0, 24.0],
                }
            )
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def test_box_ap_perfect_and_shifted():
    gt = _ground_truth()
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1}
        for a in gt["annotations"]
    ]
    scores = box_ap(gt, perfect)
    assert scores["ap"] == pytest.approx(1.0)
    assert scores["ap50"] == pytest.approx(1.0) and scores["ap75"] == pytest.approx(1.0)
    # Shifted 4 px right: IoU = 16 * 24 / (24 * 24) = 2/3, a hit at 0.5, a miss at 0.75.
    shifted = [dict(d, bbox=[d["bbox"][0] + 4, *d["bbox"][1:]]) for d in perfect]
    scores = box_ap(gt, shifted)
    assert scores["ap50"] == pytest.approx(1.0)
    assert scores["ap75"] == pytest.approx(0.0)
    assert 0.0 < scores["ap"] < 1.0
    # Right boxes, wrong classes: nothing is found.
    swapped = [dict(d, category_id=3 - d["category_id"]) for d in perfect]
    assert box_ap(gt, swapped)["ap50"] == pytest.approx(0.0)
    assert box_ap(gt, [])["ap"] == 0.0


# ------------------------------------------------------------------- tasks
def test_detector_fits_one_step_and_scores(scenes):
    _, splits = scenes
    scores = evaluate_detection(
        tiny_hub_backbone(),
        splits["train"],
        splits["test"],
        image_size=64,
        batch_size=2,
        epochs=1,
        steps_per_epoch=1,
        head_convs=1,
        run_eagerly=True,  # one step: tracing the train function would take longer
    )
    assert len(scores["history"]["loss"]) == 1 and np.isfinite(scores["history"]["loss"][0])
    for name in ("ap", "ap50", "ap75"):
        assert 0.0 <= scores[name] <= 1.0
    assert 0 <= scores["num_detections"] <= 100 * len(splits["test"])


def test_segmenter_fits_one_step_and_scores(scenes):
    _, splits = scenes
    scores = evaluate_segmentation(
        tiny_hub_backbone(),
        splits["train"],
        splits["test"],
        image_size=64,
        batch_size=2,
        epochs=1,
        steps_per_epoch=1,
        run_eagerly=True,
    )
    cm = np.array(scores["confusion_matrix"])
    assert cm.shape == (11, 11) and cm.sum() == len(splits["test"]) * 64 * 64  # 64 px canvas
    true_counts = np.zeros(11, np.int64)
    for image in splits["test"].images:
        true_counts += np.bincount(coco_lib.semantic_mask(splits["test"], image).ravel(), None, 11)
    np.testing.assert_array_equal(cm.sum(axis=1), true_counts)
    assert 0.0 <= scores["miou"] <= 1.0 and scores["class_names"][0] == "background"
    assert list(scores["history"]) == ["loss"] and np.isfinite(scores["history"]["loss"][0])


def _run_cli(scenes, tmp_path, command, *extra):
    """`python -m care_tf.evaluate COMMAND` on a saved care_tf run, through the bridge."""
    pytest.importorskip("care_tf.transfer.keras_hub_bridge")
    import tensorflow as tf

    from care_tf import ResNetBackbone
    from care_tf.evaluate import __main__ as cli

    root, _ = scenes
    run = tmp_path / "run"
    run.mkdir()
    ResNetBackbone(depth=18, stem="imagenet", image_shape=(64, 64, 3)).save(run / "backbone.keras")
    argv = [command, "--model_dir", str(run), "--dataset", f"coco:{root}", "--image_size", "32"]
    argv += ["--batch_size", "2", "--epochs", "1", "--steps_per_epoch", "1", "--quiet", *extra]
    tf.config.run_functions_eagerly(True)  # one step: tracing would take longer
    try:
        results = cli.evaluate(argv)
    finally:
        tf.config.run_functions_eagerly(False)
    with open(results["paths"]["json"]) as f:
        saved = json.load(f)
    return run, results, saved


def test_evaluate_detect_cli_on_a_run(scenes, tmp_path):
    """The CLI glue end to end (skipped only while the keras-hub bridge is absent)."""
    run, results, saved = _run_cli(scenes, tmp_path, "detect", "--head_convs", "1", "--limit", "2")
    assert results["paths"]["json"] == str(run / "eval" / "detect_limit2.json")
    assert saved["protocol"] == "detect" and saved["num_eval"] == 2
    assert saved["ap"] == results["ap"] and 0.0 <= saved["ap50"] <= 1.0
    assert results["summary"].startswith("detect: AP ")


def test_evaluate_segment_cli_on_a_run(scenes, tmp_path):
    run, results, saved = _run_cli(scenes, tmp_path, "segment", "--limit", "2", "--freeze_backbone")
    assert results["paths"]["json"] == str(run / "eval" / "segment_limit2.json")
    assert saved["miou"] == results["miou"] and saved["num_train"] == 2
    assert saved["config"]["freeze_backbone"] is True
    assert np.array(saved["confusion_matrix"]).sum() == 2 * 64 * 64  # scored at 64 px, not 32


def test_scores_are_read_at_each_images_own_size(scenes):
    """Logits predicted at 32 px are resized back to the 64 px canvas: a segmenter that
    always answers class k puts every true pixel of the canvas in column k."""
    import tensorflow as tf

    _, splits = scenes
    test = splits["test"]

    def always(k):
        return lambda x, training=False: tf.one_hot(tf.fill(tf.shape(x)[:3], k), 11) * 5.0

    true_counts = np.zeros(11, np.int64)
    for image in test.images:
        true_counts += np.bincount(coco_lib.semantic_mask(test, image).ravel(), None, 11)
    for k in (0, 4):
        cm = score_confusion(always(k), test, 32, batch_size=2, eager=True)
        expected = np.zeros((11, 11), np.int64)
        expected[:, k] = true_counts
        np.testing.assert_array_equal(cm, expected)
