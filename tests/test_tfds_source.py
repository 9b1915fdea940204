"""Tests for frcnn_jax.data.tfds_source: the REAL tfds VOC builder on tiny generated archives.

Offline: `DownloadManager.download_and_extract` is patched to hand the builder our extracted fake
devkit (the route tfds's own builder tests take), everything else (XML parsing, normalisation,
record writing, reading) is tfds's own code. Prepared once per session in a tmp data_dir.
"""

import fake_voc
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from frcnn_jax.data import tfds_source

# Expected continuous pixels of the fake VOC2007 images (fake_voc.VOC2007_EXAMPLES), labels are
# indices into tfds' VOC label list.
DOG, PERSON, CAR, TVMONITOR, AEROPLANE, CAT = 11, 14, 6, 19, 0, 7
EXPECTED_2007 = {
    # devkit (1, 1)-(60, 40) on 40x60: the whole image; person x 11..30, y 5..24: (4, 10, 24, 30)
    b"000001": ([[0, 0, 40, 60], [4, 10, 24, 30]], [DOG, PERSON], [False, True]),
    b"000002": ([[2, 1, 30, 20]], [CAR], [False]),  # x 2..20, y 3..30
    b"000003": ([[9, 4, 45, 25]], [TVMONITOR], [False]),  # x 5..25, y 10..45
    b"000004": ([[0, 0, 12, 10], [19, 19, 36, 36]], [AEROPLANE, CAT], [False, False]),
}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    archives = fake_voc.make_voc_devkit(tmp_path_factory.mktemp("voc_archives"))
    data_dir = tmp_path_factory.mktemp("tfds_data")

    def download_and_extract(self, url_or_urls):
        return {key: archives for key in url_or_urls}  # {"trainval": url, "test": url}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
        for name in ("voc/2007", "voc/2012"):
            tfds.builder(name, data_dir=str(data_dir)).download_and_prepare(
                download_dir=str(data_dir / "downloads"),
                download_config=tfds.download.DownloadConfig(try_download_gcs=False),
            )
    return str(data_dir)


def _config(data_dir, tfds_name="voc/2007", **fields):
    return ml_collections.ConfigDict(
        {"name": "tfds", "tfds_name": tfds_name, "tfds_data_dir": data_dir, **fields}
    )


def _read(config, split, *, training=False, seed=0, **kw):
    dataset, names = tfds_source.source(config, split=split, training=training, seed=seed, **kw)
    return {ex["image_id"]: ex for ex in dataset.as_numpy_iterator()}, names


def test_normalized_to_pixels_hand_worked():
    # VOC, H=40, W=60: devkit x 1..60, y 11..40 is stored (11/40, 1/60, 40/40, 60/60).
    bbox = np.array([[0.275, 1 / 60, 1.0, 1.0]], np.float32)
    voc = tfds_source.normalized_to_pixels(bbox, height=40, width=60, one_based_inclusive=True)
    np.testing.assert_allclose(voc, [[10, 0, 40, 60]], atol=1e-4)
    # COCO [x, y, w, h] = [10.5, 4, 20, 8] on 40x60 is stored (4/40, 10.5/60, 12/40, 30.5/60).
    bbox = np.array([[0.1, 10.5 / 60, 0.3, 30.5 / 60]], np.float32)
    coco = tfds_source.normalized_to_pixels(bbox, height=40, width=60, one_based_inclusive=False)
    np.testing.assert_allclose(coco, [[4, 10.5, 12, 30.5]], atol=1e-4)
    # A devkit xmin of 0 (VOC2012 has a few) would be -1: clipped to the image.
    bbox = np.array([[0.5, 0.0, 1.0, 0.5]], np.float32)
    clipped = tfds_source.normalized_to_pixels(bbox, height=40, width=60, one_based_inclusive=True)
    np.testing.assert_allclose(clipped, [[19, 0, 40, 30]], atol=1e-4)


@pytest.mark.parametrize(
    "names, split, expected",
    [
        ("voc/2007", "test", [("voc/2007", "test")]),
        ("voc/2007,voc/2012", "train+validation", [("voc/2007", "train+validation"),
                                                   ("voc/2012", "train+validation")]),
        ("voc/2007,voc/2012", "voc/2007:test", [("voc/2007", "test")]),
        ("", "voc/2007:train,voc/2007:validation", [("voc/2007", "train+validation")]),
        ("voc/2007:5.0.0", "train[:10%]", [("voc/2007:5.0.0", "train[:10%]")]),
        ("coco", "coco/2017:5.0.0:validation", [("coco/2017:5.0.0", "validation")]),
    ],
)  # fmt: skip
def test_parse_split_spec(names, split, expected):
    assert tfds_source.parse_split_spec(names, split) == expected


def test_parse_split_spec_needs_a_dataset():
    with pytest.raises(tfds_source.TfdsSourceError, match="names no dataset"):
        tfds_source.parse_split_spec("", "train")


def test_voc2007_exact_pixel_boxes(data_dir):
    examples, names = _read(_config(data_dir), "train+validation+test")
    assert names[DOG] == "dog" and len(names) == 20
    assert sorted(examples) == sorted(EXPECTED_2007)
    for image_id, (boxes, labels, difficult) in EXPECTED_2007.items():
        example = examples[image_id]
        assert example["image"].dtype == np.uint8 and example["image"].shape[2] == 3
        assert example["gt_boxes"].dtype == np.float32 and example["gt_classes"].dtype == np.int32
        np.testing.assert_allclose(example["gt_boxes"], boxes, atol=1e-4)
        np.testing.assert_array_equal(example["gt_classes"], labels)
        np.testing.assert_array_equal(example["gt_difficult"], difficult)
    assert examples[b"000001"]["image"].shape == (40, 60, 3)


def test_union_07_12_and_test_on_2007(data_dir):
    config = _config(data_dir, "voc/2007,voc/2012")
    train, _ = _read(config, "train+validation", training=True, seed=1)
    assert sorted(train) == [b"000001", b"000002", b"000003", b"2008_000001", b"2008_000002"]
    np.testing.assert_allclose(train[b"2008_000001"]["gt_boxes"], [[3, 2, 20, 12]], atol=1e-4)
    again, _ = _read(config, "train+validation", training=True, seed=1)
    assert list(again) == list(train)  # seeded mixing
    test, _ = _read(config, "voc/2007:test")
    assert list(test) == [b"000004"]


def test_process_shards_are_disjoint(data_dir):
    shards = [
        set(_read(_config(data_dir), "train+validation", process_index=i, process_count=2)[0])
        for i in range(2)
    ]
    assert [len(s) for s in shards] == [2, 1] and not shards[0] & shards[1]


def test_coco_crowd_boxes_dropped_in_training_difficult_in_eval():
    example = {
        "image": tf.zeros([40, 60, 3], tf.uint8),
        "image/filename": tf.constant("000000000042.jpg"),
        "image/id": tf.constant(42, tf.int64),
        "objects": {
            "bbox": tf.constant([[0.1, 0.1, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]]),
            "label": tf.constant([3, 0], tf.int64),
            "is_crowd": tf.constant([False, True]),
        },
    }
    train = tfds_source._to_raw(example, one_based_inclusive=False, drop_crowd=True)
    np.testing.assert_allclose(train["gt_boxes"], [[4, 6, 20, 30]], atol=1e-4)
    np.testing.assert_array_equal(train["gt_classes"], [3])
    np.testing.assert_array_equal(train["gt_difficult"], [False])
    evaluation = tfds_source._to_raw(example, one_based_inclusive=False, drop_crowd=False)
    np.testing.assert_array_equal(evaluation["gt_difficult"], [False, True])
    assert evaluation["image_id"].numpy() == b"000000000042"


def test_not_prepared_says_what_to_do(tmp_path, monkeypatch):
    config = _config(str(tmp_path))
    with pytest.raises(tfds_source.TfdsSourceError, match="several processes.*tfds build voc/2007"):
        tfds_source.source(config, split="test", training=False, seed=0, process_count=2)

    def offline(self, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(tfds_source.TfdsSourceError, match="ConnectionError.*TFDS_DATA_DIR"):
        tfds_source.source(config, split="test", training=False, seed=0)


def test_unknown_dataset_and_split_are_explained(data_dir):
    with pytest.raises(tfds_source.TfdsSourceError, match="Unknown tfds dataset"):
        tfds_source.source(_config(data_dir, "no_such_dataset"), split="x", training=False, seed=0)
    with pytest.raises(tfds_source.TfdsSourceError, match="Bad split 'trainval'.*validation"):
        tfds_source.source(_config(data_dir), split="trainval", training=False, seed=0)


def _pipeline_config(data_dir, **fields):
    defaults = dict(min_size=80, max_size=160, max_boxes=4, flip=True, exclude_difficult=True,
                    skip_empty=False, shuffle_buffer=8, buckets=None)  # fmt: skip
    return _config(data_dir, **{**defaults, **fields})


def test_boxes_after_resize_and_pad_through_create_dataset(data_dir):
    from frcnn_jax.data import create_dataset

    batches = create_dataset(
        _pipeline_config(data_dir), split="train", training=False, batch_size=2, seed=0
    )
    (batch,) = list(batches)
    assert batch["images"].shape == (2, 96, 160, 3)  # landscape bucket of (80, 160)
    rows = {image_id: i for i, image_id in enumerate(batch["image_ids"])}
    # 000001 is 40x60 -> scale 2 -> 80x120; 000002 is 32x48 -> scale 2.5 -> 80x120.
    first, second = rows[b"000001"], rows[b"000002"]
    np.testing.assert_array_equal(batch["image_sizes"][[first, second]], [[80, 120], [80, 120]])
    np.testing.assert_allclose(
        batch["gt_boxes"][first], [[0, 0, 80, 120], [8, 20, 48, 60], [0] * 4, [0] * 4], atol=1e-3
    )
    np.testing.assert_allclose(batch["gt_boxes"][second, 0], [5, 2.5, 75, 50], atol=1e-3)
    np.testing.assert_array_equal(batch["gt_valid"][first], [True, True, False, False])
    np.testing.assert_array_equal(batch["gt_mask"][first], [True, False, False, False])  # difficult
    np.testing.assert_array_equal(batch["gt_classes"][first, :2], [DOG, PERSON])


def test_flipped_boxes_follow_the_flipped_image(data_dir):
    from frcnn_jax.data import create_dataset

    batches = create_dataset(
        _pipeline_config(data_dir), split="train", training=True, batch_size=2, seed=0
    )
    unflipped = {b"000001": [0, 0, 80, 120], b"000002": [5, 2.5, 75, 50]}  # first box, 80x120
    seen_flips = set()
    for batch, _ in zip(batches, range(4)):
        for i, image_id in enumerate(batch["image_ids"]):
            # Channel 0 of the fake images grows left to right; a flipped image falls.
            image = batch["images"][i, :80, :120, 0].astype(float)
            flipped = image[:, :5].mean() > image[:, -5:].mean()
            ymin, xmin, ymax, xmax = unflipped[image_id]
            expected = [ymin, 120 - xmax, ymax, 120 - xmin] if flipped else unflipped[image_id]
            np.testing.assert_allclose(batch["gt_boxes"][i, 0], expected, atol=1e-3)
            seen_flips.add(bool(flipped))
    assert seen_flips == {False, True}


def test_class_names_without_building_a_dataset(data_dir):
    config = _config(data_dir, train_split="train+validation", eval_split="test")
    assert tfds_source.class_names(config)[:2] == ("aeroplane", "bicycle")


@pytest.mark.parametrize("exclude_difficult", [True, False])
def test_count_training_examples_reads_no_image_and_matches_the_pipeline_filter(
    data_dir, exclude_difficult
):
    from frcnn_jax import data as data_lib

    config = _config(data_dir, "voc/2007,voc/2012")
    options = dict(split="train+validation", exclude_difficult=exclude_difficult)
    examples, _ = _read(config, "train+validation", training=True)
    expected = sum(
        bool(np.any(~ex["gt_difficult"] if exclude_difficult else ex["gt_classes"] >= 0))
        for ex in examples.values()
    )
    assert tfds_source.count_training_examples(config, **options, skip_empty=True) == expected
    assert tfds_source.count_training_examples(config, **options, skip_empty=False) == len(examples)
    # The generic path of frcnn_jax.data (a pass over the decoded raw source) agrees.
    config.update(dict(train_split="train+validation", skip_empty=True))
    config.exclude_difficult = exclude_difficult
    with pytest.MonkeyPatch.context() as patch:
        patch.delattr(tfds_source, "count_training_examples")
        assert data_lib.count_training_examples(config) == expected
