"""Detection metrics on host NumPy arrays: Pascal VOC AP (devkit rules) and COCO AP (pycocotools).

Every metric takes lists with one entry per image (predictions and ground truth of the whole
evaluation set), so padding has already been removed: ``pred_boxes[i]`` holds only the real
detections of image ``i``. Boxes are ``(ymin, xmin, ymax, xmax)`` pixels, labels are 0-based object
classes (no background class here).

Pixel conventions differ by metric, as in the references. The VOC metric takes the devkit's
inclusive pixel indices and adds 1 to widths and heights: pixels 0..9 are the box (0, 0, 9, 9),
10 px wide. The project's continuous boxes (ymax = last pixel + 1, see data/voc_dir.py) reproduce
the devkit's IoU exactly when passed as (ymin, xmin, ymax - 1, xmax - 1). The COCO metric takes
continuous boxes as they are (width = xmax - xmin), like COCO's own [x, y, w, h].

Shape shorthand: N detections of one image, M ground-truth boxes of one image, C object classes,
D detections of one class over all images.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# COCOeval.stats order (pycocotools cocoeval.py, summarize()); AR1/AR10/AR100 are the maxDets.
COCO_METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
COCO_METRIC_NAMES += ("AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _boxes(boxes, name: str, index: int) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        return np.zeros((0, 4))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name}[{index}] must have shape [n, 4], got {boxes.shape}")
    return boxes


def _vector(values, name: str, index: int, length: int, dtype) -> np.ndarray:
    values = np.asarray(values, dtype=dtype).reshape(-1)
    if values.shape[0] != length:
        raise ValueError(f"{name}[{index}] has {values.shape[0]} entries, expected {length}")
    return values


def _images(preds: tuple, gts: tuple, flags_name: str, num_classes: int | None):
    """Validates per-image lists.

    Args:
      preds: (pred_boxes, pred_labels, pred_scores) per-image lists.
      gts: (gt_boxes, gt_labels, gt_flags) per-image lists; gt_flags (difficult or crowd) or None.
      flags_name: argument name of gt_flags, for errors.
      num_classes: C or None (max label + 1).

    Returns:
      (per image (pred boxes, labels, scores, gt boxes, labels, flags) arrays, C).
    """
    gt_boxes, gt_labels, gt_flags = gts
    if gt_flags is None:
        gt_flags = [None] * len(gt_boxes)
    lists = (*preds, gt_boxes, gt_labels, gt_flags)
    if len({len(x) for x in lists}) != 1:
        raise ValueError(f"per-image lists differ in length: {[len(x) for x in lists]}")
    images = []
    for i, (pb, pl, ps, gb, gl, gf) in enumerate(zip(*lists)):
        pb, gb = _boxes(pb, "pred_boxes", i), _boxes(gb, "gt_boxes", i)
        pl = _vector(pl, "pred_labels", i, len(pb), np.int64)
        ps = _vector(ps, "pred_scores", i, len(pb), np.float64)
        gl = _vector(gl, "gt_labels", i, len(gb), np.int64)
        gf = np.zeros(len(gb), bool) if gf is None else _vector(gf, flags_name, i, len(gb), bool)
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


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; (without a warning) when every entry is NaN."""
    values = np.asarray(values, dtype=np.float64)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


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


def _match_image(pred_boxes, pred_labels, pred_scores, gt_boxes, gt_labels, gt_difficults, thresh):
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
    ious = np.where(pred_labels[order][:, None] == gt_labels[None, :], ious, -1.0)
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
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    gt_difficults: Sequence[np.ndarray] | None = None,
    *,
    iou_thresh: float = 0.5,
    num_classes: int | None = None,
) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    """Precision and recall curves per class over the whole set, by the VOC devkit's rules.

    Args:
      pred_boxes: per image float ``[N, 4]`` (ymin, xmin, ymax, xmax) inclusive pixel indices.
      pred_labels: per image int ``[N]`` 0-based classes.
      pred_scores: per image float ``[N]``.
      gt_boxes: per image float ``[M, 4]`` (ymin, xmin, ymax, xmax) inclusive pixel indices.
      gt_labels: per image int ``[M]``.
      gt_difficults: per image bool ``[M]``, or None (no difficult boxes).
      iou_thresh: a detection needs IoU >= iou_thresh with its best gt, in (0, 1].
      num_classes: C; default max label + 1 over predictions and gt.

    Returns:
      ``(precs, recs)``, lists of length C. For a class with non-difficult gt, float64 ``[D]``
      arrays over its detections by descending score: precision tp / (tp + fp) (0 while only
      ignored detections were seen, as py-faster-rcnn) and recall tp / (non-difficult gt). None
      for a class without non-difficult gt (its AP is undefined).
    """
    if not 0.0 < iou_thresh <= 1.0:
        raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh}")
    images, num_classes = _images(
        (pred_boxes, pred_labels, pred_scores),
        (gt_boxes, gt_labels, gt_difficults),
        "gt_difficults",
        num_classes,
    )
    labels, scores, matches = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0, np.int8)]
    num_positives = np.zeros(num_classes, np.int64)
    for pb, pl, ps, gb, gl, gd in images:
        labels.append(pl)
        scores.append(ps)
        matches.append(_match_image(pb, pl, ps, gb, gl, gd, iou_thresh))
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
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    gt_difficults: Sequence[np.ndarray] | None = None,
    *,
    iou_thresh: float = 0.5,
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
        pred_labels,
        pred_scores,
        gt_boxes,
        gt_labels,
        gt_difficults,
        iou_thresh=iou_thresh,
        num_classes=num_classes,
    )
    aps = calc_detection_voc_ap(precs, recs, use_07_metric=use_07_metric)
    return {"ap": aps, "map": _nanmean(aps)}


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
    pred_labels: Sequence[np.ndarray],
    pred_scores: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
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
      pred_labels: per image int ``[N]`` 0-based classes.
      pred_scores: per image float ``[N]``.
      gt_boxes: per image float ``[M, 4]`` (ymin, xmin, ymax, xmax).
      gt_labels: per image int ``[M]``.
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
    images, num_classes = _images(
        (pred_boxes, pred_labels, pred_scores),
        (gt_boxes, gt_labels, gt_crowds),
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
            areas = _vector(gt_areas[i], "gt_areas", i, len(gb), np.float64)
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


def per_class_table(ap: np.ndarray, class_names: Sequence[str]) -> str:
    """A text table of AP per class (float ``[C]``, NaN shown as n/a) with their mAP last."""
    ap = np.asarray(ap, dtype=np.float64).reshape(-1)
    if len(class_names) != len(ap):
        raise ValueError(f"{len(class_names)} class names for {len(ap)} AP values")
    width = max([len("class"), len("mAP"), *(len(name) for name in class_names)])

    def row(name: str, value: float) -> str:
        return f"{name:<{width}}  " + ("   n/a" if math.isnan(value) else f"{value:6.4f}")

    rule = "-" * (width + 8)
    lines = [f"{'class':<{width}}      AP", rule]
    lines += [row(name, value) for name, value in zip(class_names, ap.tolist())]
    lines += [rule, row("mAP", _nanmean(ap))]
    return "\n".join(lines)
