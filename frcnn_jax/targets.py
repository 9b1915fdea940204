"""Training targets for the RPN (anchors) and the RoI head (proposals), one image.

Shape shorthand: A anchors, G max gt boxes (padded, with ``gt_mask``), P
proposals (RoIs, padded, with ``roi_mask``), S sampled RoIs (``num_samples``).

Boxes are float32 ``(ymin, xmin, ymax, xmax)`` absolute pixels. These are the
seed's (simple-faster-rcnn-pytorch ``model/utils/creator_tool.py``)
``AnchorTargetCreator`` and ``ProposalTargetCreator`` with static shapes: padded
gt rows are masked out of every maximum, and sampling is fixed-size
(``frcnn_jax.sampling``), so both functions jit and vmap over a batch. Randomness
comes only from the explicit ``key``. Targets carry no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from frcnn_jax import anchors as anchor_lib
from frcnn_jax import boxes as box_lib
from frcnn_jax import sampling


def _at_least_one_gt(*gt_arrays):
    """Pads zero-row gt arrays to one masked-out row (maxima need a non-empty axis).

    The last array must be the mask; the padded row is False there.
    """
    if gt_arrays[-1].shape[0] > 0:
        return gt_arrays
    return tuple(jnp.zeros((1,) + a.shape[1:], a.dtype) for a in gt_arrays)


def anchor_targets(
    key: jax.Array,
    anchors: jnp.ndarray,
    gt_boxes: jnp.ndarray,
    gt_mask: jnp.ndarray,
    image_size,
    *,
    num_samples: int = 256,
    positive_fraction: float = 0.5,
    positive_iou: float = 0.7,
    negative_iou: float = 0.3,
    border_rule: str = "ignore_crossing",
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """RPN classification labels and regression targets (the seed's AnchorTargetCreator).

    Rules, in the seed's order:
      1. anchors outside the image are ignored: with ``border_rule="ignore_crossing"`` (the
         seed) every anchor not fully inside ``[0, height] x [0, width]``; with
         ``"train_crossing"`` (torchvision, detectron2) only anchors whose centre lies
         outside ``[0, height) x [0, width)``, i.e. in the padding
         (``anchors.trainable_anchors``). "Inside" below means not ignored here;
      2. an inside anchor whose max IoU over the valid gt boxes is below
         ``negative_iou`` is negative (all inside anchors when there is no gt);
      3. for each valid gt box, the inside anchor(s) with its highest IoU are
         positive, ties included (the seed's ``np.where(ious == gt_max_ious)``).
         A gt box whose best IoU is 0 (it overlaps no inside anchor) is skipped:
         in the seed it would make every anchor with IoU 0 to it positive;
      4. an anchor with max IoU >= ``positive_iou`` is positive;
      5. at most ``int(positive_fraction * num_samples)`` positives are kept at
         random, then ``num_samples - num_kept_positives`` negatives; the rest
         become ignored.

    Args:
      key: PRNG key for the subsampling.
      anchors: float ``[A, 4]`` (ymin, xmin, ymax, xmax).
      gt_boxes: float ``[G, 4]``; rows where ``gt_mask`` is False are ignored
        whatever they hold (even NaN). G may be 0 or larger than A.
      gt_mask: bool ``[G]``.
      image_size: ``(height, width)`` of the resized image; Python numbers or a
        ``[2]`` array (traced under ``vmap`` is fine).
      num_samples: static total number of sampled anchors.
      positive_fraction: at most this fraction of the samples is positive.
      positive_iou: IoU at or above which an anchor is positive.
      negative_iou: IoU below which an anchor is negative.
      border_rule: "ignore_crossing" or "train_crossing" (rule 1).

    Returns:
      ``labels``: int32 ``[A]``, 1 positive, 0 negative, -1 ignored.
      ``deltas``: float32 ``[A, 4]`` (dy, dx, dh, dw) = ``encode(anchor,
      matched gt)`` for positive anchors, 0 elsewhere (the seed fills
      ignored anchors' rows too, but the RPN loss reads positive rows only).
    """
    anchors = jnp.asarray(anchors, jnp.float32)
    gt_boxes, gt_mask = _at_least_one_gt(
        jnp.asarray(gt_boxes, jnp.float32), jnp.asarray(gt_mask, bool)
    )
    inside = anchor_lib.trainable_anchors(anchors, image_size, border_rule=border_rule)  # [A]
    pairs = inside[:, None] & gt_mask[None, :]  # [A, G]
    # -1 on invalid pairs: they never win a maximum and fail every threshold.
    ious = jnp.where(pairs, box_lib.pairwise_iou(anchors, gt_boxes), -1.0)  # [A, G]
    max_ious = ious.max(axis=1)  # [A]
    matches = ious.argmax(axis=1)  # [A]
    gt_max_ious = ious.max(axis=0)  # [G]
    best_for_some_gt = jnp.any((ious == gt_max_ious) & (gt_max_ious > 0), axis=1)  # [A]

    labels = jnp.full(anchors.shape[:1], -1, jnp.int32)
    labels = jnp.where(inside & (max_ious < negative_iou), 0, labels)
    labels = jnp.where(best_for_some_gt | (max_ious >= positive_iou), 1, labels)

    positive_key, negative_key = jax.random.split(key)
    max_positives = int(positive_fraction * num_samples)  # the seed's n_pos
    positives = sampling.sample_mask(positive_key, labels == 1, capacity=max_positives)
    negatives = sampling.sample_mask(
        negative_key,
        labels == 0,
        capacity=num_samples,
        limit=num_samples - jnp.sum(positives),
    )
    labels = jnp.where(positives, 1, jnp.where(negatives, 0, -1)).astype(jnp.int32)

    deltas = box_lib.encode(anchors, gt_boxes[matches])  # [A, 4]
    deltas = jnp.where(positives[:, None], deltas, 0.0)
    return labels, deltas


def proposal_targets(
    key: jax.Array,
    rois: jnp.ndarray,
    roi_mask: jnp.ndarray,
    gt_boxes: jnp.ndarray,
    gt_classes: jnp.ndarray,
    gt_mask: jnp.ndarray,
    *,
    num_samples: int = 128,
    positive_fraction: float = 0.25,
    positive_iou: float = 0.5,
    negative_iou: Sequence[float] = (0.0, 0.5),
    delta_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    delta_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2),
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """RoIs sampled for the RoI head, with their targets (the seed's ProposalTargetCreator).

    The valid gt boxes join the valid RoIs as candidates (so every gt box can
    be a positive). A candidate's max IoU is taken over the valid gt boxes (0
    when there is none). Positives (max IoU >= ``positive_iou``) are sampled up
    to ``round(num_samples * positive_fraction)``; negatives (``negative_iou[0]
    <= max IoU < negative_iou[1]``, not already sampled as positive) fill up to
    ``num_samples``. Output order is the seed's: positives, then negatives, then
    padding (random order within each group). Candidates with non-finite
    coordinates are never sampled; a zero-area gt box has IoU 0 with every box,
    itself included, so it never makes a positive.

    Args:
      key: PRNG key for the subsampling.
      rois: float ``[P, 4]`` (ymin, xmin, ymax, xmax), e.g. ``propose``'s output.
      roi_mask: bool ``[P]``, False for padding RoIs.
      gt_boxes: float ``[G, 4]``; rows where ``gt_mask`` is False are ignored.
      gt_classes: int ``[G]`` 0-based class ids.
      gt_mask: bool ``[G]``.
      num_samples: static number S of output slots.
      positive_fraction: at most this fraction of the S slots is positive.
      positive_iou: IoU at or above which a candidate is foreground.
      negative_iou: ``(lo, hi)``: background when lo <= max IoU < hi (the seed
        uses lo = 0.0; py-faster-rcnn 0.1).
      delta_means: (dy, dx, dh, dw) subtracted from the encoded deltas.
      delta_stds: (dy, dx, dh, dw) the centred deltas are divided by.

    Returns:
      ``sample_rois``: float32 ``[S, 4]``, zeros in padding slots.
      ``sample_classes``: int32 ``[S]``, ``gt_class + 1`` for positives, 0 for
        background and padding.
      ``sample_deltas``: float32 ``[S, 4]``, ``(encode(roi, matched gt) -
        delta_means) / delta_stds`` for positives, 0 elsewhere (the head's box
        loss reads positive rows only).
      ``sample_mask``: bool ``[S]``, False for unfilled slots.
    """
    rois = jnp.asarray(rois, jnp.float32)
    gt_boxes, gt_classes, gt_mask = _at_least_one_gt(
        jnp.asarray(gt_boxes, jnp.float32),
        jnp.asarray(gt_classes, jnp.int32),
        jnp.asarray(gt_mask, bool),
    )
    candidates = jnp.concatenate([rois, gt_boxes])  # [P + G, 4]
    valid = jnp.concatenate([jnp.asarray(roi_mask, bool), gt_mask])  # [P + G]
    valid &= jnp.all(jnp.isfinite(candidates), axis=-1)
    pairs = valid[:, None] & gt_mask[None, :]  # [P + G, G]
    ious = jnp.where(pairs, box_lib.pairwise_iou(candidates, gt_boxes), -1.0)  # [P + G, G]
    matches = ious.argmax(axis=1)  # [P + G]
    max_ious = jnp.maximum(ious.max(axis=1), 0.0)  # [P + G]
    negative_lo, negative_hi = negative_iou
    positive = valid & (max_ious >= positive_iou)
    negative = valid & (max_ious >= negative_lo) & (max_ious < negative_hi)

    positive_key, negative_key = jax.random.split(key)
    # The seed's pos_roi_per_image = np.round(n_sample * pos_ratio).
    max_positives = int(np.round(num_samples * positive_fraction))
    positive_indices, positive_valid = sampling.sample_indices(
        positive_key, positive, capacity=num_samples, limit=max_positives
    )  # [S]
    num_positives = jnp.sum(positive_valid)
    sampled_positive = jnp.zeros_like(positive).at[positive_indices].max(positive_valid)
    negative_indices, negative_valid = sampling.sample_indices(
        negative_key,
        negative & ~sampled_positive,
        capacity=num_samples,
        limit=num_samples - num_positives,
    )  # [S]

    # Slot j holds positive j while j < num_positives, then negative j - num_positives.
    slots = jnp.arange(num_samples)
    is_positive = slots < num_positives  # [S]
    negative_slots = jnp.maximum(slots - num_positives, 0)  # [S]
    indices = jnp.where(is_positive, positive_indices, negative_indices[negative_slots])  # [S]
    sample_mask = is_positive | negative_valid[negative_slots]  # [S]

    sample_rois = jnp.where(sample_mask[:, None], candidates[indices], 0.0)  # [S, 4]
    matched = matches[indices]  # [S]
    sample_classes = jnp.where(is_positive, gt_classes[matched] + 1, 0).astype(jnp.int32)
    means = jnp.asarray(delta_means, jnp.float32)
    stds = jnp.asarray(delta_stds, jnp.float32)
    sample_deltas = (box_lib.encode(sample_rois, gt_boxes[matched]) - means) / stds  # [S, 4]
    sample_deltas = jnp.where(is_positive[:, None], sample_deltas, 0.0)
    return sample_rois, sample_classes, sample_deltas, sample_mask
