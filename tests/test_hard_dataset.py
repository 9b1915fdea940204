"""benchmarks/make_hard_dataset.py: both formats read back identically, deterministically."""

import os
import sys

import ml_collections
import numpy as np

from frcnn_jax.data import coco_json, voc_dir

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

import hard_shapes  # noqa: E402
import make_hard_dataset  # noqa: E402


def test_voc_and_coco_outputs_agree_and_are_deterministic(tmp_path):
    def write(folder):
        return make_hard_dataset.write_dataset(
            str(folder), formats=("voc", "coco"), num_trainval=5, num_test=3, seed=3
        )

    written = write(tmp_path / "a")
    write(tmp_path / "b")
    for name in ("trainval.json", "Annotations/000006.xml", "JPEGImages/000002.jpg"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    root = tmp_path / "a"
    config = ml_collections.ConfigDict(
        dict(
            root=str(root),
            classes="",
            train_split="trainval",
            eval_split="test",
            train_annotations=str(root / "trainval.json"),
            eval_annotations=str(root / "test.json"),
            images=str(root / "JPEGImages"),
        )
    )
    assert voc_dir.class_names(config) == coco_json.class_names(config) == hard_shapes.CLASS_NAMES
    for split, count in (("trainval", 5), ("test", 3)):
        from_voc, from_coco = voc_dir.records(config, split), coco_json.records(config, split)
        assert len(from_voc) == len(from_coco) == count
        for v, c, (_, drawn) in zip(from_voc, from_coco, written[split]):
            assert v.image_size == c.image_size == tuple(drawn["image_size"])
            np.testing.assert_array_equal(v.gt_boxes, drawn["gt_boxes"])
            np.testing.assert_array_equal(c.gt_boxes, drawn["gt_boxes"])
            np.testing.assert_array_equal(v.gt_classes, c.gt_classes)
            np.testing.assert_array_equal(v.gt_difficult, c.gt_difficult)  # iscrowd in COCO


def test_image_sizes_and_boxes_in_range():
    example = hard_shapes.render_hard_example(1, split="trainval", seed=0)
    height, width = example["image"].shape[:2]
    assert 200 <= height <= 400 and 240 <= width <= 480
    boxes = example["gt_boxes"]
    assert len(boxes) and np.all(boxes[:, 2:] > boxes[:, :2])
    assert np.all(boxes >= 0) and np.all(boxes[:, 2:] <= [height, width])
