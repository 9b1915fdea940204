"""Evaluation of a trained detector over a dataset split: what ``eval.py`` runs.

Shape shorthand: K object classes (no background), n detections of one image, D detections of
one class over the whole split.

``run_evaluation`` (also called by the training loop every ``eval_every_steps``) runs jitted
batched inference over the evaluation split and scores it with ``frcnn_jax.evaluation``:

* VOC07 (11-point) and VOC2010+ (area) AP at IoU 0.5, by the devkit's rules. The project's
  boxes are continuous (xmax = last pixel + 1) and the devkit counts inclusive pixels, so both
  detections and gt go in as (ymin, xmin, ymax - 1, xmax - 1): the devkit's +1 then gives back
  the true widths and its IoU equals the continuous one (see ``evaluation.voc``'s module docstring).
* COCO AP, AP50, AP75, APs/m/l through pycocotools, on original-image pixels (so the small /
  medium / large areas mean what COCO means), difficult boxes passed as crowd (ignored).

Outputs in ``output_dir``: ``metrics.json``, ``detections.json`` and ``pr_curves.png`` (one
precision-recall panel per class).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from frcnn_jax import data as data_lib
from frcnn_jax import distributed
from frcnn_jax import workdir as workdir_lib
from frcnn_jax.evaluation import coco, report, voc
from frcnn_jax.evaluation.report import ap_table, summary_scalars
from frcnn_jax.inference.predict_fn import make_predict_fn, to_original_pixels
from frcnn_jax.models import build_model
from frcnn_jax.models.faster_rcnn import FasterRCNN

__all__ = ["ap_table", "evaluate_checkpoint", "run_evaluation", "score", "summary_scalars"]

# Inclusive-pixel shift for the VOC devkit metric (module docstring).
_DEVKIT_SHIFT = np.array([0.0, 0.0, 1.0, 1.0], np.float32)


def predict_dataset(predict_fn, variables, batches: Iterable[dict]):
    """Runs inference over host batches; yields one dict per real (unpadded) image.

    Each dict: ``image_id``, ``boxes`` float32 [n, 4] original pixels, ``classes``
    int32 [n], ``scores`` float32 [n], and the image's gt (``gt_boxes`` in
    original pixels, ``gt_classes``, ``gt_difficult``).
    """
    for batch in batches:
        out = jax.device_get(
            predict_fn(
                variables,
                jnp.asarray(batch["images"]),
                jnp.asarray(batch["image_sizes"]),
                jnp.asarray(batch["scales"]),
            )
        )
        boxes = to_original_pixels(out["boxes"], batch["scales"], batch["orig_sizes"])
        gt_boxes = to_original_pixels(batch["gt_boxes"], batch["scales"], batch["orig_sizes"])
        for i in np.flatnonzero(batch["example_mask"]):
            keep = out["valid"][i]
            gt = batch["gt_valid"][i]
            image_id = batch["image_ids"][i]
            yield {
                "image_id": image_id.decode() if isinstance(image_id, bytes) else str(image_id),
                "boxes": boxes[i][keep].astype(np.float32),
                "classes": out["classes"][i][keep].astype(np.int32),
                "scores": out["scores"][i][keep].astype(np.float32),
                "gt_boxes": gt_boxes[i][gt].astype(np.float32),
                "gt_classes": batch["gt_classes"][i][gt].astype(np.int32),
                "gt_difficult": batch["gt_difficult"][i][gt].astype(bool),
            }


def predict_split(predict_fn, variables, batches: Iterable[dict], *, progress: bool = False):
    """Runs inference over every batch; returns (per-image results, steady images per second).

    Per-image results are ``predict_dataset``'s dicts (original-image pixels).
    Batches of a shape seen for the first time include compilation and are left out of the
    speed, unless every batch was such a one.
    """
    results, seen, dropped = [], set(), 0
    steady_images, steady_seconds, all_seconds = 0, 0.0, 0.0
    bar = tqdm(desc="evaluating", unit="img", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    for batch in batches:
        images = list(predict_dataset(predict_fn, variables, [batch]))
        now = time.perf_counter()
        seconds, start = now - start, now
        shape = batch["images"].shape
        if shape in seen:
            steady_images += len(images)
            steady_seconds += seconds
        seen.add(shape)
        all_seconds += seconds
        results.extend(images)
        dropped += int(np.sum(batch["gt_dropped"] * batch["example_mask"]))
        bar.update(len(images))
    bar.close()
    if dropped:
        logging.warning(
            "%d ground-truth boxes beyond data.max_boxes were left out of the evaluation: "
            "raise --config.data.max_boxes for exact metrics",
            dropped,
        )
    if steady_images:
        return results, steady_images / max(steady_seconds, 1e-9)
    return results, len(results) / max(all_seconds, 1e-9)


def score(results: Sequence[dict], *, num_classes: int) -> dict:
    """VOC and COCO metrics of per-image results (``predict_dataset`` dicts).

    Returns:
      ``{"voc07_map", "voc_map": float, "ap07", "ap": float64 [K] (NaN: no gt),
      "coco": {name: float}, "precisions", "recalls": per class float [D] or None}``.
    """
    pred = [[r[k] for r in results] for k in ("boxes", "classes", "scores")]
    gt = [[r[k] for r in results] for k in ("gt_boxes", "gt_classes", "gt_difficult")]
    precs, recs = voc.calc_detection_voc_prec_rec(
        [b - _DEVKIT_SHIFT for b in pred[0]],
        pred[1],
        pred[2],
        [b - _DEVKIT_SHIFT for b in gt[0]],
        gt[1],
        gt[2],
        iou_threshold=0.5,
        num_classes=num_classes,
    )
    ap07 = voc.calc_detection_voc_ap(precs, recs, use_07_metric=True)
    ap = voc.calc_detection_voc_ap(precs, recs, use_07_metric=False)
    coco_metrics = coco.eval_detection_coco(*pred, *gt, num_classes=num_classes)
    with np.errstate(all="ignore"):
        voc07_map = float(np.nanmean(ap07)) if not np.all(np.isnan(ap07)) else math.nan
        voc_map = float(np.nanmean(ap)) if not np.all(np.isnan(ap)) else math.nan
    return {
        "voc07_map": voc07_map,
        "voc_map": voc_map,
        "ap07": ap07,
        "ap": ap,
        "coco": coco_metrics,
        "precisions": precs,
        "recalls": recs,
    }


def run_evaluation(
    model: FasterRCNN,
    variables: dict,
    config: ml_collections.ConfigDict,
    *,
    class_names: Sequence[str],
    step: int,
    output_dir: str | None = None,
    progress: bool = False,
) -> dict:
    """Evaluates ``variables`` on ``config.data.eval_split``; the metrics.json dict.

    Args:
      model: the FasterRCNN; variables: ``{"params", "frozen"}``.
      config: reads ``data`` and ``eval_batch_size``, ``seed``.
      class_names: the K names, index = label.
      step: the training step, recorded in the outputs.
      output_dir: where to write metrics.json, detections.json, pr_curves.png (None: nothing).
      progress: show a tqdm progress bar.

    Returns:
      ``{"step", "voc07_map", "voc_map", "coco": {AP, AP50, ...}, "per_class": {name: VOC07
      AP}, "per_class_voc": {name: VOC AP}, "images", "images_per_second"}``; NaN is None.
    """
    # Each process infers its share of the split; the results are gathered on every process.
    count = jax.process_count()
    batches = data_lib.create_dataset(
        config.data,
        split=config.data.eval_split,
        training=False,
        batch_size=max(1, config.eval_batch_size // count),
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=count,
    )
    results, speed = predict_split(make_predict_fn(model), variables, batches, progress=progress)
    shares = distributed.allgather_objects((results, speed))
    # One order whatever the number of processes (the VOC metric breaks score ties by order).
    results = sorted((r for part, _ in shares for r in part), key=lambda r: r["image_id"])
    speed = sum(s for _, s in shares)
    scores = score(results, num_classes=len(class_names))
    metrics = {
        "step": int(step),
        "voc07_map": report.json_float(scores["voc07_map"]),
        "voc_map": report.json_float(scores["voc_map"]),
        "coco": {k: report.json_float(v) for k, v in scores["coco"].items()},
        "per_class": {n: report.json_float(v) for n, v in zip(class_names, scores["ap07"])},
        "per_class_voc": {n: report.json_float(v) for n, v in zip(class_names, scores["ap"])},
        "images": len(results),
        "images_per_second": float(speed),
    }
    if output_dir is not None and jax.process_index() == 0:
        report.write_outputs(output_dir, metrics, scores, results, class_names)
    return metrics


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    step: int | None = None,
    progress: bool = True,
) -> dict:
    """``eval.py``: restores checkpoint ``step`` (default latest) of workdir, evaluates it,
    writes ``workdir/eval/*`` and prints the per-class table.

    Raises:
      workdir.WorkdirError: a missing or unreadable checkpoint, or a workdir trained with
        another config (class list or model); the message names the file, step or weights.
    """
    if config.get("distributed", False):  # each process evaluates its share (run_evaluation)
        distributed.initialize()
    run_config, run_names = workdir_lib.load_run(workdir)
    workdir_lib.check_class_names(workdir, run_names, data_lib.get_class_names(config.data))
    # The trained architecture (normalisation, anchors, roi op...) comes from the workdir;
    # the given config decides the data and the test-time options (``model.test``).
    model_config = run_config.model.copy_and_resolve_references()
    with model_config.unlocked():
        model_config.test = config.model.test
    differing = sorted(
        k
        for k in model_config
        if k != "test" and k in config.model and _plain(model_config[k]) != _plain(config.model[k])
    )
    if differing:
        logging.warning("using the workdir's trained model.%s, not --config's", differing)
    model = build_model(model_config, num_classes=len(run_names))
    variables, step = workdir_lib.restore_variables(workdir, model, step=step)
    output_dir = os.path.join(workdir, "eval")
    metrics = run_evaluation(
        model,
        variables,
        config,
        class_names=run_names,
        step=step,
        output_dir=output_dir,
        progress=progress and jax.process_index() == 0,
    )
    if jax.process_index() != 0:
        return metrics
    print(f"step {step}, {metrics['images']} images, {metrics['images_per_second']:.1f} img/s")
    print(ap_table(metrics))
    coco = {k: v for k, v in metrics["coco"].items() if k.startswith("AP") and v is not None}
    print("COCO " + "  ".join(f"{k} {v:.4f}" for k, v in coco.items()))
    print(f"wrote {output_dir}/metrics.json, detections.json, pr_curves.png")
    return metrics


def _plain(value):
    """Config values compared as plain Python (lists and tuples alike, ConfigDicts as dicts)."""
    if isinstance(value, ml_collections.ConfigDict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
