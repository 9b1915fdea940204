"""Region proposals from RPN outputs, one image (the seed's ProposalCreator).

Shape shorthand: A anchors, P = ``post_nms_top_n`` proposals.

Boxes are float32 ``(ymin, xmin, ymax, xmax)`` absolute pixels. The seed
(simple-faster-rcnn-pytorch ``model/utils/creator_tool.py``) decodes every
anchor, clips to the image, drops boxes smaller than ``min_size``, sorts the
survivors by score, keeps the top ``n_pre_nms``, runs NMS and keeps the first
``n_post_nms``. Here the same steps have static shapes: the min-size filter is a
mask, ``lax.top_k`` over masked scores picks the pre-NMS candidates, and the
output is padded to P with ``roi_mask`` False.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

from frcnn_jax import anchors as anchor_lib
from frcnn_jax import boxes as box_lib
from frcnn_jax.nms import batched_nms, nms


def propose(
    scores: jnp.ndarray,
    deltas: jnp.ndarray,
    anchors: jnp.ndarray,
    image_size,
    *,
    pre_nms_top_n: int,
    post_nms_top_n: int,
    nms_iou: float = 0.7,
    min_size=16,
    level_sizes: Sequence[int] | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Decodes, filters and suppresses anchors into at most P proposals.

    Steps: ``boxes = clip_boxes(decode(anchors, deltas), image_size)``; keep
    boxes with height and width >= ``min_size`` whose score, deltas and
    coordinates are finite and whose anchor is centred in the image (an anchor
    centred in the batch's zero padding is never trained and never proposes;
    the seed, at batch size 1, has no padding); take the ``pre_nms_top_n`` highest scores among
    them (ties: lower anchor index first, where the seed's ``argsort()[::-1]``
    takes the higher; ``nms`` breaks ties the same way); greedy NMS (suppress IoU >
    ``nms_iou``) keeping at most ``post_nms_top_n``, in descending score
    order. The selection has no gradient; the returned boxes are differentiable
    in ``deltas``, so callers wrap them in ``lax.stop_gradient`` to match the
    seed, which computes proposals in NumPy.

    Args:
      scores: float ``[A]`` foreground scores: logits or probabilities, any
        monotone score. Non-finite scores (NaN, +-inf) are never kept.
      deltas: float ``[A, 4]`` (dy, dx, dh, dw) predicted for each anchor.
      anchors: float ``[A, 4]`` (ymin, xmin, ymax, xmax).
      image_size: ``(height, width)`` of the resized image; Python numbers or a
        ``[2]`` array (traced under ``vmap`` is fine).
      pre_nms_top_n: static number of candidates entering NMS (clamped to A);
        the seed's defaults are 12000 for training, 6000 for testing.
      post_nms_top_n: static number P of output slots (2000 / 300 in the seed).
      nms_iou: IoU above which NMS suppresses the lower-scored box.
      min_size: minimum height and width in resized-image pixels: a Python number
        or traced scalar, or a ``[2]`` array (minimum height, minimum width). The
        seed uses ``16 * scale``, scale being the resize factor of the image; the
        detector passes ``model.rpn.min_size`` times the image's ``scales``
        (``model.rpn.min_size_units="original"``) or as is ("resized").
        Zero-area boxes are always dropped.
      level_sizes: for FPN, the number of anchors of each pyramid level, in the
        order the anchors are concatenated (static ints summing to A). Then, as
        torchvision's and detectron2's RPNs do, ``pre_nms_top_n`` candidates are
        taken per level and NMS runs within each level, so large boxes from
        coarse levels do not suppress small ones from fine levels; the
        ``post_nms_top_n`` best over all levels are kept.

    Returns:
      ``rois``: float32 ``[P, 4]`` kept boxes in descending score order, then
        zero rows.
      ``roi_mask``: bool ``[P]``, True for the kept boxes (a prefix).
    """
    if pre_nms_top_n < 1 or post_nms_top_n < 1:
        raise ValueError(
            f"pre_nms_top_n and post_nms_top_n must be >= 1, got {pre_nms_top_n}, {post_nms_top_n}"
        )
    scores = jnp.asarray(scores, jnp.float32)
    deltas = jnp.asarray(deltas, jnp.float32)
    anchors = jnp.asarray(anchors, jnp.float32)
    num_anchors = anchors.shape[0]
    if scores.shape != (num_anchors,) or deltas.shape != (num_anchors, 4):
        raise ValueError(
            f"propose expects scores [A], deltas [A, 4], anchors [A, 4]; got "
            f"{scores.shape}, {deltas.shape}, {anchors.shape}"
        )
    if num_anchors == 0:
        return jnp.zeros((post_nms_top_n, 4), jnp.float32), jnp.zeros((post_nms_top_n,), bool)

    boxes = box_lib.clip_boxes(box_lib.decode(anchors, deltas), image_size)  # [A, 4]
    heights = boxes[:, 2] - boxes[:, 0]  # [A]
    widths = boxes[:, 3] - boxes[:, 1]  # [A]
    min_sizes = jnp.broadcast_to(jnp.asarray(min_size, jnp.float32), (2,))  # (height, width)
    valid = (
        (heights >= min_sizes[0])
        & (widths >= min_sizes[1])
        & anchor_lib.centred_in_image(anchors, image_size)
        # Even with min_size 0: clipped boxes lying in the padding have zero area, IoU 0
        # with each other, and NMS would never suppress them.
        & (heights > 0)
        & (widths > 0)
        & jnp.isfinite(scores)
        & jnp.all(jnp.isfinite(deltas), axis=-1)
        & jnp.all(jnp.isfinite(boxes), axis=-1)
    )  # [A]

    # Filtered boxes sort last; top_k breaks ties by lower index, like nms.
    masked_scores = jnp.where(valid, scores, -jnp.inf)  # [A]
    if level_sizes is None:
        top_scores, order = lax.top_k(masked_scores, min(pre_nms_top_n, num_anchors))
        top_boxes = boxes[order]  # [pre, 4]
        keep, roi_mask = nms(
            top_boxes,
            top_scores,
            iou_threshold=nms_iou,
            max_output=post_nms_top_n,
            valid=valid[order],
        )  # [P]
    else:
        order, levels = _per_level_top_k(masked_scores, level_sizes, pre_nms_top_n)
        top_boxes = boxes[order]  # [sum_l min(pre, A_l), 4]
        keep, roi_mask = batched_nms(
            top_boxes,
            masked_scores[order],
            levels,
            iou_threshold=nms_iou,
            max_output=post_nms_top_n,
            valid=valid[order],
        )  # [P]
    rois = jnp.where(roi_mask[:, None], top_boxes[keep], 0.0)  # [P, 4]
    return rois, roi_mask


def _per_level_top_k(scores, level_sizes, k):
    """Indices of the top ``k`` scores of each level (concatenated) and their level ids."""
    level_sizes = [int(n) for n in level_sizes]
    if sum(level_sizes) != scores.shape[0] or min(level_sizes) < 1:
        raise ValueError(
            f"level_sizes {level_sizes} must be positive and sum to the {scores.shape[0]} anchors"
        )
    orders, levels, start = [], [], 0
    for level, size in enumerate(level_sizes):
        _, index = lax.top_k(scores[start : start + size], min(k, size))
        orders.append(index + start)
        levels.append(jnp.full(index.shape, level, jnp.int32))
        start += size
    return jnp.concatenate(orders), jnp.concatenate(levels)
