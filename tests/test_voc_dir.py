"""Tests for frcnn_jax.data.voc_dir: a VOC-layout folder generated in tmp_path."""

import logging

import ml_collections
import numpy as np
import pytest
from fake_voc import FakeExample, FakeObject, encode_image, image_pixels, write_voc_layout

from frcnn_jax.data import voc_dir

CLASSES = ("cat", "dog", "person")
CLASSES_FLAG = "cat,dog,person"  # as typed on the command line: --config.data.classes=...
EXAMPLES = (
    FakeExample(
        "a",
        height=20,
        width=30,
        objects=(
            # Devkit (1, 1)-(30, 20) inclusive is the whole image: continuous [0, 30] x [0, 20].
            FakeObject("dog", xmin=1, ymin=1, xmax=30, ymax=20),
            # Devkit x 5..14, y 3..8 -> continuous xmin 4, xmax 14, ymin 2, ymax 8.
            FakeObject("person", xmin=5, ymin=3, xmax=14, ymax=8, difficult=True, truncated=True),
        ),
    ),
    FakeExample("b", height=16, width=24, objects=(FakeObject("cat", 2, 2, 2, 2),)),  # 1 pixel
    FakeExample("c", height=18, width=12, objects=()),  # an image without objects
)
SPLITS = {"train": ["a", "b"], "val": ["c"], "trainval": ["a", "b", "c"]}


def _config(root, classes=None):
    return ml_collections.ConfigDict({"root": str(root), "classes": classes})


def _read(root, split="trainval", *, classes=CLASSES_FLAG, training=False, seed=0, **kw):
    dataset, names = voc_dir.source(
        _config(root, classes), split=split, training=training, seed=seed, **kw
    )
    return [{k: v.numpy() for k, v in ex.items()} for ex in dataset], names


@pytest.fixture
def root(tmp_path):
    return write_voc_layout(tmp_path / "voc", EXAMPLES, SPLITS)


def _scan(root, split="trainval", classes=CLASSES):
    return voc_dir.scan_split(str(root), split, class_names=classes)


def test_exact_boxes_labels_and_flags(root):
    examples, names = _read(root)
    assert names == CLASSES
    assert [ex["image_id"] for ex in examples] == [b"a", b"b", b"c"]
    a, b, c = examples
    assert a["image"].shape == (20, 30, 3) and a["image"].dtype == np.uint8
    np.testing.assert_array_equal(a["gt_boxes"], [[0, 0, 20, 30], [2, 4, 8, 14]])
    assert a["gt_boxes"].dtype == np.float32
    np.testing.assert_array_equal(a["gt_classes"], [1, 2])
    np.testing.assert_array_equal(a["gt_difficult"], [False, True])
    np.testing.assert_array_equal(b["gt_boxes"], [[1, 1, 2, 2]])  # devkit pixel (2, 2): 1x1 box
    assert c["gt_boxes"].shape == (0, 4) and c["gt_classes"].shape == (0,)
    assert c["image"].shape == (18, 12, 3)
    records, problems = _scan(root)
    np.testing.assert_array_equal(records[0].gt_truncated, [False, True])
    assert not problems.counts


def test_split_union_and_process_shards(root):
    examples, _ = _read(root, "train+val")
    assert [ex["image_id"] for ex in examples] == [b"a", b"b", b"c"]
    shards = [
        [ex["image_id"] for ex in _read(root, process_index=i, process_count=2)[0]]
        for i in range(2)
    ]
    assert shards == [[b"a", b"b"], [b"c"]]  # contiguous, disjoint, first shard takes the extra


def test_training_shuffle_is_seeded(root):
    def ids(seed):
        return [ex["image_id"] for ex in _read(root, training=True, seed=seed)[0]]

    assert ids(3) == ids(3)
    assert sorted(ids(3)) == [b"a", b"b", b"c"]


def test_class_names_sources(root):
    assert voc_dir.class_names(_config(root, ["dog", " cat "])) == ("dog", "cat")
    assert voc_dir.class_names(_config(root, "voc")) == voc_dir.VOC_CLASSES
    # No data.classes and no classes.txt: the sorted names of every XML file, whatever the split.
    assert voc_dir.class_names(_config(root)) == ("cat", "dog", "person")
    (root / "classes.txt").write_text("person\n\ncat\ndog\n")
    examples, names = _read(root, classes=None)
    assert names == ("person", "cat", "dog")
    np.testing.assert_array_equal(examples[0]["gt_classes"], [2, 0])
    with pytest.raises(voc_dir.VocDirError, match=r"Duplicate class names.*\['a'\]"):
        voc_dir.class_names(_config(root, "a,b,a"))


def test_no_class_names_anywhere_is_explained(tmp_path):
    empty = write_voc_layout(tmp_path / "voc", [FakeExample("a", height=8, width=8)], {})
    with pytest.raises(voc_dir.VocDirError, match="name no object.*classes.txt"):
        voc_dir.class_names(_config(empty))


def test_unknown_class_names_file_and_class(root):
    with pytest.raises(
        voc_dir.VocDirError, match=r"a\.xml object 1: class 'dog'.*did you mean 'Dog'"
    ):
        _scan(root, classes=("Dog", "cat", "person"))


def test_bad_boxes_are_clipped_or_dropped_and_counted(root):
    objects = (
        FakeObject("cat", xmin=-4, ymin=1, xmax=40, ymax=10),  # reaches outside: clipped
        FakeObject("cat", xmin=10, ymin=1, xmax=5, ymax=10),  # xmax < xmin: dropped
        FakeObject("cat", xmin=50, ymin=1, xmax=60, ymax=10),  # entirely right of the image
        FakeObject("dog", xmin=2.5, ymin=1, xmax=7.5, ymax=4),  # fractional pixels are fine
    )
    write_voc_layout(root, [FakeExample("a", height=20, width=30, objects=objects)], {})
    records, problems = _scan(root, "train")
    np.testing.assert_array_equal(records[0].gt_boxes, [[0, 0, 10, 30], [0, 1.5, 4, 7.5]])
    np.testing.assert_array_equal(records[0].gt_classes, [0, 1])
    assert problems.counts == {
        "box clipped to the image": 1,
        "box with xmax < xmin or ymax < ymin dropped": 1,
        "box entirely outside the image dropped": 1,
    }
    assert problems.files["box with xmax < xmin or ymax < ymin dropped"][0].endswith(
        "a.xml object 2"
    )


@pytest.mark.parametrize(
    "mode, fmt", [("L", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("LA", "PNG"), ("CMYK", "JPEG")]
)
def test_any_image_mode_becomes_rgb(root, mode, fmt):
    pixels = image_pixels(20, 30)
    (root / "JPEGImages" / "a.jpg").unlink()
    (root / "JPEGImages" / "a.png").write_bytes(encode_image(pixels, format=fmt, mode=mode))
    image = _read(root, "train")[0][0]["image"]
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    if mode == "RGBA":  # PNG is lossless and an opaque alpha channel is just dropped
        np.testing.assert_array_equal(image, pixels)


def test_unreadable_missing_and_empty_inputs_are_skipped_and_counted(root):
    (root / "JPEGImages" / "a.jpg").write_bytes(b"")  # zero-byte file
    (root / "JPEGImages" / "b.jpg").write_bytes(b"not an image at all")
    (root / "JPEGImages" / "c.jpg").unlink()
    records, problems = _scan(root)
    assert records == []
    assert problems.counts == {
        "unreadable or zero-size image (example skipped)": 2,
        "missing image (example skipped)": 1,
    }
    assert "b.jpg" in problems.files["unreadable or zero-size image (example skipped)"][1]
    with pytest.raises(voc_dir.VocDirError, match="No usable examples"):
        _read(root)


def test_missing_annotation_is_skipped(root):
    (root / "Annotations" / "b.xml").unlink()
    records, problems = _scan(root)
    assert [r.image_id for r in records] == ["a", "c"]
    assert problems.files["missing annotation file (example skipped)"][0].endswith("b.xml")


def test_truncated_image_skipped_at_decode_with_its_name(root, caplog):
    path = root / "JPEGImages" / "b.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    data = encode_image(noise)  # noise makes the scan data much longer than the ~600 B header
    path.write_bytes(data[: len(data) * 2 // 3])  # header intact, scan data cut
    assert len(_scan(root)[0]) == 3  # the header scan cannot see the damage
    with caplog.at_level(logging.WARNING):
        examples, _ = _read(root)
    assert [ex["image_id"] for ex in examples] == [b"a", b"c"]
    assert str(path) in caplog.text


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda r: (r / "ImageSets/Main/train.txt").write_text("\n\n"), "train.txt lists no image"),
        (lambda r: (r / "ImageSets/Main/train.txt").unlink(), "train.txt does not exist"),
        (lambda r: (r / "ImageSets/Main/train.txt").write_text("a 1\n"), "line 1: expected one"),
        (lambda r: (r / "Annotations/a.xml").write_text("<annotation><obj"), "Malformed.*a.xml"),
        (
            lambda r: (r / "Annotations/a.xml").write_text(
                (r / "Annotations/a.xml").read_text().replace("<xmin>1</xmin>", "<xmin>x</xmin>")
            ),
            r"a.xml object 1: bndbox/xmin is missing or not a number \('x'\)",
        ),
        (lambda r: (r / "Annotations").rename(r / "Ann"), "Annotations does not exist"),
    ],
)
def test_structural_problems_raise_naming_the_file(root, break_it, message):
    break_it(root)
    with pytest.raises(voc_dir.VocDirError, match=message):
        _read(root, "train")


def test_missing_root_is_explained(tmp_path):
    with pytest.raises(voc_dir.VocDirError, match="data.root is not set"):
        voc_dir.source(_config(""), split="train", training=False, seed=0)
    # The folder itself is named first, not the class names it would have held.
    missing = tmp_path / "no" / "such" / "dir"
    for classes in (None, CLASSES_FLAG):
        with pytest.raises(voc_dir.VocDirError, match=f"data.root={missing} is not a folder"):
            voc_dir.source(_config(missing, classes), split="train", training=False, seed=0)


def test_errors_share_the_data_error_base(root):
    from frcnn_jax.data import DataError, coco_json, decode

    assert issubclass(voc_dir.VocDirError, DataError) and issubclass(DataError, ValueError)
    assert issubclass(coco_json.CocoJsonError, DataError)
    assert issubclass(decode.ImageError, DataError)


def test_records_read_headers_not_pixels(root):
    from frcnn_jax import data

    config = _config(root, CLASSES_FLAG)
    config.name = "voc_dir"
    found = data.records(config, "trainval")
    assert [(r.image_id, r.image_size) for r in found] == [
        ("a", (20, 30)),
        ("b", (16, 24)),
        ("c", (18, 12)),
    ]
    np.testing.assert_array_equal(found[0].gt_boxes, [[0, 0, 20, 30], [2, 4, 8, 14]])
    np.testing.assert_array_equal(found[0].gt_difficult, [False, True])


def test_boxes_after_resize_and_pad_through_create_dataset(root):
    from frcnn_jax.data import create_dataset

    config = _config(root, CLASSES_FLAG)
    config.update(
        dict(
            name="voc_dir",
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
    (batch,) = list(create_dataset(config, split="train", training=False, batch_size=2, seed=0))
    # "a" is 20x30 -> scale min(40/20, 64/30) = 2 -> 40x60 in the (64, 64) bucket.
    assert list(batch["image_ids"]) == [b"a", b"b"] and batch["images"].shape == (2, 64, 64, 3)
    np.testing.assert_array_equal(batch["image_sizes"][0], [40, 60])
    np.testing.assert_allclose(batch["gt_boxes"][0], [[0, 0, 40, 60], [4, 8, 16, 28]], atol=1e-3)
    np.testing.assert_array_equal(batch["gt_mask"][0], [True, False])  # the person is difficult


def test_count_training_examples_from_the_annotations(root):
    def count(**kwargs):
        return voc_dir.count_training_examples(_config(root, CLASSES_FLAG), **kwargs)

    # a: a dog and a difficult person; b: a 1-pixel cat; c: no object.
    assert count(split="trainval", exclude_difficult=True, skip_empty=True) == 2
    assert count(split="trainval", exclude_difficult=True, skip_empty=False) == 3
    assert count(split="val", exclude_difficult=False, skip_empty=True) == 0
