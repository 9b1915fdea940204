"""Tests for preprocessing, bucketing, batching and device prefetch (frcnn_jax/data/pipeline.py)."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from frcnn_jax import data
from frcnn_jax.data import pipeline

# min_size 50 / max_size 120 -> buckets landscape (64, 128) and portrait (128, 64).
SIZES = dict(min_size=50, max_size=120)
BUCKETS = ((64, 128), (128, 64))


def _example(height, width, boxes, labels=None, difficult=None, image_id="a", fill=200):
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    return {
        "image": tf.fill([height, width, 3], tf.constant(fill, tf.uint8)),
        "image_id": tf.constant(image_id),
        "gt_boxes": tf.constant(boxes),
        "gt_classes": tf.constant(np.arange(n, dtype=np.int32) if labels is None else labels),
        "gt_difficult": tf.constant(np.zeros(n, bool) if difficult is None else difficult),
    }


def _preprocess(example, flip=False, max_boxes=4, exclude_difficult=True, **sizes):
    out = pipeline.preprocess(
        example,
        flip=tf.constant(flip),
        max_boxes=max_boxes,
        buckets=BUCKETS,
        exclude_difficult=exclude_difficult,
        **(sizes or SIZES),
    )
    return {key: value.numpy() for key, value in out.items()}


def _dataset(examples):
    ds = tf.data.Dataset.from_tensors(examples[0])
    for example in examples[1:]:
        ds = ds.concatenate(tf.data.Dataset.from_tensors(example))
    return ds


def _batches(examples, *, training, batch_size=2, seed=0, skip_empty=False, start_step=0, n=None):
    ds = pipeline.batch_examples(
        _dataset(examples),
        training=training,
        batch_size=batch_size,
        seed=seed,
        max_boxes=4,
        buckets=BUCKETS,
        flip=True,
        exclude_difficult=True,
        skip_empty=skip_empty,
        shuffle_buffer=16,
        start_step=start_step,
        **SIZES,
    )
    return list(ds.take(n).as_numpy_iterator() if n else ds.as_numpy_iterator())


def test_bucket_shapes():
    assert pipeline.bucket_shapes(**SIZES) == BUCKETS
    assert pipeline.bucket_shapes(min_size=128, max_size=128) == ((128, 128),)
    assert pipeline.bucket_shapes(min_size=600, max_size=1000) == ((608, 1024), (1024, 608))
    custom = pipeline.bucket_shapes(buckets=[(128, 128), (64, 128), (128, 64)], **SIZES)
    assert custom == ((64, 128), (128, 64), (128, 128))
    with pytest.raises(ValueError, match="multiples of 32"):
        pipeline.bucket_shapes(buckets=[(64, 130), (128, 64)], **SIZES)
    with pytest.raises(ValueError, match=r"no bucket holds a resized image of \(120, 50\)"):
        pipeline.bucket_shapes(buckets=[(64, 128)], **SIZES)
    with pytest.raises(ValueError, match="min_size"):
        pipeline.bucket_shapes(min_size=200, max_size=100)


@pytest.mark.parametrize(
    "height, width, expected",
    [
        (100, 200, (50, 100)),  # scale = min(50/100, 120/200) = 0.5
        (100, 300, (40, 120)),  # the long side binds: scale = 120/300 = 0.4
        (200, 100, (100, 50)),  # portrait
        (75, 101, (50, 67)),  # 101 * 2/3 = 67.33 -> 67
        (10, 13, (50, 65)),  # upscaling x5
        (100, 130, (50, 65)),  # 130 / 2 = 65
        (20, 26, (50, 65)),  # 26 * 2.5 = 65
        (100, 233, (50, 117)),  # 116.5 rounds half up to 117 (not half to even: 116)
    ],
)
def test_resized_size(height, width, expected):
    size = pipeline.resized_size(height, width, **SIZES)
    assert tuple(int(s) for s in size) == expected


def test_resize_scales_boxes_and_pads_bottom_right():
    # 100x200 image, box (10, 20, 50, 80): scale 0.5 -> 50x100 image, box (5, 10, 25, 40),
    # padded into the landscape bucket 64x128.
    out = _preprocess(_example(100, 200, [[10, 20, 50, 80]]))
    assert out["images"].shape == (64, 128, 3) and out["images"].dtype == np.uint8
    assert (out["images"][:50, :100] == 200).all()  # a constant image stays constant
    assert (out["images"][50:] == 0).all() and (out["images"][:, 100:] == 0).all()
    np.testing.assert_array_equal(out["image_sizes"], [50, 100])
    np.testing.assert_array_equal(out["orig_sizes"], [100, 200])
    np.testing.assert_array_equal(out["scales"], [0.5, 0.5])
    np.testing.assert_array_equal(out["gt_boxes"][0], [5, 10, 25, 40])
    np.testing.assert_array_equal(out["gt_boxes"][1:], 0)
    np.testing.assert_array_equal(out["gt_valid"], [True, False, False, False])
    np.testing.assert_array_equal(out["gt_mask"], [True, False, False, False])
    assert out["example_mask"] and out["image_ids"] == b"a"


def test_flip_mirrors_boxes_in_resized_coordinates():
    # Resized width 100: xmin' = 100 - 40 = 60, xmax' = 100 - 10 = 90.
    out = _preprocess(_example(100, 200, [[10, 20, 50, 80]]), flip=True)
    np.testing.assert_array_equal(out["gt_boxes"][0], [5, 60, 25, 90])


def test_flip_mirrors_pixels_before_padding():
    # Scale 1 (min_size = height): a 4x6 image whose object covers rows 1..2, columns 0..1,
    # box (1, 0, 3, 2); flipped it covers columns 4..5, box (1, 4, 3, 6), and the padding
    # stays at the right of the flipped image.
    image = np.zeros((4, 6, 3), np.uint8)
    image[1:3, 0:2] = 255
    example = _example(4, 6, [[1, 0, 3, 2]])
    example["image"] = tf.constant(image)
    out = _preprocess(example, flip=True, min_size=4, max_size=6)
    assert out["images"].shape == (64, 128, 3)
    np.testing.assert_array_equal(out["gt_boxes"][0], [1, 4, 3, 6])
    np.testing.assert_array_equal(out["images"][:4, :6], image[:, ::-1])
    assert (out["images"][:, 6:] == 0).all()


def test_exact_per_axis_scales():
    # 75x101 -> 50x67: sy = 50/75, sx = 67/101 (not the nominal 2/3), so a full-image box
    # maps onto the full resized image.
    out = _preprocess(_example(75, 101, [[0, 0, 75, 101], [15, 0, 30, 50.5]]))
    np.testing.assert_allclose(out["scales"], [50 / 75, 67 / 101], rtol=1e-6)
    np.testing.assert_allclose(out["gt_boxes"][0], [0, 0, 50, 67], rtol=1e-6)
    np.testing.assert_allclose(out["gt_boxes"][1], [10, 0, 20, 33.5], rtol=1e-6)


def test_portrait_image_uses_portrait_bucket():
    out = _preprocess(_example(200, 100, [[20, 10, 80, 50]]))
    assert out["images"].shape == (128, 64, 3)
    np.testing.assert_array_equal(out["gt_boxes"][0], [10, 5, 40, 25])


def test_preprocess_image_alone_resizes_and_pads_as_evaluation():
    # 64 x 32 with min_size 32, max_size 64: scale 1 (32 / 32; 64 * 1 <= 64). The 32-row bucket
    # cannot hold 64 rows, so (64, 64): the image at the top left, zeros to its right.
    image = np.random.default_rng(0).integers(1, 256, (64, 32, 3), dtype=np.uint8)
    images, sizes, scales = pipeline.preprocess_image(
        tf.constant(image), min_size=32, max_size=64, buckets=[(32, 64), (64, 64)]
    )
    assert images.shape == (64, 64, 3)
    np.testing.assert_array_equal(images.numpy()[:, :32], image)
    assert not images.numpy()[:, 32:].any()
    assert sizes.numpy().tolist() == [64, 32] and scales.numpy().tolist() == [1.0, 1.0]
    # The same image in a training example without flip gives the same pixels and sizes.
    example = {
        "image": tf.constant(image),
        "image_id": tf.constant("a"),
        "gt_boxes": tf.constant([[0.0, 0.0, 10.0, 10.0]]),
        "gt_classes": tf.constant([1]),
        "gt_difficult": tf.constant([False]),
    }
    out = pipeline.preprocess(
        example, flip=tf.constant(False), min_size=32, max_size=64, max_boxes=2,
        buckets=[(32, 64), (64, 64)], exclude_difficult=False,
    )  # fmt: skip
    np.testing.assert_array_equal(out["images"].numpy(), images.numpy())


def test_degenerate_boxes_dropped_and_max_boxes_truncates():
    boxes = [
        [10, 10, 10, 20],  # zero height: dropped
        [-5, -5, 0, 30],  # zero height once clipped to the image: dropped
        [0, 190, 50, 250],  # partly outside: clipped to (0, 190, 50, 200), kept
        [np.nan, 0, 10, 10],  # NaN: dropped
        [20, 20, 40, 40],  # kept
        [60, 60, 80, 80],  # kept
        [20, 20, 40, 60],  # beyond max_boxes = 3 usable ones: truncated
    ]
    out = _preprocess(_example(100, 200, boxes), max_boxes=3)
    np.testing.assert_array_equal(
        out["gt_boxes"], [[0, 95, 25, 100], [10, 10, 20, 20], [30, 30, 40, 40]]
    )
    np.testing.assert_array_equal(out["gt_classes"], [2, 4, 5])  # labels follow their boxes
    assert out["gt_valid"].all() and out["gt_mask"].all()
    assert out["gt_dropped"] == 1  # 4 usable boxes, 3 slots; degenerate ones do not count


@pytest.mark.parametrize("exclude_difficult", [True, False])
def test_difficult_boxes(exclude_difficult):
    example = _example(100, 200, [[0, 0, 10, 10], [20, 20, 40, 40]], difficult=[True, False])
    out = _preprocess(example, exclude_difficult=exclude_difficult)
    np.testing.assert_array_equal(out["gt_valid"], [True, True, False, False])
    np.testing.assert_array_equal(out["gt_difficult"], [True, False, False, False])
    expected_mask = [not exclude_difficult, True, False, False]
    np.testing.assert_array_equal(out["gt_mask"], expected_mask)


def test_empty_image_is_a_clear_error():
    example = _example(100, 200, [[0, 0, 10, 10]], image_id="broken/7")
    example["image"] = tf.zeros([0, 200, 3], tf.uint8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="broken/7"):
        _batches([example], training=False)


def _mixed_examples():
    """5 landscape and 3 portrait images with one box each, the 4th without boxes."""
    examples = []
    for i in range(8):
        portrait = i in (1, 4, 6)
        shape = (200, 100) if portrait else (100, 200)
        boxes = [] if i == 3 else [[10, 20, 50, 60]]
        examples.append(_example(*shape, boxes, image_id=f"img{i}", fill=10 * i))
    return examples


def test_eval_keeps_every_image_once_and_pads_last_batches():
    batches = _batches(_mixed_examples(), training=False, batch_size=2)
    # landscape 5 -> 2 + 2 + 1 (+1 padding), portrait 3 -> 2 + 1 (+1 padding)
    assert len(batches) == 5
    ids = [i for b in batches for i, m in zip(b["image_ids"], b["example_mask"]) if m]
    assert sorted(ids) == [f"img{i}".encode() for i in range(8)]
    for batch in batches:
        assert batch["images"].shape[0] == 2 and batch["images"].shape[1:3] in BUCKETS
        for i in np.flatnonzero(~batch["example_mask"]):
            bucket = batch["images"].shape[1:3]
            assert batch["image_ids"][i] == b"" and not batch["images"][i].any()
            assert not batch["gt_valid"][i].any() and not batch["gt_mask"][i].any()
            np.testing.assert_array_equal(batch["image_sizes"][i], bucket)
            np.testing.assert_array_equal(batch["scales"][i], [1, 1])
    assert sum(int(b["example_mask"].sum()) for b in batches) == 8
    # no flip in evaluation: every box is the plain 0.5 rescale
    for batch in batches:
        for i in np.flatnonzero(batch["gt_valid"][:, 0]):
            np.testing.assert_array_equal(batch["gt_boxes"][i, 0], [5, 10, 25, 30])


def test_training_batches_share_a_bucket_flip_and_skip_empty():
    batches = _batches(_mixed_examples(), training=True, batch_size=2, skip_empty=True, n=12)
    flipped = 0
    for batch in batches:
        assert batch["example_mask"].all() and batch["images"].shape[1:3] in BUCKETS
        assert b"img3" not in batch["image_ids"].tolist()  # no usable box: skipped
        assert batch["gt_mask"][:, 0].all()
        for box, (_, width) in zip(batch["gt_boxes"][:, 0], batch["image_sizes"]):
            assert box[1] in (10, width - 30)  # unflipped xmin 10, flipped xmin w - 30
            flipped += box[1] == width - 30
    assert 0 < flipped < 24


def test_training_is_deterministic_given_seed_and_resumes_at_start_step():
    def signature(batches):
        return [(b["image_ids"].tolist(), b["gt_boxes"].tolist()) for b in batches]

    first = _batches(_mixed_examples(), training=True, seed=1, n=8)
    assert signature(first) == signature(_batches(_mixed_examples(), training=True, seed=1, n=8))
    assert signature(first) != signature(_batches(_mixed_examples(), training=True, seed=2, n=8))
    resumed = _batches(_mixed_examples(), training=True, seed=1, start_step=5, n=3)
    assert signature(resumed) == signature(first[5:])


def _synthetic_config(**overrides):
    cfg = dict(
        name="synthetic",
        train_split="train",
        eval_split="test",
        min_size=64,
        max_size=64,
        max_boxes=3,
        flip=True,
        exclude_difficult=True,
        skip_empty=False,
        shuffle_buffer=8,
        synthetic=dict(
            num_train=10, num_eval=7, image_size=64, max_objects=5, seed=0, max_object_size=40
        ),
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def test_create_dataset_batch_contract():
    cfg = _synthetic_config()
    ds = data.create_dataset(cfg, split="train", training=True, batch_size=3, seed=0)
    assert ds.info.class_names == data.get_class_names(cfg)
    assert ds.info.num_classes == 4 and ds.info.bucket_shapes == ((64, 64),)
    batch = next(iter(ds))
    expected = {
        "images": ((3, 64, 64, 3), np.uint8),
        "image_sizes": ((3, 2), np.int32),
        "orig_sizes": ((3, 2), np.int32),
        "scales": ((3, 2), np.float32),
        "gt_boxes": ((3, 3, 4), np.float32),
        "gt_classes": ((3, 3), np.int32),
        "gt_mask": ((3, 3), np.bool_),
        "gt_difficult": ((3, 3), np.bool_),
        "gt_valid": ((3, 3), np.bool_),
        "example_mask": ((3,), np.bool_),
        "gt_dropped": ((3,), np.int32),
    }
    assert set(batch) == set(expected) | {"image_ids"}
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    assert batch["image_ids"].shape == (3,) and isinstance(batch["image_ids"][0], bytes)


def test_create_dataset_eval_shards_cover_split_once():
    ids = []
    for process_index in range(2):
        ds = data.create_dataset(
            _synthetic_config(),
            split="test",
            training=False,
            batch_size=3,
            seed=0,
            process_index=process_index,
            process_count=2,
        )
        for batch in ds:
            ids += batch["image_ids"][batch["example_mask"]].tolist()
    assert sorted(ids) == sorted(f"test/{i}".encode() for i in range(7))


def test_split_without_usable_boxes_is_a_clear_error():
    cfg = _synthetic_config(skip_empty=True)
    cfg.synthetic.empty_fraction = 1.0
    ds = data.create_dataset(cfg, split="train", training=True, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="split 'train' yields no batch"):
        next(iter(ds))


def test_process_exits_with_a_live_training_iterator():
    """tf.numpy_function threads of a live iterator must not deadlock interpreter exit.

    Without NumpyIterator's exit hook this hung in about 2 of 3 runs: threads were still
    filling the shuffle buffer when the interpreter finalised.
    """
    synthetic = dict(num_train=1000, num_eval=1, image_size=128, max_objects=5, seed=0)
    busy = _synthetic_config(min_size=128, max_size=128, shuffle_buffer=256, synthetic=synthetic)
    script = textwrap.dedent(
        f"""
        import ml_collections
        from frcnn_jax import data
        cfg = ml_collections.ConfigDict({busy.to_dict()!r})
        batches = iter(data.create_dataset(cfg, split="train", training=True, batch_size=8, seed=0))
        next(batches)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env=env)


def test_unknown_source_is_named():
    with pytest.raises(ValueError, match="data.name='coco_dir'"):
        data.get_class_names(_synthetic_config(name="coco_dir"))


def test_prefetch_to_device_keeps_values_and_host_ids():
    batches = [
        {"images": np.full((2, 4, 4, 3), i, np.uint8), "image_ids": np.array([b"x", b"y"], object)}
        for i in range(5)
    ]
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    for sharding_arg in (None, sharding):
        out = list(data.prefetch_to_device(iter(batches), size=2, sharding=sharding_arg))
        assert len(out) == 5
        for i, batch in enumerate(out):
            assert isinstance(batch["images"], jax.Array)
            np.testing.assert_array_equal(batch["images"], batches[i]["images"])
            assert batch["image_ids"] is batches[i]["image_ids"]
