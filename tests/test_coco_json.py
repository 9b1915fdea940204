"""Tests for frcnn_jax.data.coco_json: COCO JSON files and an image folder generated in tmp_path."""

import json
import logging
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from fake_voc import encode_image, image_pixels

from frcnn_jax import data
from frcnn_jax.data import coco_json

# Category ids as labelling tools leave them: not from 0 or 1, not contiguous, not in order.
CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 100, "name": "person"}]
CLASSES = ("cat", "dog", "person")  # sorted by id: 3, 7, 100
IMAGES = [
    {"id": 42, "file_name": "a.jpg", "height": 20, "width": 30},
    {"id": "img-b", "file_name": "sub/b.png", "height": 16, "width": 24},
    {"id": 0, "file_name": "c.jpg", "height": 18, "width": 12},  # no annotations
]
ANNOTATIONS = [
    # bbox [x, y, w, h] -> (ymin, xmin, ymax, xmax) = (y, x, y + h, x + w).
    {"id": 1, "image_id": 42, "category_id": 7, "bbox": [0, 0, 30, 20], "iscrowd": 0},
    {"id": 2, "image_id": 42, "category_id": 100, "bbox": [4, 2, 10, 6], "iscrowd": 1},
    {"id": 3, "image_id": "img-b", "category_id": 3, "bbox": [1.5, 1, 1, 1]},  # no iscrowd key
]


def _write_coco(path, images=IMAGES, annotations=ANNOTATIONS, categories=CATEGORIES):
    path.write_text(json.dumps(dict(images=images, annotations=annotations, categories=categories)))
    return path


@pytest.fixture
def folder(tmp_path):
    """tmp_path/{images/{a.jpg,sub/b.png,c.jpg}, train.json, test.json}."""
    for index, image in enumerate(IMAGES):
        path = tmp_path / "images" / image["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = "PNG" if path.suffix == ".png" else "JPEG"
        pixels = image_pixels(image["height"], image["width"], seed=index)
        path.write_bytes(encode_image(pixels, format=fmt))
    _write_coco(tmp_path / "train.json")
    _write_coco(tmp_path / "test.json", images=IMAGES[2:], annotations=[])
    return tmp_path


def _config(folder, **overrides):
    fields = dict(
        name="coco_json",
        train_annotations=str(folder / "train.json"),
        eval_annotations=str(folder / "test.json"),
        images=str(folder / "images"),
        train_split="trainval",
        eval_split="test",
    )
    return ml_collections.ConfigDict({**fields, **overrides})


def _read(config, split="trainval", *, training=False, **kw):
    dataset, names = coco_json.source(config, split=split, training=training, seed=0, **kw)
    return [{k: v.numpy() for k, v in ex.items()} for ex in dataset], names


def test_exact_boxes_labels_ids_and_crowd_as_difficult(folder):
    examples, names = _read(_config(folder))
    assert names == CLASSES
    assert [ex["image_id"] for ex in examples] == [b"42", b"img-b", b"0"]
    a, b, c = examples
    assert a["image"].shape == (20, 30, 3) and b["image"].shape == (16, 24, 3)
    np.testing.assert_array_equal(a["gt_boxes"], [[0, 0, 20, 30], [2, 4, 8, 14]])
    assert a["gt_boxes"].dtype == np.float32
    np.testing.assert_array_equal(a["gt_classes"], [1, 2])  # dog (id 7), person (id 100)
    np.testing.assert_array_equal(a["gt_difficult"], [False, True])  # the crowd box
    np.testing.assert_array_equal(b["gt_boxes"], [[1, 1.5, 2, 2.5]])
    np.testing.assert_array_equal(b["gt_classes"], [0])  # cat (id 3)
    assert c["gt_boxes"].shape == (0, 4) and c["gt_classes"].shape == (0,)


def test_crowd_boxes_are_dropped_in_training(folder):
    examples, _ = _read(_config(folder), training=True)
    a = next(ex for ex in examples if ex["image_id"] == b"42")
    np.testing.assert_array_equal(a["gt_boxes"], [[0, 0, 20, 30]])
    np.testing.assert_array_equal(a["gt_difficult"], [False])


def test_splits_class_names_and_shards(folder):
    config = _config(folder)
    assert data.get_class_names(config) == CLASSES
    examples, names = _read(config, "test")
    assert names == CLASSES and [ex["image_id"] for ex in examples] == [b"0"]
    shards = [
        [ex["image_id"] for ex in _read(config, process_index=i, process_count=2)[0]]
        for i in range(2)
    ]
    assert shards == [[b"42", b"img-b"], [b"0"]]  # contiguous, as voc_dir
    with pytest.raises(coco_json.CocoJsonError, match=r"split 'val' is neither.*'trainval'"):
        _read(config, "val")


def test_records_without_decoding(folder):
    found = data.records(_config(folder), "trainval")
    assert [(r.image_id, r.image_size) for r in found] == [
        ("42", (20, 30)),
        ("img-b", (16, 24)),
        ("0", (18, 12)),
    ]
    np.testing.assert_array_equal(found[0].gt_difficult, [False, True])


def test_eval_categories_must_match_training(folder):
    other = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    _write_coco(folder / "test.json", images=IMAGES[2:], annotations=[], categories=other)
    with pytest.raises(coco_json.CocoJsonError, match="test.json lists categories.*both must"):
        _read(_config(folder), "test")


def test_bad_boxes_missing_images_and_orphans_are_counted(folder):
    annotations = [
        {"id": 1, "image_id": 42, "category_id": 3, "bbox": [-4, 0, 44, 10]},  # clipped
        {"id": 2, "image_id": 42, "category_id": 3, "bbox": [5, 0, 0, 10]},  # zero width
        {"id": 3, "image_id": 42, "category_id": 3, "bbox": [50, 0, 10, 10]},  # right of image
        {"id": 4, "image_id": 999, "category_id": 3, "bbox": [0, 0, 5, 5]},  # no such image
        {"id": 5, "image_id": 42, "category_id": 7, "bbox": [1.5, 0, 5, 4]},  # fine
    ]
    images = [dict(IMAGES[0], width=31), *IMAGES[1:]]  # header says 30: header wins
    _write_coco(folder / "train.json", images=images, annotations=annotations)
    (folder / "images" / "c.jpg").unlink()
    found, _, problems, _ = coco_json.scan(_config(folder), "trainval", training=True)
    assert [r.image_id for r in found] == ["42", "img-b"]
    np.testing.assert_array_equal(found[0].gt_boxes, [[0, 0, 10, 30], [0, 1.5, 4, 6.5]])
    np.testing.assert_array_equal(found[0].gt_classes, [0, 1])
    assert problems.counts == {
        "box clipped to the image": 1,
        "box with width or height <= 0 dropped": 1,
        "box entirely outside the image dropped": 1,
        "annotation of an image id not in 'images' (skipped)": 1,
        "missing image (skipped)": 1,
        "JSON height/width differ from the image header (header used)": 1,
    }
    assert "(id 4)" in problems.files["annotation of an image id not in 'images' (skipped)"][0]


def test_undecodable_image_is_skipped_at_run_time(folder, caplog):
    path = folder / "images" / "c.jpg"
    data = encode_image(np.random.default_rng(0).integers(0, 256, (18, 12, 3), dtype=np.uint8))
    path.write_bytes(data[: len(data) * 2 // 3])  # header intact, scan data cut
    with caplog.at_level(logging.WARNING):
        examples, _ = _read(_config(folder))
    assert [ex["image_id"] for ex in examples] == [b"42", b"img-b"]
    assert str(path) in caplog.text


def _rewrite(folder, **changes):
    coco = dict(images=IMAGES, annotations=ANNOTATIONS, categories=CATEGORIES)
    (folder / "train.json").write_text(json.dumps({**coco, **changes}))


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda f: (f / "train.json").unlink(), r"data.train_annotations=.*train.json does not"),
        (lambda f: (f / "train.json").write_text("{"), r"Malformed JSON in .*train.json"),
        (lambda f: _rewrite(f, categories=[]), r"train.json has no categories"),
        (
            lambda f: _rewrite(f, categories=[*CATEGORIES, {"id": 3, "name": "cow"}]),
            r"duplicate category ids \[3\]",
        ),
        (
            lambda f: _rewrite(f, categories=[*CATEGORIES, {"id": 4, "name": "cat"}]),
            r"duplicate category names \['cat'\]",
        ),
        (
            lambda f: _rewrite(f, images=[*IMAGES, dict(IMAGES[0], file_name="d.jpg")]),
            r"duplicate image id 42 \(.*images\[3\]\)",
        ),
        (
            lambda f: _rewrite(f, annotations=[dict(ANNOTATIONS[0], category_id=8)]),
            r"annotations\[0\] \(id 1\): category_id 8 is not among the category ids \[3, 7, 100\]",
        ),
        (
            lambda f: _rewrite(f, annotations=[dict(ANNOTATIONS[0], bbox=[1, 2, 3])]),
            r"annotations\[0\] \(id 1\): bbox \[1, 2, 3\] is not \[x, y, width, height\]",
        ),
        (lambda f: _rewrite(f, images=[{"id": 1}]), r"images\[0\]: expected .*'file_name'"),
        (lambda f: (f / "images").rename(f / "imgs"), r"data.images=.*images is not a folder"),
        (lambda f: [os.remove(f / "images" / i["file_name"]) for i in IMAGES], "No usable"),
    ],
)
def test_structural_problems_raise_one_line_naming_the_file(folder, break_it, message):
    break_it(folder)
    with pytest.raises(coco_json.CocoJsonError, match=message) as error:
        _read(_config(folder))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("field", ["train_annotations", "images"])
def test_unset_fields_are_named(folder, field):
    with pytest.raises(data.DataError, match=f"data.{field} is not set"):
        _read(_config(folder, **{field: ""}))


def test_boxes_after_resize_and_pad_through_create_dataset(folder):
    config = _config(folder)
    config.update(
        dict(
            min_size=40,
            max_size=64,
            max_boxes=2,
            flip=False,
            exclude_difficult=True,
            skip_empty=False,
            shuffle_buffer=4,
            buckets=None,
        )
    )
    batches = list(
        data.create_dataset(config, split="trainval", training=False, batch_size=2, seed=0)
    )
    batch = next(b for b in batches if b"42" in list(b["image_ids"]))
    row = list(batch["image_ids"]).index(b"42")
    # 20x30 -> scale min(40/20, 64/30) = 2 -> 40x60.
    np.testing.assert_array_equal(batch["image_sizes"][row], [40, 60])
    np.testing.assert_allclose(batch["gt_boxes"][row], [[0, 0, 40, 60], [4, 8, 16, 28]], atol=1e-3)
    np.testing.assert_array_equal(batch["gt_mask"][row], [True, False])  # the crowd box


def test_train_py_reports_a_missing_folder_in_one_line(tmp_path):
    """The issue's case: a wrong data.root is named, with no traceback."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [
        sys.executable, "train.py", "--config=configs/synthetic.py", f"--workdir={tmp_path / 'w'}",
        "--config.data.name=voc_dir", "--config.data.root=/no/such/dir",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "train.py: voc_dir data.root=/no/such/dir is not a folder (does it exist?)."
    )
    assert "Traceback" not in proc.stderr
