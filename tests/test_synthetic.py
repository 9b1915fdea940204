"""Tests for the embedded synthetic shapes dataset (frcnn_jax/data/synthetic.py)."""

import ml_collections
import numpy as np
import pytest

from frcnn_jax.data import synthetic

IMAGE_SIZE = (96, 128)
NUM_IMAGES = 40


def _config(**overrides):
    cfg = dict(num_train=12, num_eval=7, image_size=IMAGE_SIZE, max_objects=4, seed=3)
    cfg.update(overrides)
    return ml_collections.ConfigDict({"name": "synthetic", "synthetic": cfg})


def _render(index, split="train", **options):
    kwargs = dict(seed=3, image_size=IMAGE_SIZE, max_objects=4) | options
    return synthetic.render_example(index, split=split, **kwargs)


@pytest.fixture(scope="module")
def examples():
    return [_render(i) for i in range(NUM_IMAGES)]


def test_deterministic_per_seed_split_index():
    a, b = _render(5), _render(5)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], _render(6)["image"])
    assert not np.array_equal(a["image"], _render(5, split="test")["image"])
    assert not np.array_equal(a["image"], _render(5, seed=4)["image"])


def test_structure(examples):
    for ex in examples:
        n = len(ex["gt_classes"])
        assert ex["image"].shape == (*IMAGE_SIZE, 3) and ex["image"].dtype == np.uint8
        assert ex["gt_boxes"].shape == (n, 4) and ex["gt_boxes"].dtype == np.float32
        assert ex["gt_classes"].dtype == np.int32
        assert ex["masks"].shape == (n, *IMAGE_SIZE)
        assert n <= 4


def test_boxes_are_exact_tight_bounds_of_masks(examples):
    for ex in examples:
        for box, mask in zip(ex["gt_boxes"], ex["masks"]):
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            # A shape covering rows r0..r1 inclusive has ymin = r0, ymax = r1 + 1.
            expected = [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]
            np.testing.assert_array_equal(box, np.array(expected, np.float32))


def test_boxes_are_tight_on_the_drawn_pixels(examples):
    """The image itself changes colour exactly at each box edge (not just the mask)."""
    for ex in examples:
        image = ex["image"].astype(np.float32)
        for box, mask in zip(ex["gt_boxes"].astype(int), ex["masks"]):
            colour = np.median(image[mask], axis=0)
            ymin, xmin, ymax, xmax = box
            # Object pixels carry only the pixel noise (std 6) around the object colour.
            assert np.abs(image[mask] - colour).max() < 40
            # Just outside each edge, next to an object pixel, lies background (objects keep a
            # one-pixel gap), which contrasts with the object.
            for r, c in [
                (ymin - 1, np.flatnonzero(mask[ymin])),
                (ymax, np.flatnonzero(mask[ymax - 1])),
            ]:
                if 0 <= r < IMAGE_SIZE[0]:
                    assert np.abs(image[r, c] - colour).sum(-1).min() > 40
            for c, r in [
                (xmin - 1, np.flatnonzero(mask[:, xmin])),
                (xmax, np.flatnonzero(mask[:, xmax - 1])),
            ]:
                if 0 <= c < IMAGE_SIZE[1]:
                    assert np.abs(image[r, c] - colour).sum(-1).min() > 40


def test_objects_disjoint_with_limited_box_overlap(examples):
    for ex in examples:
        masks, boxes = ex["masks"], ex["gt_boxes"]
        assert (masks.sum(axis=0) <= 1).all()
        for i in range(len(boxes)):
            others = np.delete(boxes, i, axis=0)
            if len(others):
                assert synthetic._box_iou(boxes[i], others).max() < 0.3


def test_sizes_within_configured_range(examples):
    sides = np.concatenate([ex["gt_boxes"][:, 2:] - ex["gt_boxes"][:, :2] for ex in examples])
    # Mask bounds lose at most one pixel per side against the continuous outline.
    assert sides.min() >= 16 - 2 and sides.max() <= 90 + 1
    small = [_render(i, min_object_size=8, max_object_size=12) for i in range(10)]
    sides = np.concatenate([ex["gt_boxes"][:, 2:] - ex["gt_boxes"][:, :2] for ex in small])
    assert sides.min() >= 8 - 2 and sides.max() <= 12 + 1


def test_class_coverage_and_empty_images(examples):
    labels = np.concatenate([ex["gt_classes"] for ex in examples])
    assert set(labels.tolist()) == set(range(len(synthetic.CLASS_NAMES)))
    counts = [len(ex["gt_classes"]) for ex in examples]
    assert 0 in counts and max(counts) >= 3


def test_colour_is_not_a_class_cue(examples):
    """Every class appears in both dark and bright colours."""
    lumas = {label: [] for label in range(len(synthetic.CLASS_NAMES))}
    for ex in examples:
        for label, mask in zip(ex["gt_classes"], ex["masks"]):
            lumas[label].append(ex["image"][mask].mean())
    for values in lumas.values():
        assert min(values) < 110 and max(values) > 140


def test_bad_split_and_sizes_rejected():
    with pytest.raises(ValueError, match="validation"):
        _render(0, split="validation")
    with pytest.raises(ValueError, match="max_object_size"):
        _render(0, max_object_size=200)


def test_tf_source_matches_numpy_and_shards():
    cfg = _config()
    kwargs = dict(split="test", training=False, seed=0)
    ds, names = synthetic.source(cfg, process_index=0, process_count=1, **kwargs)
    assert names == synthetic.CLASS_NAMES
    elements = list(ds.as_numpy_iterator())
    assert len(elements) == 7
    first = _render(0, split="test")
    np.testing.assert_array_equal(elements[0]["image"], first["image"])
    np.testing.assert_array_equal(elements[0]["gt_boxes"], first["gt_boxes"])
    np.testing.assert_array_equal(elements[0]["gt_classes"], first["gt_classes"])
    assert elements[0]["gt_difficult"].dtype == bool and not elements[0]["gt_difficult"].any()
    assert elements[3]["image_id"] == b"test/3"
    shard_ids = []
    for process_index in range(3):
        shard, _ = synthetic.source(cfg, process_index=process_index, process_count=3, **kwargs)
        shard_ids += [e["image_id"] for e in shard.as_numpy_iterator()]
    assert sorted(shard_ids) == sorted(e["image_id"] for e in elements)
