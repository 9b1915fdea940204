"""Which examples make up global batch k: a pure function of (index, seed, k), planned up front.

Shape shorthand: N examples of the split, n eligible ones, B global batch (all processes),
P processes, b = B / P per process, K bucket (padded) shapes, M batches of an epoch.

Every example's bucket follows from its image size alone (``bucket_ids``: the resize rule of
``pipeline.resized_size`` and the smallest-area bucket that holds the result), so batches can
be grouped by padded shape before any image is decoded, the way torchvision's
GroupedBatchSampler and detectron2's AspectRatioGroupedDataset group a shuffled stream by
aspect ratio. Unlike theirs the grouping here is a plan over the whole epoch, so it cannot
depend on how many processes, devices or loader threads read it.

Training, epoch e:
  1. ``order``: the eligible examples permuted by rng(seed, e); one flip coin per example.
  2. Walk ``order``; every example joins the open batch of its bucket; a batch is complete
     when it holds B examples, and complete batches follow each other in the order they
     complete (as tf.data's group_by_window emits them).
  3. Open batches left at the end of the epoch are dropped (< B examples per bucket). The
     bucket sizes do not change between epochs, so every epoch has the same M = sum over
     buckets of floor(n_bucket / B) batches and global batch k is batch k % M of epoch k // M.
Evaluation: every example once, in index order, grouped the same way; the open batch of each
bucket comes last, completed with padding slots (index -1).
Process p reads slots [p * b, (p + 1) * b) of every global batch: the same images in the same
padded shape whatever P is, each decoded by exactly one process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# Separates the sampler's random stream from other users of the run's seed.
_STREAM_TAG = 0x5A3D1E


def resized_sizes(sizes: np.ndarray, *, min_size: int, max_size: int) -> np.ndarray:
    """int64 [N, 2] (h, w) after the min/max-size rescale of int [N, 2] (H, W) image sizes.

    The float64 arithmetic of ``pipeline.resized_size``, so both agree to the pixel.
    """
    sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
    scale = np.minimum(min_size / sizes.min(axis=1), max_size / sizes.max(axis=1))  # [N]
    return np.maximum(np.floor(sizes * scale[:, None] + 0.5), 1.0).astype(np.int64)


def bucket_ids(
    sizes: np.ndarray, *, min_size: int, max_size: int, buckets: Sequence[tuple[int, int]]
) -> np.ndarray:
    """int32 [N]: index into ``buckets`` (sorted by area) of the smallest holding each image.

    Args:
      sizes: int [N, 2] original (H, W) image sizes.
      buckets: (Hb, Wb) shapes from ``pipeline.bucket_shapes``.
    """
    resized = resized_sizes(sizes, min_size=min_size, max_size=max_size)  # [N, 2]
    shapes = np.asarray(buckets, np.int64).reshape(-1, 2)  # [K, 2]
    fits = (shapes[None, :, 0] >= resized[:, None, 0]) & (shapes[None, :, 1] >= resized[:, None, 1])
    if not fits.any(axis=1).all():
        bad = int(np.flatnonzero(~fits.any(axis=1))[0])
        raise ValueError(
            f"example {bad} ({sizes[bad][0]}x{sizes[bad][1]}, resized "
            f"{resized[bad][0]}x{resized[bad][1]}) fits none of the buckets {list(buckets)}"
        )
    return np.argmax(fits, axis=1).astype(np.int32)


def group_batches(
    buckets_in_order: np.ndarray, *, batch_size: int, keep_partial: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Groups a stream of examples into batches of one bucket each (steps 2-3 above).

    Args:
      buckets_in_order: int [n] bucket of each example of the stream, in stream order.
      batch_size: B.
      keep_partial: keep each bucket's last, incomplete batch (padded with -1) at the end,
        in bucket order; otherwise drop it.

    Returns:
      (positions int64 [M, B] into the stream, -1 = padding slot; buckets int32 [M]).
    """
    buckets_in_order = np.asarray(buckets_in_order, np.int64)
    n = len(buckets_in_order)
    by_bucket = np.argsort(buckets_in_order, kind="stable")  # [n] stream positions
    sorted_buckets = buckets_in_order[by_bucket]
    starts = np.flatnonzero(np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1]]) if n else []
    counts = np.diff(np.r_[starts, n]).astype(np.int64)
    full_rows, full_closes, full_buckets, partial_rows, partial_buckets = [], [], [], [], []
    for start, count in zip(starts, counts):
        members = by_bucket[start : start + count]  # this bucket's stream positions, in order
        num_full = count // batch_size
        rows = members[: num_full * batch_size].reshape(num_full, batch_size)
        full_rows.append(rows)
        full_closes.append(rows[:, -1])  # a batch is complete at its last member
        full_buckets.append(np.full(num_full, sorted_buckets[start]))
        if keep_partial and count % batch_size:
            rest = members[num_full * batch_size :]
            partial_rows.append(np.r_[rest, np.full(batch_size - len(rest), -1)])
            partial_buckets.append(sorted_buckets[start])
    if full_rows:
        completion = np.argsort(np.concatenate(full_closes), kind="stable")
        rows = np.concatenate(full_rows)[completion]
        buckets = np.concatenate(full_buckets)[completion]
    else:
        rows, buckets = np.zeros((0, batch_size), np.int64), np.zeros(0, np.int64)
    if partial_rows:
        rows = np.concatenate([rows, np.stack(partial_rows)])
        buckets = np.r_[buckets, partial_buckets]
    return rows.astype(np.int64), buckets.astype(np.int32)


@dataclasses.dataclass(frozen=True)
class GlobalBatch:
    """One global batch: example indices int64 [B] (-1 = padding), flips bool [B], its bucket."""

    indices: np.ndarray
    flips: np.ndarray
    bucket: int

    def process_slice(self, process_index: int, process_count: int) -> GlobalBatch:
        """Slots [p * b, (p + 1) * b) of this batch, b = B / process_count."""
        size = len(self.indices) // process_count
        part = slice(process_index * size, (process_index + 1) * size)
        return GlobalBatch(self.indices[part], self.flips[part], self.bucket)


class TrainingSampler:
    """Endless training batches; ``batch(k)`` is a pure function of (index, seed, k).

    Args:
      bucket_ids: int [N] bucket of every example (``bucket_ids``).
      eligible: bool [N] examples that may be drawn (e.g. those with a training box).
      batch_size: B, the global batch.
      seed: the run's seed.
      flip: draw a horizontal-flip coin per example (else all False).
    """

    def __init__(self, bucket_ids, eligible, *, batch_size: int, seed: int, flip: bool):
        self._bucket_ids = np.asarray(bucket_ids, np.int64)
        self._eligible = np.flatnonzero(np.asarray(eligible, bool))
        self._batch_size = batch_size
        self._seed = seed
        self._flip = flip
        counts = np.bincount(self._bucket_ids[self._eligible])
        self.batches_per_epoch = int((counts // batch_size).sum())
        self._cached = (None, None)  # (epoch, its plan), one attribute: safe across threads

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices int64 [M, B], flips bool [M, B], buckets int32 [M]) of one epoch."""
        rng = np.random.default_rng([self._seed, epoch, _STREAM_TAG])
        order = rng.permutation(self._eligible)  # [n]
        coins = rng.random(len(order)) < 0.5 if self._flip else np.zeros(len(order), bool)
        positions, buckets = group_batches(
            self._bucket_ids[order], batch_size=self._batch_size, keep_partial=False
        )
        return order[positions], coins[positions], buckets

    def batch(self, step: int) -> GlobalBatch:
        """Global batch ``step`` (0-based) of the endless stream; O(N) once per epoch."""
        if self.batches_per_epoch == 0:
            raise ValueError("no complete batch: fewer eligible examples than the batch size")
        epoch, position = divmod(step, self.batches_per_epoch)
        cached_epoch, plan = self._cached
        if cached_epoch != epoch:
            plan = self.epoch_plan(epoch)
            self._cached = (epoch, plan)
        indices, flips, buckets = plan
        return GlobalBatch(indices[position], flips[position], int(buckets[position]))


def evaluation_batches(bucket_ids, *, batch_size: int) -> list[GlobalBatch]:
    """Every example once, in index order, grouped by bucket; padding slots have index -1."""
    positions, buckets = group_batches(bucket_ids, batch_size=batch_size, keep_partial=True)
    no_flip = np.zeros(batch_size, bool)
    return [GlobalBatch(row, no_flip, int(bucket)) for row, bucket in zip(positions, buckets)]
