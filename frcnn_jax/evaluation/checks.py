"""Validation of the per-image lists every metric takes (predictions and gt of a whole split).

Shape shorthand: N detections of one image, M ground-truth boxes of one image.
"""

from __future__ import annotations

import math

import numpy as np


def check_boxes(boxes, name: str, index: int) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return np.zeros((0, 4))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}[{index}] must have shape [n, 4], got {boxes.shape}")
    return boxes


def check_vector(values, name: str, index: int, length: int, dtype) -> np.ndarray:
    values = np.asarray(values, dtype=dtype).reshape(-1)
    if values.shape[0] != length:
        raise ValueError(f"{name}[{index}] has {values.shape[0]} entries, expected {length}")
    return values


def check_images(preds: tuple, gts: tuple, flags_name: str, num_classes: int | None):
    """Validates per-image lists.

    Args:
      preds: (pred_boxes, pred_classes, pred_scores) per-image lists.
      gts: (gt_boxes, gt_classes, gt_flags) per-image lists; gt_flags (difficult or crowd) or None.
      flags_name: argument name of gt_flags, for errors.
      num_classes: C or None (max label + 1).

    Returns:
      (per image (pred boxes, labels, scores, gt boxes, labels, flags) arrays, C).
    """
    gt_boxes, gt_classes, gt_flags = gts
    if gt_flags is None:
        gt_flags = [None] * len(gt_boxes)
    lists = (*preds, gt_boxes, gt_classes, gt_flags)
    if len({len(x) for x in lists}) != 1:
        raise ValueError(f"per-image lists differ in length: {[len(x) for x in lists]}")
    images = []
    for i, (pb, pl, ps, gb, gl, gf) in enumerate(zip(*lists)):
        pb, gb = check_boxes(pb, "pred_boxes", i), check_boxes(gb, "gt_boxes", i)
        pl = check_vector(pl, "pred_classes", i, len(pb), np.int64)
        ps = check_vector(ps, "pred_scores", i, len(pb), np.float64)
        gl = check_vector(gl, "gt_classes", i, len(gb), np.int64)
        gf = (
            np.zeros(len(gb), bool)
            if gf is None
            else check_vector(gf, flags_name, i, len(gb), bool)
        )
        images.append((pb, pl, ps, gb, gl, gf))
    labels = np.concatenate([np.zeros(0, np.int64)] + [x for im in images for x in (im[1], im[4])])
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {labels.min()}")
    inferred = int(labels.max()) + 1 if labels.size else 0
    if num_classes is None:
        num_classes = inferred
    elif inferred > num_classes:
        raise ValueError(f"label {inferred - 1} out of range for num_classes={num_classes}")
    return images, num_classes


def nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; (without a warning) when every entry is NaN."""
    values = np.asarray(values, dtype=np.float64)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan
