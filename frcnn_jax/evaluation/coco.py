"""COCO box AP through pycocotools' COCOeval, with the datasets built in memory.

Boxes are continuous ``(ymin, xmin, ymax, xmax)`` pixels, taken as they are (width = xmax -
xmin, like COCO's own [x, y, w, h]). Classes are 0-based object classes.

Shape shorthand: N detections of one image, M ground-truth boxes of one image.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from frcnn_jax.evaluation.checks import check_images, check_vector

# COCOeval.stats order (pycocotools cocoeval.py, summarize()); AR1/AR10/AR100 are the maxDets.
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
COCO_METRIC_NAMES += ("AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _xywh(boxes: np.ndarray) -> np.ndarray:
    """``[n, 4]`` (ymin, xmin, ymax, xmax) -> COCO ``[n, 4]`` (x, y, width, height), no +1."""
    return np.stack(
        [boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], 1
    )


def _coco(images: list[dict], categories: list[dict], annotations: list[dict]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    coco.createIndex()
    return coco


def eval_detection_coco(
    pred_boxes: Sequence[np.ndarray],
    pred_classes: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    gt_classes: Sequence[np.ndarray],
    gt_crowds: Sequence[np.ndarray] | None = None,
    gt_areas: Sequence[np.ndarray] | None = None,
    *,
    num_classes: int | None = None,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO box metrics through pycocotools' COCOeval, with the datasets built in memory.

    Boxes are continuous coordinates, as COCO's: width = xmax - xmin, no +1 (unlike the VOC
    metric). Give them in original-image pixels so that APs/APm/APl use COCO's area ranges
    (32**2, 96**2) as intended.

    Args:
      pred_boxes: per image float ``[N, 4]`` (ymin, xmin, ymax, xmax).
      pred_classes: per image int ``[N]`` 0-based classes.
      pred_scores: per image float ``[N]``.
      gt_boxes: per image float ``[M, 4]`` (ymin, xmin, ymax, xmax).
      gt_classes: per image int ``[M]``.
      gt_crowds: per image bool ``[M]`` COCO ``iscrowd``, or None. A crowd gt is ignored and may
        absorb any number of detections; it is pycocotools' only ignore mechanism, so VOC
        difficult boxes can be passed here.
      gt_areas: per image float ``[M]`` areas for the small/medium/large split; default box areas.
      num_classes: C; default max label + 1 over predictions and gt.
      verbose: let pycocotools print its progress and summary table.

    Returns:
      ``{name: float}`` for :data:`COCO_METRIC_NAMES`; AP is averaged over IoU 0.50:0.95 and over
      classes with gt (in that area range), NaN where no class has any (pycocotools' -1).
    """
    images, num_classes = check_images(
        (pred_boxes, pred_classes, pred_scores),
        (gt_boxes, gt_classes, gt_crowds),
        "gt_crowds",
        num_classes,
    )
    if not images or num_classes == 0:
        return dict.fromkeys(COCO_METRIC_NAMES, math.nan)
    if gt_areas is not None and len(gt_areas) != len(images):
        raise ValueError(f"gt_areas has {len(gt_areas)} images, expected {len(images)}")
    gt_anns, pred_anns = [], []
    # COCO ids start at 1: COCOeval treats a matched id of 0 as "unmatched".
    for i, (pb, pl, ps, gb, gl, crowds) in enumerate(images):
        gt_xywh, pred_xywh = _xywh(gb), _xywh(pb)
        areas = gt_xywh[:, 2] * gt_xywh[:, 3]
        if gt_areas is not None:
            areas = check_vector(gt_areas[i], "gt_areas", i, len(gb), np.float64)
        for box, label, area, crowd in zip(gt_xywh.tolist(), gl.tolist(), areas.tolist(), crowds):
            gt_anns.append(
                {"id": len(gt_anns) + 1, "image_id": i + 1, "category_id": label + 1}
                | {"bbox": box, "area": area, "iscrowd": int(crowd)}
            )
        for box, label, score in zip(pred_xywh.tolist(), pl.tolist(), ps.tolist()):
            pred_anns.append(
                {"id": len(pred_anns) + 1, "image_id": i + 1, "category_id": label + 1}
                | {"bbox": box, "area": box[2] * box[3], "score": score, "iscrowd": 0}
            )
    image_infos = [{"id": i + 1} for i in range(len(images))]
    categories = [{"id": c + 1} for c in range(num_classes)]
    stdout = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with stdout:
        evaluator = COCOeval(
            _coco(image_infos, categories, gt_anns),
            _coco(image_infos, categories, pred_anns),
            iouType="bbox",
        )
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {
        name: float(value) if value >= 0 else math.nan
        for name, value in zip(COCO_METRIC_NAMES, evaluator.stats)
    }
