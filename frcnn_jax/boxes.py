"""Box arithmetic on one image: area, IoU, box coding, clipping.

Box format everywhere: float32 ``[..., 4]`` as ``(ymin, xmin, ymax, xmax)`` in
absolute pixels of the (resized) image, continuous coordinates: a box's height
is ``ymax - ymin`` (no VOC "+1"; inclusive devkit pixels are converted once,
at data input).

Shape shorthand: N, M numbers of boxes.

All functions are pure, ``jax.jit``-able and ``jax.vmap``-able; batching over
images is ``jax.vmap``. Those on a gradient path (``pairwise_iou``, ``encode``,
``decode``) have finite gradients at degenerate boxes (zero width, identical
boxes): every differentiated division or log uses a safe denominator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp

# decode() clamps dh, dw here: exp(log(1000/16)) is what turns a 16 px anchor
# into a 1000 px box, larger than any image the detector sees (detectron2's
# SCALE_CLAMP). Without it exp() overflows to inf for an untrained head.
SCALE_CLAMP = math.log(1000.0 / 16.0)

# The seed's bbox2loc floors source heights/widths at float32 eps.
_EPS = float(jnp.finfo(jnp.float32).eps)


def area(boxes: jnp.ndarray) -> jnp.ndarray:
    """Areas of boxes.

    Args:
      boxes: float ``[..., 4]`` (ymin, xmin, ymax, xmax).

    Returns:
      float ``[...]``: ``(ymax - ymin) * (xmax - xmin)``, 0 for inverted boxes
      (a box with ymax < ymin or xmax < xmin is empty, not negative).
    """
    heights = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    widths = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return heights * widths


def _safe_divide(num: jnp.ndarray, den: jnp.ndarray) -> jnp.ndarray:
    """num / den, 0 where den <= 0, with finite gradients (double where)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def pairwise_iou(boxes_a: jnp.ndarray, boxes_b: jnp.ndarray) -> jnp.ndarray:
    """Intersection over union of every pair.

    Args:
      boxes_a: float ``[N, 4]`` (ymin, xmin, ymax, xmax).
      boxes_b: float ``[M, 4]`` (ymin, xmin, ymax, xmax).

    Returns:
      float32 ``[N, M]`` in [0, 1]. A pair whose union is empty (two zero-area
      boxes) has IoU 0, as do pairs involving non-finite coordinates.
    """
    boxes_a = jnp.asarray(boxes_a, jnp.float32)
    boxes_b = jnp.asarray(boxes_b, jnp.float32)
    top_left = jnp.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])  # [N, M, 2]
    bottom_right = jnp.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])  # [N, M, 2]
    inter = jnp.prod(jnp.maximum(bottom_right - top_left, 0.0), axis=-1)  # [N, M]
    union = area(boxes_a)[:, None] + area(boxes_b)[None, :] - inter  # [N, M]
    iou = _safe_divide(inter, union)
    # NaN/inf coordinates fail every comparison: report no overlap, not NaN.
    return jnp.where(jnp.isfinite(iou), jnp.clip(iou, 0.0, 1.0), 0.0)


def _center_size(boxes: jnp.ndarray):
    heights = boxes[..., 2] - boxes[..., 0]
    widths = boxes[..., 3] - boxes[..., 1]
    ctr_y = boxes[..., 0] + 0.5 * heights
    ctr_x = boxes[..., 1] + 0.5 * widths
    return ctr_y, ctr_x, heights, widths


def encode(
    src_boxes: jnp.ndarray,
    dst_boxes: jnp.ndarray,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> jnp.ndarray:
    """Deltas that move ``src_boxes`` onto ``dst_boxes`` (the seed's bbox2loc).

    ``dy = (dst_cy - src_cy) / src_h``, ``dx = (dst_cx - src_cx) / src_w``,
    ``dh = log(dst_h / src_h)``, ``dw = log(dst_w / src_w)``, each multiplied by
    its weight. Invariant: ``decode(src, encode(src, dst)) == dst`` for boxes of
    positive size.

    Args:
      src_boxes: float ``[..., 4]`` (ymin, xmin, ymax, xmax), e.g. anchors.
      dst_boxes: float ``[..., 4]``, same shape, e.g. matched gt boxes.
      weights: (wy, wx, wh, ww) multipliers.

    Returns:
      float32 ``[..., 4]`` deltas (dy, dx, dh, dw). Source sizes are floored at
      float32 eps (as the seed does) and destination sizes too, so zero-area
      boxes encode to finite (large) values rather than inf/NaN.
    """
    src_boxes = jnp.asarray(src_boxes, jnp.float32)
    dst_boxes = jnp.asarray(dst_boxes, jnp.float32)
    src_cy, src_cx, src_h, src_w = _center_size(src_boxes)
    dst_cy, dst_cx, dst_h, dst_w = _center_size(dst_boxes)
    src_h = jnp.maximum(src_h, _EPS)
    src_w = jnp.maximum(src_w, _EPS)
    dst_h = jnp.maximum(dst_h, _EPS)
    dst_w = jnp.maximum(dst_w, _EPS)
    wy, wx, wh, ww = weights
    dy = wy * (dst_cy - src_cy) / src_h
    dx = wx * (dst_cx - src_cx) / src_w
    dh = wh * jnp.log(dst_h / src_h)
    dw = ww * jnp.log(dst_w / src_w)
    return jnp.stack([dy, dx, dh, dw], axis=-1)


def decode(
    src_boxes: jnp.ndarray,
    deltas: jnp.ndarray,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> jnp.ndarray:
    """Boxes obtained by applying ``deltas`` to ``src_boxes`` (the seed's loc2bbox).

    Args:
      src_boxes: float ``[..., 4]`` (ymin, xmin, ymax, xmax).
      deltas: float ``[..., 4]`` (dy, dx, dh, dw), same leading shape, encoded
        with the same ``weights``.
      weights: (wy, wx, wh, ww) the deltas were multiplied by.

    Returns:
      float32 ``[..., 4]`` (ymin, xmin, ymax, xmax). dh and dw are clamped at
      ``SCALE_CLAMP`` = log(1000/16) before ``exp``.
    """
    src_boxes = jnp.asarray(src_boxes, jnp.float32)
    deltas = jnp.asarray(deltas, jnp.float32)
    src_cy, src_cx, src_h, src_w = _center_size(src_boxes)
    wy, wx, wh, ww = weights
    dy = deltas[..., 0] / wy
    dx = deltas[..., 1] / wx
    dh = jnp.minimum(deltas[..., 2] / wh, SCALE_CLAMP)
    dw = jnp.minimum(deltas[..., 3] / ww, SCALE_CLAMP)
    ctr_y = dy * src_h + src_cy
    ctr_x = dx * src_w + src_cx
    h = jnp.exp(dh) * src_h
    w = jnp.exp(dw) * src_w
    return jnp.stack([ctr_y - 0.5 * h, ctr_x - 0.5 * w, ctr_y + 0.5 * h, ctr_x + 0.5 * w], axis=-1)


def clip_boxes(boxes: jnp.ndarray, image_size) -> jnp.ndarray:
    """Clips boxes to the image ``[0, height] x [0, width]``.

    Args:
      boxes: float ``[..., 4]`` (ymin, xmin, ymax, xmax).
      image_size: ``(height, width)``: Python numbers or a ``[2]`` array (traced
        values are fine, e.g. per-image sizes under ``vmap``).

    Returns:
      float32 ``[..., 4]`` with y in [0, height], x in [0, width].
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    size = jnp.asarray(image_size, jnp.float32)
    limits = jnp.stack([size[0], size[1], size[0], size[1]])
    return jnp.clip(boxes, 0.0, limits)
