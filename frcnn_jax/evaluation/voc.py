"""Pascal VOC detection AP by the devkit's rules (VOCevaldet.m) on host NumPy arrays.

Every function takes lists with one entry per image of the whole evaluation set (padding
removed). Boxes are ``(ymin, xmin, ymax, xmax)`` in the devkit's inclusive pixel indices: the
devkit adds 1 to widths and heights, so pixels 0..9 are the box (0, 0, 9, 9), 10 px wide. The
project's continuous boxes (ymax = last pixel + 1, see data/voc_dir.py) reproduce the devkit's
IoU exactly when passed as (ymin, xmin, ymax - 1, xmax - 1) (``evaluation.run`` does that).
Classes are 0-based object classes (no background class here).

Shape shorthand: N detections of one image, M ground-truth boxes of one image, C object
classes, D detections of one class over all images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from frcnn_jax.evaluation.checks import check_images, nanmean


def _voc_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of inclusive pixel boxes ``[N, 4]`` x ``[M, 4]`` -> ``[N, M]`` float64.

    The devkit (VOCevaldet.m) counts pixels: a box (1, 1, 10, 10) is 10 px wide, hence the +1.
    """
    tops = np.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])  # [N, M, 2]
    bottoms = np.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])  # [N, M, 2]
    inter = np.prod(np.maximum(bottoms - tops + 1.0, 0.0), axis=2)  # [N, M]
    area_a = np.prod(boxes_a[:, 2:] - boxes_a[:, :2] + 1.0, axis=1)
    area_b = np.prod(boxes_b[:, 2:] - boxes_b[:, :2] + 1.0, axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _match_image(
    pred_boxes, pred_classes, pred_scores, gt_boxes, gt_classes, gt_difficults, thresh
):
    """Devkit matching of one image's detections: int8 ``[N]``, 1 TP, 0 FP, -1 ignored.

    Detections are taken by descending score (stable: ties keep input order); each goes to the
    same-class gt of highest IoU. If that IoU < thresh it is a FP; if that gt is difficult it is
    ignored; otherwise the first detection to reach a gt is a TP and later ones are duplicates
    (FP). A detection never falls back to its second-best gt (VOCevaldet.m).
    """
    order = np.argsort(-pred_scores, kind="stable")
    matches = np.zeros(len(order), np.int8)
    if len(order) == 0 or len(gt_boxes) == 0:
        return matches
    ious = _voc_iou(pred_boxes[order], gt_boxes)  # [N, M]
    ious = np.where(pred_classes[order][:, None] == gt_classes[None, :], ious, -1.0)
    gt_index = ious.argmax(axis=1)  # [N], first maximum like the devkit's `ov > ovmax`
    # `>=` as VOCevaldet.m (`ovmax>=VOCopts.minoverlap`) and chainercv's eval_detection_voc;
    # py-faster-rcnn's voc_eval.py uses `ovmax > ovthresh`, which differs only at equality.
    hits = ious[np.arange(len(order)), gt_index] >= thresh
    ignored = hits & gt_difficults[gt_index]
    candidates = np.flatnonzero(hits & ~ignored)  # ascending = descending score
    _, first = np.unique(gt_index[candidates], return_index=True)
    matches[candidates[first]] = 1
    matches[ignored] = -1
    unsorted = np.empty_like(matches)
    unsorted[order] = matches
    return unsorted


def calc_detection_voc_prec_rec(
    pred_boxes: Sequence[np.ndarray],
    pred_classes: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    gt_classes: Sequence[np.ndarray],
    gt_difficults: Sequence[np.ndarray] | None = None,
    *,
    iou_threshold: float = 0.5,
    num_classes: int | None = None,
) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """Precision and recall curves per class over the whole set, by the VOC devkit's rules.

    Args:
      pred_boxes: per image float ``[N, 4]`` (ymin, xmin, ymax, xmax) inclusive pixel indices.
      pred_classes: per image int ``[N]`` 0-based classes.
      pred_scores: per image float ``[N]``.
      gt_boxes: per image float ``[M, 4]`` (ymin, xmin, ymax, xmax) inclusive pixel indices.
      gt_classes: per image int ``[M]``.
      gt_difficults: per image bool ``[M]``, or None (no difficult boxes).
      iou_threshold: a detection needs IoU >= iou_threshold with its best gt, in (0, 1].
      num_classes: C; default max label + 1 over predictions and gt.

    Returns:
      ``(precs, recs)``, lists of length C. For a class with non-difficult gt, float64 ``[D]``
      arrays over its detections by descending score: precision tp / (tp + fp) (0 while only
      ignored detections were seen, as py-faster-rcnn) and recall tp / (non-difficult gt). None
      for a class without non-difficult gt (its AP is undefined).
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    images, num_classes = check_images(
        (pred_boxes, pred_classes, pred_scores),
        (gt_boxes, gt_classes, gt_difficults),
        "gt_difficults",
        num_classes,
    )
    labels, scores, matches = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0, np.int8)]
    num_positives = np.zeros(num_classes, np.int64)
    for pb, pl, ps, gb, gl, gd in images:
        labels.append(pl)
        scores.append(ps)
        matches.append(_match_image(pb, pl, ps, gb, gl, gd, iou_threshold))
        num_positives += np.bincount(gl[~gd], minlength=num_classes)
    labels, scores, matches = (np.concatenate(x) for x in (labels, scores, matches))
    precs, recs = [], []
    for c in range(num_classes):
        if num_positives[c] == 0:
            precs.append(None)
            recs.append(None)
            continue
        selected = labels == c
        # Stable: tied scores keep (image, detection) order, consistent with _match_image.
        class_matches = matches[selected][np.argsort(-scores[selected], kind="stable")]
        tp = np.cumsum(class_matches == 1)
        fp = np.cumsum(class_matches == 0)
        precs.append(tp / np.maximum(tp + fp, 1))
        recs.append(tp / num_positives[c])
    return precs, recs


def calc_detection_voc_ap(
    precs: Sequence[np.ndarray | None],
    recs: Sequence[np.ndarray | None],
    *,
    use_07_metric: bool = False,
) -> np.ndarray:
    """Average precision per class from :func:`calc_detection_voc_prec_rec` curves.

    Args:
      precs, recs: per class float ``[D]`` curves or None.
      use_07_metric: VOC2007's 11-point interpolated AP (mean over recall thresholds 0, 0.1, ...,
        1 of the best precision at recall >= threshold) instead of VOC2010+'s area under the
        monotone precision envelope.

    Returns:
      float64 ``[C]``, NaN where the curve is None.
    """
    aps = np.full(len(precs), np.nan)
    for c, (prec, rec) in enumerate(zip(precs, recs)):
        if prec is None or rec is None:
            continue
        if use_07_metric:
            # The thresholds of py-faster-rcnn and chainercv, np.arange: they hold
            # 0.30000000000000004, so a recall of exactly 3/10 does not reach the 0.3 point
            # (likewise 0.6, 0.7); published VOC07 numbers were computed this way.
            points = [prec[rec >= t].max(initial=0.0) for t in np.arange(0.0, 1.1, 0.1)]
            aps[c] = np.sum(points) / 11.0
        else:
            mrec = np.concatenate(([0.0], rec, [1.0]))
            mpre = np.concatenate(([0.0], prec, [0.0]))
            mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # envelope: best precision to the right
            steps = np.flatnonzero(mrec[1:] != mrec[:-1])
            aps[c] = np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1])
    return aps


def eval_detection_voc(
    pred_boxes: Sequence[np.ndarray],
    pred_classes: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    gt_classes: Sequence[np.ndarray],
    gt_difficults: Sequence[np.ndarray] | None = None,
    *,
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    num_classes: int | None = None,
) -> dict:
    """Pascal VOC detection AP per class and mAP, by the devkit's rules (VOCevaldet.m).

    Inclusive pixel boxes (+1 in widths and heights for IoU), greedy matching by descending score,
    a detection on a difficult gt is neither TP nor FP, duplicates are FP; recall counts only
    non-difficult gt. Arguments as :func:`calc_detection_voc_prec_rec`, ``use_07_metric`` as
    :func:`calc_detection_voc_ap`.

    Returns:
      ``{"ap": float64 [C] (NaN for a class without non-difficult gt), "map": float}`` where map
      is the mean over classes with a defined AP (NaN if none).
    """
    precs, recs = calc_detection_voc_prec_rec(
        pred_boxes,
        pred_classes,
        pred_scores,
        gt_boxes,
        gt_classes,
        gt_difficults,
        iou_threshold=iou_threshold,
        num_classes=num_classes,
    )
    aps = calc_detection_voc_ap(precs, recs, use_07_metric=use_07_metric)
    return {"ap": aps, "map": nanmean(aps)}
