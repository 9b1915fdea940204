"""Tests for frcnn_jax/data/indexed.py: planned batches read by random access.

A counting in-memory source with three image shapes (three buckets) stands in for a dataset,
so the tests see exactly which examples were decoded.
"""

import threading

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from frcnn_jax import data
from frcnn_jax.data import indexed, sampler, synthetic
from frcnn_jax.data.index import ExampleIndex, RandomAccessSource

BUCKETS = ((64, 64), (64, 128), (128, 64))
SHAPES = ((150, 150), (100, 200), (200, 100))  # -> one of each bucket (min 50, max 120)
N = 60


class CountingSource:
    """N images cycling through SHAPES; image i is filled with i % 251; one box, some empty."""

    def __init__(self, n=N, broken=(), wrong_size=()):
        self.decoded = []  # example indices in decode order
        self._lock = threading.Lock()
        self.sizes = np.array([SHAPES[i % 3] for i in range(n)], np.int32)
        self.empty = np.array([i % 7 == 3 for i in range(n)])
        self.broken, self.wrong_size = set(broken), set(wrong_size)
        index = ExampleIndex(self.sizes, ~self.empty, ~self.empty)
        self.source = RandomAccessSource(index, ("thing",), self._load)

    def _decode(self, i):
        i = int(i)
        with self._lock:
            self.decoded.append(i)
        height, width = self.sizes[i] + (10 if i in self.wrong_size else 0)
        image = np.full((height, width, 3), i % 251, np.uint8)
        boxes = np.zeros((0, 4), np.float32) if self.empty[i] else np.array([[10, 20, 50, 60.0]])
        if i in self.broken:
            return np.zeros((0, 0, 3), np.uint8), boxes.astype(np.float32), False
        return image, boxes.astype(np.float32), True

    def _load(self, i):
        image, boxes, ok = tf.numpy_function(self._decode, [i], (tf.uint8, tf.float32, tf.bool))
        image.set_shape([None, None, 3])
        boxes.set_shape([None, 4])
        labels = tf.zeros(tf.shape(boxes)[:1], tf.int32)
        example = {
            "image": image,
            "image_id": tf.strings.as_string(i),
            "gt_boxes": boxes,
            "gt_classes": labels,
            "gt_difficult": tf.zeros_like(labels, tf.bool),
        }
        return example, tf.reshape(ok, [])


def _batches(source, n, *, batch_size=4, process_index=0, process_count=1, training=True,
             start_step=0, seed=0, skip_empty=True):  # fmt: skip
    ds = indexed.indexed_batches(
        source.source,
        training=training,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        start_step=start_step,
        min_size=50,
        max_size=120,
        max_boxes=2,
        buckets=BUCKETS,
        flip=training,
        exclude_difficult=True,
        skip_empty=skip_empty,
    )
    iterator = data.NumpyIterator(ds.take(n) if n else ds)
    batches = list(iterator)
    iterator.close()
    return batches


def _concat(parts):
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _train_sampler(source):
    bucket_of = sampler.bucket_ids(source.sizes, min_size=50, max_size=120, buckets=BUCKETS)
    return sampler.TrainingSampler(bucket_of, ~source.empty, batch_size=4, seed=0, flip=True)


@pytest.fixture(scope="module")
def whole():
    """12 global batches of 4 (seed 0) read by one process, and its source."""
    source = CountingSource()
    return _batches(source, 12, batch_size=4), source


def test_global_batch_is_the_same_for_one_or_two_processes(whole):
    whole, _ = whole
    sources = [CountingSource() for _ in range(2)]
    halves = [
        _batches(s, 12, batch_size=2, process_index=p, process_count=2)
        for p, s in enumerate(sources)
    ]
    for k in range(12):
        _assert_same(whole[k], _concat([h[k] for h in halves]))
    assert {b["images"].shape[1:3] for b in whole} == set(BUCKETS)  # every bucket occurs
    # Box xmin 20 of the original: 20 * sx unflipped, w - 60 * sx flipped.
    flipped = [
        not np.isclose(b["gt_boxes"][i, 0, 1], 20 * b["scales"][i, 1])
        for b in whole
        for i in range(4)
    ]
    assert 0 < sum(flipped) < len(flipped)
    # Each process decodes only its own slots (read-ahead may go past the last batch taken).
    train = _train_sampler(sources[0])
    for p, source in enumerate(sources):
        own = {int(i) for k in range(40) for i in train.batch(k).process_slice(p, 2).indices}
        assert set(source.decoded) <= own


def test_start_step_resumes_exactly_and_decodes_nothing_before(whole):
    whole, _ = whole
    resumed = _batches(CountingSource(), 3, start_step=7)
    for k in range(3):
        _assert_same(resumed[k], whole[7 + k])
    # Far into the run (about 47 epochs): the cost does not grow with the step.
    far = 1000
    source = CountingSource()
    batches = _batches(source, 2, start_step=far)
    train = _train_sampler(source)
    expected = [train.batch(far + k).indices.tolist() for k in range(2)]
    assert [b["image_ids"].astype(int).tolist() for b in batches] == expected
    ahead = {int(i) for k in range(far, far + 30) for i in train.batch(k).indices}
    assert set(source.decoded) <= ahead and len(source.decoded) < 30 * 4


def test_seed_gives_the_order(whole):
    whole, _ = whole
    other = _batches(CountingSource(), 6, seed=6)
    assert any((a["image_ids"] != b["image_ids"]).any() for a, b in zip(whole, other))


def test_training_skips_examples_without_boxes(whole):
    whole, source = whole
    empty = set(np.flatnonzero(source.empty).tolist())
    ids = {int(i) for b in whole for i in b["image_ids"]}
    assert ids and not ids & empty
    ids = {int(i) for b in _batches(CountingSource(), 30, skip_empty=False) for i in b["image_ids"]}
    assert ids & empty


@pytest.mark.parametrize("process_count", [3])
def test_evaluation_covers_the_split_once_over_processes(process_count):
    per_process = [
        _batches(
            CountingSource(n=23), 0, batch_size=2, training=False, process_index=p,
            process_count=process_count,
        )
        for p in range(process_count)
    ]  # fmt: skip
    assert len({len(batches) for batches in per_process}) == 1  # same number of steps
    ids = []
    for batches in per_process:
        for batch in batches:
            ids += batch["image_ids"][batch["example_mask"]].astype(int).tolist()
            for i in np.flatnonzero(~batch["example_mask"]):
                assert batch["image_ids"][i] == b"" and not batch["images"][i].any()
                np.testing.assert_array_equal(batch["image_sizes"][i], batch["images"].shape[1:3])
    assert sorted(ids) == list(range(23))


def test_undecodable_image_becomes_a_padding_example():
    batches = _batches(CountingSource(n=12, broken={0, 1, 2}), 0, training=False)
    ids = [i for b in batches for i, m in zip(b["image_ids"], b["example_mask"]) if m]
    assert sorted(int(i) for i in ids) == list(range(3, 12))
    assert all(b["images"].shape[0] == 4 for b in batches)


def test_stale_index_is_named():
    with pytest.raises(tf.errors.InvalidArgumentError, match="(?s)image.*5.*but the index says"):
        _batches(CountingSource(n=12, wrong_size={5}), 0, training=False)


def _synthetic_config():
    return ml_collections.ConfigDict(
        dict(
            name="synthetic", train_split="train", eval_split="test", min_size=64, max_size=64,
            max_boxes=3, flip=True, exclude_difficult=True, skip_empty=True, shuffle_buffer=8,
            synthetic=dict(num_train=40, num_eval=7, image_size=64, max_objects=5, seed=0,
                           max_object_size=40, empty_fraction=0.3),
        )
    )  # fmt: skip


def test_synthetic_through_create_dataset_resumes_without_drawing_earlier_images(monkeypatch):
    drawn = []
    render = synthetic.render_example

    def counting_render(index, **kwargs):
        drawn.append(index)
        return render(index, **kwargs)

    monkeypatch.setattr(synthetic, "render_example", counting_render)

    def take(n, **kwargs):
        ds = data.create_dataset(
            _synthetic_config(), split="train", training=True, seed=0, **kwargs
        )
        iterator = iter(ds)
        batches = [next(iterator) for _ in range(n)]
        iterator.close()
        return batches

    whole = take(3, batch_size=4, start_step=500)
    assert len(drawn) < 1 + 30 * 4  # the validation draw and read-ahead, not 500 batches
    halves = [
        take(3, batch_size=2, process_index=p, process_count=2, start_step=500) for p in (0, 1)
    ]
    for k in range(3):
        _assert_same(whole[k], _concat([h[k] for h in halves]))


def test_synthetic_has_objects_matches_the_drawing():
    options = synthetic.render_options(_synthetic_config())
    for index in range(60):
        drawn = synthetic.render_example(index, split="train", **options)
        has = synthetic.has_objects(index, split="train", **options)
        assert has == (len(drawn["gt_classes"]) > 0), index


def test_synthetic_draws_each_image_once_and_caches_it_exactly(monkeypatch):
    config = _synthetic_config()
    config.synthetic.num_train = 8
    config.skip_empty = False
    drawn = []
    render = synthetic.render_example

    def counting_render(index, **kwargs):
        drawn.append(index)
        return render(index, **kwargs)

    monkeypatch.setattr(synthetic, "render_example", counting_render)
    iterator = iter(data.create_dataset(config, split="train", training=True, batch_size=4, seed=0))
    for _ in range(8):  # 4 epochs
        next(iterator)
    iterator.close()
    assert sorted(set(drawn)) == list(range(8)) and len(drawn) <= 1 + 8 + 4  # + races
    options = synthetic.render_options(config)
    source = synthetic.random_access(config, split="train", training=True)
    for index in (3, 0, 3, 0):  # drawn, drawn, then both from the cache
        raw, ok = source.load(tf.constant(index, tf.int64))
        expected = render(index, split="train", **options)
        assert bool(ok) and raw["image_id"].numpy() == f"train/{index}".encode()
        for key in ("image", "gt_boxes", "gt_classes"):
            np.testing.assert_array_equal(raw[key].numpy(), expected[key], err_msg=key)
