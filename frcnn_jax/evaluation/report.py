"""Reports of an evaluation: the per-class AP table, PR curves, metrics.json, detections.json
and TensorBoard scalars.

Shape shorthand: K object classes, D detections of one class over the whole split.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np


def json_float(value: float) -> float | None:
    """JSON has no NaN: an undefined AP (a class without gt) becomes null."""
    return None if value is None or math.isnan(value) else float(value)


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
                "classes": r["classes"].tolist(),
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


def summary_scalars(metrics: dict) -> dict[str, float]:
    """``eval/...`` scalars of a ``run_evaluation`` result for TensorBoard (None left out)."""
    scalars = {"eval/voc07_map": metrics["voc07_map"], "eval/voc_map": metrics["voc_map"]}
    scalars.update({f"eval/coco_{k}": v for k, v in metrics["coco"].items()})
    return {k: v for k, v in scalars.items() if v is not None}
