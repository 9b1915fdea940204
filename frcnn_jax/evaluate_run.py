"""Evaluation of a trained detector over a dataset split: what ``eval.py`` runs.

Shape shorthand: K object classes (no background), n detections of one image, D detections of
one class over the whole split.

``run_evaluation`` (also called by the training loop every ``eval_every_steps``) runs jitted
batched inference over the evaluation split and scores it with ``frcnn_jax.evaluation``:

* VOC07 (11-point) and VOC2010+ (area) AP at IoU 0.5, by the devkit's rules. The project's
  boxes are continuous (xmax = last pixel + 1) and the devkit counts inclusive pixels, so both
  detections and gt go in as (ymin, xmin, ymax - 1, xmax - 1): the devkit's +1 then gives back
  the true widths and its IoU equals the continuous one (see ``evaluation``'s module docstring).
* COCO AP, AP50, AP75, APs/m/l through pycocotools, on original-image pixels (so the small /
  medium / large areas mean what COCO means), difficult boxes passed as crowd (ignored).

Outputs in ``output_dir``: ``metrics.json``, ``detections.json`` and ``pr_curves.png`` (one
precision-recall panel per class).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from frcnn_jax import data as data_lib
from frcnn_jax import eval_lib, evaluation, restore, train_lib
from frcnn_jax.models.faster_rcnn import FasterRCNN

# Inclusive-pixel shift for the VOC devkit metric (module docstring).
_DEVKIT_SHIFT = np.array([0.0, 0.0, 1.0, 1.0], np.float32)


def _json_float(value: float) -> float | None:
    """JSON has no NaN: an undefined AP (a class without gt) becomes null."""
    return None if value is None or math.isnan(value) else float(value)


def predict_split(predict_fn, variables, batches: Iterable[dict], *, progress: bool = False):
    """Runs inference over every batch; returns (per-image results, steady images per second).

    Per-image results are ``eval_lib.predict_dataset``'s dicts (original-image pixels).
    Batches of a shape seen for the first time include compilation and are left out of the
    speed, unless every batch was such a one.
    """
    results, seen, dropped = [], set(), 0
    steady_images, steady_seconds, all_seconds = 0, 0.0, 0.0
    bar = tqdm(desc="evaluating", unit="img", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    for batch in batches:
        images = list(eval_lib.predict_dataset(predict_fn, variables, [batch]))
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
    """VOC and COCO metrics of per-image results (``eval_lib.predict_dataset`` dicts).

    Returns:
      ``{"voc07_map", "voc_map": float, "ap07", "ap": float64 [K] (NaN: no gt),
      "coco": {name: float}, "precisions", "recalls": per class float [D] or None}``.
    """
    pred = [[r[k] for r in results] for k in ("boxes", "labels", "scores")]
    gt = [[r[k] for r in results] for k in ("gt_boxes", "gt_labels", "gt_difficult")]
    precs, recs = evaluation.calc_detection_voc_prec_rec(
        [b - _DEVKIT_SHIFT for b in pred[0]],
        pred[1],
        pred[2],
        [b - _DEVKIT_SHIFT for b in gt[0]],
        gt[1],
        gt[2],
        iou_thresh=0.5,
        num_classes=num_classes,
    )
    ap07 = evaluation.calc_detection_voc_ap(precs, recs, use_07_metric=True)
    ap = evaluation.calc_detection_voc_ap(precs, recs, use_07_metric=False)
    coco = evaluation.eval_detection_coco(*pred, *gt, num_classes=num_classes)
    with np.errstate(all="ignore"):
        voc07_map = float(np.nanmean(ap07)) if not np.all(np.isnan(ap07)) else math.nan
        voc_map = float(np.nanmean(ap)) if not np.all(np.isnan(ap)) else math.nan
    return {
        "voc07_map": voc07_map,
        "voc_map": voc_map,
        "ap07": ap07,
        "ap": ap,
        "coco": coco,
        "precisions": precs,
        "recalls": recs,
    }


def ap_table(metrics: dict) -> str:
    """Per-class VOC07 and VOC AP of a ``run_evaluation`` result as a text table, mAP last."""
    names = list(metrics["per_class"])
    width = max([len("class"), *(len(n) for n in names)])

    def cell(v):
        return "   n/a" if v is None else f"{v:6.4f}"

    rule = "-" * (width + 18)
    lines = [f"{'class':<{width}}  VOC07 AP  VOC AP", rule]
    lines += [
        f"{n:<{width}}    {cell(metrics['per_class'][n])}  {cell(metrics['per_class_voc'][n])}"
        for n in names
    ]
    lines += [rule, f"{'mAP':<{width}}    {cell(metrics['voc07_map'])}  {cell(metrics['voc_map'])}"]
    return "\n".join(lines)


def plot_pr_curves(path: str, precisions, recalls, ap07, class_names: Sequence[str]) -> None:
    """One precision-recall panel per class in a grid, saved as PNG (matplotlib Agg)."""
    import matplotlib  # noqa: PLC0415 (plotting is optional for library users)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    cols = min(4, len(class_names))
    rows = math.ceil(len(class_names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(class_names) :]:
        ax.axis("off")
    for ax, name, prec, rec, ap in zip(axes.flat, class_names, precisions, recalls, ap07):
        if prec is None:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center")
        else:
            ax.plot(rec, prec, drawstyle="steps-post")
        ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="recall", ylabel="precision")
        ax.set_title(name if math.isnan(ap) else f"{name}  AP07 {ap:.3f}", fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_outputs(output_dir: str, metrics: dict, scores: dict, results, class_names) -> None:
    """metrics.json, detections.json (original pixels) and pr_curves.png in output_dir."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    detections = {
        "step": metrics["step"],
        "class_names": list(class_names),
        "box_format": "ymin, xmin, ymax, xmax (original-image pixels)",
        "images": [
            {
                "image_id": r["image_id"],
                "boxes": np.round(r["boxes"], 2).tolist(),
                "class_ids": r["labels"].tolist(),
                "scores": np.round(r["scores"], 5).tolist(),
            }
            for r in results
        ],
    }
    with open(os.path.join(output_dir, "detections.json"), "w") as f:
        json.dump(detections, f)
    plot_pr_curves(
        os.path.join(output_dir, "pr_curves.png"),
        scores["precisions"],
        scores["recalls"],
        scores["ap07"],
        class_names,
    )


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
    # Every process reads the whole split: the metrics need all images in one place.
    batches = data_lib.create_dataset(
        config.data,
        split=config.data.eval_split,
        training=False,
        batch_size=config.eval_batch_size,
        seed=config.seed,
    )
    results, speed = predict_split(
        eval_lib.make_predict_fn(model), variables, batches, progress=progress
    )
    scores = score(results, num_classes=len(class_names))
    metrics = {
        "step": int(step),
        "voc07_map": _json_float(scores["voc07_map"]),
        "voc_map": _json_float(scores["voc_map"]),
        "coco": {k: _json_float(v) for k, v in scores["coco"].items()},
        "per_class": {n: _json_float(v) for n, v in zip(class_names, scores["ap07"])},
        "per_class_voc": {n: _json_float(v) for n, v in zip(class_names, scores["ap"])},
        "images": len(results),
        "images_per_second": float(speed),
    }
    if output_dir is not None and jax.process_index() == 0:
        write_outputs(output_dir, metrics, scores, results, class_names)
    return metrics


def summary_scalars(metrics: dict) -> dict[str, float]:
    """``eval/...`` scalars of a ``run_evaluation`` result for TensorBoard (None left out)."""
    scalars = {"eval/voc07_map": metrics["voc07_map"], "eval/voc_map": metrics["voc_map"]}
    scalars.update({f"eval/coco_{k}": v for k, v in metrics["coco"].items()})
    return {k: v for k, v in scalars.items() if v is not None}


# Model fields eval.py takes from --config rather than from the trained workdir.
TEST_TIME_FIELDS = (
    "score_threshold",
    "nms_threshold",
    "max_detections",
    "test_pre_nms_top_n",
    "test_post_nms_top_n",
)


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
      restore.WorkdirError: a missing or unreadable checkpoint, or a workdir trained with
        another config (class list or model); the message names the file, step or weights.
    """
    run_config, run_names = restore.load_run(workdir)
    restore.check_class_names(workdir, run_names, data_lib.get_class_names(config.data))
    # The trained architecture (normalisation, anchors, roi op...) comes from the workdir;
    # the given config decides the data and the test-time options.
    model_config = run_config.model.copy_and_resolve_references()
    with model_config.unlocked():
        for name in TEST_TIME_FIELDS:
            if name in config.model:
                model_config[name] = config.model[name]
    differing = sorted(
        k
        for k in model_config
        if k in config.model
        and model_config[k] != config.model[k]
        and not (
            isinstance(model_config[k], (list, tuple))
            and list(model_config[k]) == list(config.model[k])
        )
    )
    if differing:
        logging.warning("using the workdir's trained model.%s, not --config's", differing)
    model = train_lib.build_model(model_config, num_classes=len(run_names))
    variables, step = restore.restore_variables(workdir, model, run_config, step=step)
    output_dir = os.path.join(workdir, "eval")
    metrics = run_evaluation(
        model,
        variables,
        config,
        class_names=run_names,
        step=step,
        output_dir=output_dir,
        progress=progress,
    )
    print(f"step {step}, {metrics['images']} images, {metrics['images_per_second']:.1f} img/s")
    print(ap_table(metrics))
    coco = {k: v for k, v in metrics["coco"].items() if k.startswith("AP") and v is not None}
    print("COCO " + "  ".join(f"{k} {v:.4f}" for k, v in coco.items()))
    print(f"wrote {output_dir}/metrics.json, detections.json, pr_curves.png")
    return metrics
