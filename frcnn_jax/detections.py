"""The detector's last stage on one image: class scores and per-class deltas of the rois
become scored, class-wise non-maximum-suppressed boxes (Fast R-CNN's test-time rule).

Shape shorthand: P rois, K classes including background, D detections.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from frcnn_jax import boxes as box_lib
from frcnn_jax import nms as nms_lib


def detections(
    cls_logits: jnp.ndarray,
    box_deltas: jnp.ndarray,
    rois: jnp.ndarray,
    roi_mask: jnp.ndarray,
    image_size: jnp.ndarray,
    *,
    delta_stds: tuple[float, float, float, float],
    score_threshold: float,
    nms_iou: float,
    max_detections: int,
) -> dict[str, jnp.ndarray]:
    """Per-class decode, score threshold, per-class NMS, top D by score.

    Args:
      cls_logits: float ``[P, K]`` (class 0 is background).
      box_deltas: float ``[P, K, 4]`` per-class deltas, normalised by ``delta_stds``.
      rois: float32 ``[P, 4]`` (ymin, xmin, ymax, xmax) pixels; roi_mask: bool ``[P]``.
      image_size: int32 ``[2]`` (height, width): boxes are clipped to it.

    Returns:
      ``boxes`` float32 ``[D, 4]``, ``scores`` float32 ``[D]``, ``classes`` int32 ``[D]``
      0-based object classes, ``valid`` bool ``[D]``; invalid rows are zeros. D =
      ``max_detections``, sorted by score.
    """
    num_rois, k = cls_logits.shape
    scores = jax.nn.softmax(cls_logits, axis=-1)[:, 1:]  # [P, K - 1]
    deltas = box_deltas[:, 1:] * jnp.asarray(delta_stds)  # [P, K - 1, 4]
    boxes = box_lib.clip_boxes(box_lib.decode(rois[:, None, :], deltas), image_size)
    classes = jnp.broadcast_to(jnp.arange(k - 1, dtype=jnp.int32), (num_rois, k - 1))
    valid = roi_mask[:, None] & (scores > score_threshold) & (box_lib.area(boxes) > 0)
    boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
    classes, valid = classes.reshape(-1), valid.reshape(-1)
    keep, keep_valid = nms_lib.batched_nms(
        boxes, scores, classes, iou_threshold=nms_iou, max_output=max_detections, valid=valid
    )
    return {
        "boxes": jnp.where(keep_valid[:, None], boxes[keep], 0.0),
        "scores": jnp.where(keep_valid, scores[keep], 0.0),
        "classes": jnp.where(keep_valid, classes[keep], 0),
        "valid": keep_valid,
    }
