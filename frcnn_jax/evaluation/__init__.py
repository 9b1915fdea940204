"""Evaluation: VOC (devkit rules) and COCO (pycocotools) metrics on host arrays, inference over
a split with its reports, and ``eval.py``'s ``run.evaluate_checkpoint``.

Start reading at ``run.run_evaluation``; the metrics are ``voc`` and ``coco``.
"""

from frcnn_jax.evaluation.coco import COCO_METRIC_NAMES, eval_detection_coco
from frcnn_jax.evaluation.voc import (
    calc_detection_voc_ap,
    calc_detection_voc_prec_rec,
    eval_detection_voc,
)

__all__ = [
    "COCO_METRIC_NAMES",
    "calc_detection_voc_ap",
    "calc_detection_voc_prec_rec",
    "eval_detection_coco",
    "eval_detection_voc",
]
