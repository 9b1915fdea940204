"""Tests for frcnn_jax.evaluation: VOC AP against a slow devkit transcription, hand-worked cases,
COCO metrics through pycocotools, and the per-class table."""

import math

import numpy as np
import pytest

from frcnn_jax import evaluation

# ---------------------------------------------------------------------------------------------
# Slow reference: py-faster-rcnn's lib/datasets/voc_eval.py (voc_eval + voc_ap), transcribed with
# the data read from lists instead of annotation/detection files. Boxes are converted to its
# (x1, y1, x2, y2) order. One change: `ovmax >= ovthresh`, the devkit's (VOCevaldet.m) rule,
# where py-faster-rcnn wrote `ovmax > ovthresh`.


def _reference_voc_ap(rec, prec, use_07_metric):
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.0
    else:
        mrec = np.concatenate(([0.0], rec, [1.0]))
        mpre = np.concatenate(([0.0], prec, [0.0]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return ap


def _reference_voc_eval(case, classname, ovthresh, use_07_metric):
    pred_boxes, pred_classes, pred_scores, gt_boxes, gt_classes, gt_difficults = case
    class_recs = {}
    npos = 0
    for imagename in range(len(gt_boxes)):
        R = np.flatnonzero(gt_classes[imagename] == classname)
        bbox = gt_boxes[imagename][R][:, [1, 0, 3, 2]]
        difficult = gt_difficults[imagename][R].astype(bool)
        det = [False] * len(R)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": det}
    if npos == 0:
        return math.nan

    image_ids, confidence, BB = [], [], []
    for imagename in range(len(pred_boxes)):
        for j in np.flatnonzero(pred_classes[imagename] == classname):
            image_ids.append(imagename)
            confidence.append(pred_scores[imagename][j])
            BB.append(pred_boxes[imagename][j][[1, 0, 3, 2]])
    confidence = np.array(confidence)
    BB = np.array(BB).reshape(-1, 4)

    sorted_ind = np.argsort(-confidence)
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]

    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
            ih = np.maximum(iymax - iymin + 1.0, 0.0)
            inters = iw * ih
            uni = (
                (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                + (BBGT[:, 2] - BBGT[:, 0] + 1.0) * (BBGT[:, 3] - BBGT[:, 1] + 1.0)
                - inters
            )
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax >= ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.0
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0

    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return _reference_voc_ap(rec, prec, use_07_metric)


# ---------------------------------------------------------------------------------------------
# Random cases: a few images on a 32 px canvas, gt of 3 classes (a quarter difficult), detections
# that are jittered gt copies (hits, duplicates, wrong classes) plus random boxes. Integer boxes,
# as VOC's, make IoU ties and IoU exactly at the threshold common; half the cases are continuous.


def _random_boxes(rng, n, integer):
    tops = rng.uniform(0, 24, (n, 2))
    sizes = rng.uniform(0, 10, (n, 2))
    boxes = np.concatenate([tops, tops + sizes], axis=1)
    return np.round(boxes) if integer else boxes


def _random_case(seed, num_classes=3):
    rng = np.random.default_rng(seed)
    integer = seed % 2 == 0
    case = tuple([] for _ in range(6))
    for _ in range(rng.integers(1, 5)):
        num_gt = rng.integers(0, 6)
        gt_boxes = _random_boxes(rng, num_gt, integer)
        gt_classes = rng.integers(0, num_classes, num_gt)
        num_copies = rng.integers(0, 2 * num_gt + 1)
        source = rng.integers(0, max(num_gt, 1), num_copies)
        copies = gt_boxes[source] + rng.normal(0, 1.5, (num_copies, 4))
        copies = np.round(copies) if integer else copies
        copies[:, 2:] = np.maximum(copies[:, 2:], copies[:, :2])
        relabel = rng.random(num_copies) < 0.2
        copy_labels = np.where(
            relabel, rng.integers(0, num_classes, num_copies), gt_classes[source]
        )
        num_random = rng.integers(0, 4)
        pred_boxes = np.concatenate([copies, _random_boxes(rng, num_random, integer)])
        pred_classes = np.concatenate([copy_labels, rng.integers(0, num_classes, num_random)])
        pred_scores = rng.random(len(pred_boxes))  # distinct: no tie-order question
        for lst, x in zip(case, (pred_boxes, pred_classes, pred_scores, gt_boxes, gt_classes)):
            lst.append(x)
        case[5].append(rng.random(num_gt) < 0.25)
    return case


@pytest.mark.parametrize("use_07_metric", [False, True])
@pytest.mark.parametrize("iou_threshold", [0.5, 0.7])
def test_voc_matches_reference_on_random_cases(iou_threshold, use_07_metric):
    for seed in range(150):
        case = _random_case(seed)
        result = evaluation.eval_detection_voc(
            *case, iou_threshold=iou_threshold, use_07_metric=use_07_metric, num_classes=3
        )
        expected = [_reference_voc_eval(case, c, iou_threshold, use_07_metric) for c in range(3)]
        np.testing.assert_allclose(result["ap"], expected, rtol=1e-12, atol=1e-12, err_msg=seed)
        defined = [ap for ap in expected if not math.isnan(ap)]
        assert result["map"] == pytest.approx(
            np.mean(defined) if defined else math.nan, nan_ok=True
        )


# ---------------------------------------------------------------------------------------------
# Hand-worked cases: one image, one class unless said otherwise.

GT_A = [0.0, 0.0, 9.0, 9.0]  # 10 x 10 inclusive pixels
GT_B = [20.0, 20.0, 29.0, 29.0]
MISS = [40.0, 40.0, 49.0, 49.0]  # overlaps nothing


def _voc(preds, scores, gts, difficults=None, **kwargs):
    gt_difficults = None if difficults is None else [np.asarray(difficults)]
    return evaluation.eval_detection_voc(
        [np.asarray(preds).reshape(-1, 4)],
        [np.zeros(len(preds), int)],
        [np.asarray(scores, float)],
        [np.asarray(gts).reshape(-1, 4)],
        [np.zeros(len(gts), int)],
        gt_difficults,
        **kwargs,
    )


@pytest.mark.parametrize("use_07_metric", [False, True])
def test_perfect_detections_give_ap_one(use_07_metric):
    result = _voc([GT_A, GT_B], [0.9, 0.8], [GT_A, GT_B], use_07_metric=use_07_metric)
    np.testing.assert_allclose(result["ap"], [1.0])
    assert result["map"] == 1.0


@pytest.mark.parametrize(
    ("use_07_metric", "expected"),
    [
        # prec = [1, 1/2, 2/3], rec = [1/2, 1/2, 1]: envelope 1 up to recall 1/2, then 2/3.
        # Area: 1/2 * 1 + 1/2 * 2/3 = 5/6.
        (False, 5 / 6),
        # 11 points: t = 0 .. 0.5 (six points) see precision 1; t = 0.6 .. 1 (five) see 2/3.
        # (6 * 1 + 5 * 2/3) / 11 = 28/33.
        (True, 28 / 33),
    ],
)
def test_false_positive_ranked_above_a_true_positive(use_07_metric, expected):
    result = _voc([GT_A, MISS, GT_B], [0.9, 0.8, 0.7], [GT_A, GT_B], use_07_metric=use_07_metric)
    assert result["ap"][0] == pytest.approx(expected)


def test_duplicate_detection_is_false_positive():
    # The second detection on A is a duplicate: the same curves and AP (5/6) as a plain FP there.
    args = ([GT_A, GT_A, GT_B], [0.9, 0.8, 0.7], [GT_A, GT_B])
    assert _voc(*args)["ap"][0] == pytest.approx(5 / 6)
    precs, recs = evaluation.calc_detection_voc_prec_rec(
        [np.asarray(args[0])],
        [np.zeros(3, int)],
        [np.asarray(args[1])],
        [np.asarray(args[2])],
        [np.zeros(2, int)],
    )
    np.testing.assert_allclose(precs[0], [1.0, 1 / 2, 2 / 3])
    np.testing.assert_allclose(recs[0], [1 / 2, 1 / 2, 1.0])


def test_detection_goes_to_its_best_gt_even_if_taken():
    # B is A shifted right by 2 px. The second detection has IoU 100/110 with A (taken) and
    # 90/120 = 0.75 with B (free): the devkit makes it a duplicate FP, it does not fall back to B.
    gt_b = [0.0, 2.0, 9.0, 11.0]
    result = _voc([GT_A, [0.0, 0.0, 9.0, 10.0]], [0.9, 0.8], [GT_A, gt_b])
    # prec = [1, 1/2], rec = [1/2, 1/2]: area 1/2 * 1.
    assert result["ap"][0] == pytest.approx(0.5)


def test_detections_on_difficult_gt_are_ignored():
    # A is difficult: two detections on it are neither TP nor FP (not even the second, a
    # "duplicate"), and recall counts only B. Curves over (A, A, MISS, B): tp = [0, 0, 0, 1],
    # fp = [0, 0, 1, 1], so prec = [0, 0, 0, 1/2], rec = [0, 0, 0, 1] -> AP = 1/2. Counting the
    # detections on A as FPs would give 1/4; counting A in recall would give at most 1/4 too.
    preds, scores = [GT_A, GT_A, MISS, GT_B], [0.95, 0.9, 0.8, 0.7]
    for use_07_metric in (False, True):
        result = _voc(preds, scores, [GT_A, GT_B], [True, False], use_07_metric=use_07_metric)
        assert result["ap"][0] == pytest.approx(0.5)


def test_inclusive_pixels_change_a_borderline_iou():
    # Continuous IoU would be 9 * 4.4 / 81 = 0.489 (FP); with the devkit's +1 the detection
    # covers 10 x 5.4 of A's 10 x 10 pixels: IoU 0.54 (TP).
    assert _voc([[0.0, 0.0, 9.0, 4.4]], [0.9], [GT_A])["ap"][0] == 1.0


def test_iou_exactly_at_threshold_is_a_hit():
    # 10 x 5 of 10 x 10 pixels: IoU exactly 0.5. VOCevaldet.m tests `ovmax >= minoverlap`.
    assert _voc([[0.0, 0.0, 9.0, 4.0]], [0.9], [GT_A])["ap"][0] == 1.0
    assert _voc([[0.0, 0.0, 9.0, 4.0]], [0.9], [GT_A], iou_threshold=0.51)["ap"][0] == 0.0


def test_class_without_gt_is_nan_and_left_out_of_map():
    # Class 0 perfect; class 1 has only a detection; class 2 only a difficult gt; class 3 unseen.
    result = evaluation.eval_detection_voc(
        [np.asarray([GT_A, GT_B])],
        [np.asarray([0, 1])],
        [np.asarray([0.9, 0.8])],
        [np.asarray([GT_A, MISS])],
        [np.asarray([0, 2])],
        [np.asarray([False, True])],
        num_classes=4,
    )
    np.testing.assert_array_equal(result["ap"], [1.0, np.nan, np.nan, np.nan])
    assert result["map"] == 1.0


def test_class_with_gt_but_no_detection_scores_zero():
    result = evaluation.eval_detection_voc(
        [np.zeros((0, 4))],
        [np.zeros(0, int)],
        [np.zeros(0)],
        [np.asarray([GT_A, GT_B])],
        [np.asarray([0, 1])],
    )
    np.testing.assert_array_equal(result["ap"], [0.0, 0.0])


def test_empty_inputs():
    result = evaluation.eval_detection_voc([], [], [], [], [])
    assert result["ap"].shape == (0,) and math.isnan(result["map"])
    empty = [np.zeros((0, 4))], [np.zeros(0, int)], [np.zeros(0)]
    result = evaluation.eval_detection_voc(*empty, *empty[:2], num_classes=2)
    assert np.isnan(result["ap"]).all() and math.isnan(result["map"])


def test_detections_in_images_without_gt_are_false_positives():
    # Image 1 has no gt; its higher-scored detection precedes the TP of image 0: AP = 1/2.
    result = evaluation.eval_detection_voc(
        [np.asarray([GT_A]), np.asarray([GT_A])],
        [np.zeros(1, int)] * 2,
        [np.asarray([0.5]), np.asarray([0.9])],
        [np.asarray([GT_A]), np.zeros((0, 4))],
        [np.zeros(1, int), np.zeros(0, int)],
    )
    assert result["ap"][0] == pytest.approx(0.5)


def test_bad_inputs_raise():
    one = [np.asarray([GT_A])], [np.zeros(1, int)], [np.ones(1)]
    with pytest.raises(ValueError, match="differ in length"):
        evaluation.eval_detection_voc(*one, [], [])
    with pytest.raises(ValueError, match=r"gt_boxes\[0\]"):
        evaluation.eval_detection_voc(*one, [np.zeros((1, 5))], [np.zeros(1, int)])
    with pytest.raises(ValueError, match="num_classes=1"):
        evaluation.eval_detection_voc(*one, [np.asarray([GT_A])], [np.ones(1, int)], num_classes=1)
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluation.eval_detection_voc(*one, *one[:2], iou_threshold=0.0)


# ---------------------------------------------------------------------------------------------
# COCO metrics through pycocotools.

COCO_GT = (
    [np.asarray([[10.0, 10.0, 30.0, 40.0], [50.0, 0.0, 70.0, 100.0]]), np.asarray([GT_B])],
    [np.asarray([0, 1]), np.asarray([0])],
)


def _coco(pred_boxes, pred_classes=None, scores=None, gt=COCO_GT, **kwargs):
    pred_classes = gt[1] if pred_classes is None else pred_classes
    scores = [np.linspace(0.9, 0.5, len(b)) for b in pred_boxes] if scores is None else scores
    return evaluation.eval_detection_coco(pred_boxes, pred_classes, scores, *gt, **kwargs)


def test_coco_perfect_predictions(capsys):
    result = _coco(COCO_GT[0])
    assert set(result) == set(evaluation.COCO_METRIC_NAMES)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "AR100"):
        assert result[name] == pytest.approx(1.0), name
    assert math.isnan(result["APl"])  # no gt of area > 96**2
    assert capsys.readouterr().out == ""  # pycocotools is silenced


def test_coco_shifted_boxes_score_lower():
    shifted = [b + 2.0 for b in COCO_GT[0]]
    result = _coco(shifted)
    assert 0.0 < result["AP"] < 1.0 and result["AP"] < result["AP50"]


def test_coco_empty_predictions_score_zero():
    empty = [np.zeros((0, 4)), np.zeros((0, 4))]
    result = _coco(empty, [np.zeros(0, int)] * 2, [np.zeros(0)] * 2)
    assert result["AP"] == 0.0 and result["AR100"] == 0.0


def test_coco_images_without_gt_and_classes_without_gt():
    # Image 2 has no gt and no detection; image 3 has no gt and a top-scored FP of class 0 that
    # costs AP; class 2 (no gt anywhere) has an FP that changes nothing.
    gt = ([*COCO_GT[0], np.zeros((0, 4)), np.zeros((0, 4))], [*COCO_GT[1], *[np.zeros(0, int)] * 2])
    boxes = [*COCO_GT[0], np.zeros((0, 4)), np.asarray([GT_A])]
    labels = [*COCO_GT[1], np.zeros(0, int), np.asarray([0])]
    scores = [np.asarray([0.8, 0.8]), np.asarray([0.8]), np.zeros(0), np.asarray([0.9])]
    assert _coco(boxes, labels, scores, gt)["AP"] < 1.0
    boxes[1] = np.asarray([GT_B, GT_A])
    labels[1], scores[1], scores[3] = np.asarray([0, 2]), np.asarray([0.8, 0.9]), np.asarray([0.1])
    assert _coco(boxes, labels, scores, gt, num_classes=3)["AP"] == pytest.approx(1.0)


def test_coco_crowd_gt_absorbs_detections():
    # A crowd region of class 0 beside a normal class 0 box: two top-scored detections inside
    # the crowd are ignored. Were the region a normal gt, one of them would be a duplicate FP.
    crowd = [50.0, 0.0, 60.0, 100.0]
    gt = ([np.asarray([COCO_GT[0][0][0], crowd])], [np.asarray([0, 0])])
    boxes = [np.asarray([COCO_GT[0][0][0], [50.0, 0.0, 60.0, 50.0], [50.0, 50.0, 60.0, 100.0]])]
    labels, scores = [np.zeros(3, int)], [np.asarray([0.5, 0.9, 0.8])]
    crowds = [np.asarray([False, True])]
    assert _coco(boxes, labels, scores, gt, gt_crowds=crowds)["AP"] == pytest.approx(1.0)
    assert _coco(boxes, labels, scores, gt)["AP"] < 0.5


def test_coco_gt_areas_choose_the_size_range():
    areas = [np.full(2, 100.0**2), np.full(1, 100.0**2)]
    result = _coco(COCO_GT[0], gt_areas=areas)
    assert result["APl"] == pytest.approx(1.0) and math.isnan(result["APs"])


def test_coco_without_any_gt_is_nan():
    empty = [np.zeros((0, 4))], [np.zeros(0, int)], [np.zeros(0)]
    result = evaluation.eval_detection_coco(*empty, *empty[:2])
    assert all(math.isnan(v) for v in result.values())


# ---------------------------------------------------------------------------------------------
