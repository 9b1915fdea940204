"""Tests for frcnn_jax/data/sampler.py: batches planned on an index, topology independent."""

import numpy as np
import pytest

from frcnn_jax.data import pipeline, sampler

BUCKETS = ((64, 64), (64, 128), (128, 64))  # square, landscape, portrait
SIZES = dict(min_size=50, max_size=120)


@pytest.mark.parametrize(
    "size, bucket",
    [
        ((150, 150), 0),  # -> 50x50
        ((100, 200), 1),  # -> 50x100
        ((200, 100), 2),  # -> 100x50
        ((375, 500), 1),  # -> 50x67 (half up: 66.67)
        ((10, 1000), 1),  # -> max_size wins: 1x120 (the 1-pixel floor)
    ],
)
def test_bucket_ids_hand_worked(size, bucket):
    assert sampler.bucket_ids([size], buckets=BUCKETS, **SIZES).tolist() == [bucket]


def test_resized_sizes_agree_with_the_tf_pipeline():
    rng = np.random.default_rng(0)
    sizes = np.concatenate([rng.integers(1, 2000, size=(300, 2)), [[375, 500], [333, 500]]])
    for min_size, max_size in ((600, 1000), (800, 1333), (50, 120), (128, 128)):
        got = sampler.resized_sizes(sizes, min_size=min_size, max_size=max_size)
        h, w = pipeline.resized_size(sizes[:, 0], sizes[:, 1], min_size=min_size, max_size=max_size)
        np.testing.assert_array_equal(got, np.stack([h.numpy(), w.numpy()], 1))


def test_no_bucket_holds_the_image_is_named():
    with pytest.raises(ValueError, match=r"example 1 \(200x100, resized 100x50\) fits none"):
        sampler.bucket_ids([[150, 150], [200, 100]], buckets=BUCKETS[:2], **SIZES)


def test_group_batches_hand_worked():
    # stream buckets:  0  1  0  0  1  1  0, B = 2
    rows, buckets = sampler.group_batches([0, 1, 0, 0, 1, 1, 0], batch_size=2, keep_partial=True)
    # complete batches in the order they complete: (0, 2) at 2, (1, 4) at 4, (3, 6) at 6;
    # then bucket 1's open batch (5) padded.
    assert rows.tolist() == [[0, 2], [1, 4], [3, 6], [5, -1]]
    assert buckets.tolist() == [0, 1, 0, 1]
    rows, buckets = sampler.group_batches([0, 1, 0, 0, 1, 1, 0], batch_size=2, keep_partial=False)
    assert rows.tolist() == [[0, 2], [1, 4], [3, 6]] and buckets.tolist() == [0, 1, 0]
    rows, buckets = sampler.group_batches([], batch_size=3, keep_partial=True)
    assert rows.shape == (0, 3) and buckets.shape == (0,)


def _random_index(n=103, seed=0):
    rng = np.random.default_rng(seed)
    bucket_of = rng.integers(0, 3, size=n)  # [N]
    eligible = rng.random(n) > 0.2  # [N]
    return bucket_of, eligible


def test_training_epochs_are_permutations_grouped_by_bucket():
    bucket_of, eligible = _random_index()
    batch_size = 4
    train = sampler.TrainingSampler(bucket_of, eligible, batch_size=batch_size, seed=3, flip=True)
    counts = np.bincount(bucket_of[eligible])
    assert train.batches_per_epoch == sum(counts // batch_size)
    epochs = []
    for epoch in range(3):
        batches = [
            train.batch(epoch * train.batches_per_epoch + j) for j in range(train.batches_per_epoch)
        ]
        members = np.concatenate([b.indices for b in batches])
        assert len(set(members.tolist())) == len(members)  # no example twice in an epoch
        assert eligible[members].all()
        for batch in batches:
            assert (bucket_of[batch.indices] == batch.bucket).all()
        # Only incomplete batches are dropped: fewer than B per bucket.
        for bucket, count in enumerate(counts):
            used = sum(len(b.indices) for b in batches if b.bucket == bucket)
            assert count - batch_size < used <= count
        epochs.append(members)
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
    flips = np.concatenate([train.batch(k).flips for k in range(3 * train.batches_per_epoch)])
    assert 0.35 < flips.mean() < 0.65


def test_batch_k_is_a_pure_function_of_seed_and_k():
    bucket_of, eligible = _random_index()
    kwargs = dict(batch_size=4, seed=7, flip=True)
    walked = sampler.TrainingSampler(bucket_of, eligible, **kwargs)
    sequence = [walked.batch(k) for k in range(60)]
    for k in (0, 23, 59, 41, 5):  # fresh samplers, out of order, across epochs
        direct = sampler.TrainingSampler(bucket_of, eligible, **kwargs).batch(k)
        np.testing.assert_array_equal(direct.indices, sequence[k].indices)
        np.testing.assert_array_equal(direct.flips, sequence[k].flips)
        assert direct.bucket == sequence[k].bucket
    other = sampler.TrainingSampler(bucket_of, eligible, batch_size=4, seed=8, flip=True)
    assert any(not np.array_equal(other.batch(k).indices, sequence[k].indices) for k in range(5))


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_process_slices_make_up_the_global_batch(process_count):
    bucket_of, eligible = _random_index()
    train = sampler.TrainingSampler(bucket_of, eligible, batch_size=8, seed=1, flip=True)
    for k in range(10):
        batch = train.batch(k)
        parts = [batch.process_slice(p, process_count) for p in range(process_count)]
        np.testing.assert_array_equal(np.concatenate([p.indices for p in parts]), batch.indices)
        np.testing.assert_array_equal(np.concatenate([p.flips for p in parts]), batch.flips)
        assert {p.bucket for p in parts} == {batch.bucket}


def test_no_complete_batch_is_an_error():
    train = sampler.TrainingSampler([0, 1, 2], [True] * 3, batch_size=2, seed=0, flip=False)
    assert train.batches_per_epoch == 0
    with pytest.raises(ValueError, match="no complete batch"):
        train.batch(0)


def test_evaluation_batches_cover_every_example_once():
    bucket_of, _ = _random_index(n=29)
    batches = sampler.evaluation_batches(bucket_of, batch_size=4)
    members = np.concatenate([b.indices for b in batches])
    assert sorted(members[members >= 0].tolist()) == list(range(29))
    assert sum(b.indices.min() < 0 for b in batches) <= 3  # one open batch per bucket at most
    for batch in batches:
        real = batch.indices[batch.indices >= 0]
        assert (bucket_of[real] == batch.bucket).all() and not batch.flips.any()
        assert np.all(np.diff(real) > 0)  # index order within a bucket
