r"""Prints what a config's training split looks like at its input scale, and how well its
anchors cover the boxes. Reads annotations and image headers only (no decoding, no model).

  python -m frcnn_jax.data_report --config=configs/synthetic.py
  python -m frcnn_jax.data_report --config=configs/synthetic.py --config.data.name=voc_dir \
    --config.data.root=ROOT --config.data.train_split=trainval --config.data.eval_split=test

Reports images, boxes, empty images and difficult boxes per class; the box-size distribution
(sqrt(h * w) after the data.min_size / data.max_size resize: quantiles and a histogram); and
anchor recall, the share of trained gt boxes whose best anchor has IoU >= 0.5 and >= 0.7, per
size range, for the configured anchors and for anchors chosen from these boxes
(``frcnn_jax.data.auto_anchors``), under each anchor rule of ``frcnn_jax.data.stats``.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from frcnn_jax import data as data_lib
from frcnn_jax.data import auto_anchors, stats
from frcnn_jax.training.anchor_setup import RECALL_WARNING, STATS_RULES, anchor_set_for_model

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_SPLIT = flags.DEFINE_string("split", None, "Split to describe; default config.data.train_split.")
flags.mark_flags_as_required(["config"])

QUANTILES = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
HISTOGRAM_EDGES = (0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, np.inf)


def _quantile_line(name: str, values: np.ndarray) -> str:
    if not len(values):
        return f"  {name}: no boxes"
    cells = "  ".join(
        f"{'min' if q == 0 else 'max' if q == 1 else f'{q:.0%}'} {v:.1f}"
        for q, v in zip(QUANTILES, np.quantile(values, QUANTILES))
    )
    return f"  {name}: {cells}"


def _histogram(sizes: np.ndarray) -> list[str]:
    counts, _ = np.histogram(sizes, bins=HISTOGRAM_EDGES)
    last = max((i for i, c in enumerate(counts) if c), default=0)
    first = min((i for i, c in enumerate(counts) if c), default=0)
    lines = []
    for i in range(first, last + 1):
        bar = "#" * int(round(50 * counts[i] / max(counts.max(), 1)))
        high = HISTOGRAM_EDGES[i + 1]
        lines.append(f"    {HISTOGRAM_EDGES[i]:>4g}-{high:<4g} {counts[i]:>7d} {bar}")
    return lines


def _recall_lines(split, anchor_set, *, buckets, exclude_difficult) -> tuple[list[str], float]:
    """Table lines (one column pair per rule) and the worst overall recall at IoU 0.5."""
    tables = {
        rule: stats.anchor_recall(
            split, anchor_set, buckets=buckets, rule=rule, exclude_difficult=exclude_difficult
        )
        for rule in stats.RULES
    }
    header = "    size range    boxes" + "".join(f"  {r + ' @0.5/0.7':>20}" for r in stats.RULES)
    lines = [header]
    for row, (name, count, _) in enumerate(tables["all"]):
        cells = "".join(
            f"  {tables[r][row][2][0]:>13.1%} {tables[r][row][2][1]:>6.1%}" for r in stats.RULES
        )
        lines.append(f"    {name:<12} {count:>6d}{cells}")
    return lines, min(table[-1][2][0] for table in tables.values())


def report(config, split_name: str) -> str:
    """The report text for ``split_name`` of ``config`` (see the module docstring)."""
    data_config = config.data
    class_names = data_lib.get_class_names(data_config)
    records = data_lib.records(data_config, split_name)
    min_size, max_size = int(data_config.min_size), int(data_config.max_size)
    buckets = data_lib.bucket_shapes(
        min_size=min_size, max_size=max_size, buckets=data_config.get("buckets") or None
    )
    split = stats.scale_records(records, min_size=min_size, max_size=max_size)
    exclude = bool(data_config.exclude_difficult)
    trained = stats.trained_boxes(split, exclude_difficult=exclude)
    per_image = np.bincount(split.image_index, minlength=split.num_images)
    trained_per_image = np.bincount(split.image_index[trained], minlength=split.num_images)
    lines = [
        f"data.name={data_config.name} split {split_name!r}: {split.num_images} images, "
        f"{len(split.classes)} boxes ({int(split.difficult.sum())} difficult); "
        f"{int(np.sum(per_image == 0))} images without boxes, "
        f"{int(np.sum((trained_per_image == 0) & (per_image > 0)))} with only difficult ones",
        f"input scale: min_size={min_size} max_size={max_size}: resize factors "
        f"{np.min(split.image_sizes / split.orig_sizes):.3g}-"
        f"{np.max(split.image_sizes / split.orig_sizes):.3g}; padded shapes "
        + ", ".join(
            f"{h}x{w}: {n}"
            for (h, w), n in sorted(
                _counts(stats.bucket_for(s, buckets) for s in split.image_sizes).items()
            )
        ),
        f"most boxes in one image: {per_image.max(initial=0)} (data.max_boxes="
        f"{data_config.max_boxes}: {int(np.sum(per_image > data_config.max_boxes))} images lose "
        "boxes)",
        "",
        f"  {'class':<20} {'images':>7} {'boxes':>7} {'difficult':>9}",
    ]
    for label, name in enumerate(class_names):
        of_class = split.classes == label
        images = len(np.unique(split.image_index[of_class]))
        lines.append(
            f"  {name:<20} {images:>7d} {int(of_class.sum()):>7d} "
            f"{int((of_class & split.difficult).sum()):>9d}"
        )
    boxes = split.boxes[trained]
    sizes = stats.box_sizes(boxes)
    heights, widths = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    lines += [
        "",
        f"trained boxes at the input scale ({len(boxes)}; exclude_difficult={exclude}):",
        _quantile_line("size sqrt(h*w)", sizes),
        _quantile_line("aspect h/w", heights / np.maximum(widths, 1e-6)),
        "  size histogram:",
        *_histogram(sizes),
    ]
    model = _build_model(config.model)
    configured = anchor_set_for_model(model)
    sets = [("configured", configured)]
    if len(sizes):
        geometry = stats.trained_geometry(split, buckets=buckets, exclude_difficult=exclude)
        # Fitted for the rule the model trains with (model.rpn.border_rule), as
        # model.anchors.auto=True does at the start of training.
        rule = STATS_RULES[config.model.rpn.border_rule]
        chosen = auto_anchors.auto_anchor_set(configured, *geometry, rule=rule)
        sets.append((f"fitted to these boxes under rule {rule!r}", chosen))
    for title, anchor_set in sets:
        table, worst = _recall_lines(split, anchor_set, buckets=buckets, exclude_difficult=exclude)
        lines += [
            "",
            f"anchors ({title}): strides {anchor_set.strides} sizes {anchor_set.sizes} "
            f"ratios {anchor_set.ratios}; recall = best anchor IoU >= 0.5 / 0.7:",
            *table,
        ]
        if title == "configured" and worst < RECALL_WARNING:
            lines.append(
                f"  WARNING: anchor recall at IoU 0.5 is {worst:.1%} (< {RECALL_WARNING:.0%}) "
                "under some rule: gt boxes without a matching anchor are hard to learn."
            )
    return "\n".join(lines)


def _counts(items) -> dict:
    out: dict = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _build_model(model_config):
    from frcnn_jax.models import build  # noqa: PLC0415 (imports the model zoo: only here)

    return build.build_model(model_config, num_classes=1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    try:
        print(report(config, _SPLIT.value or config.data.train_split))
    except data_lib.DataError as e:
        sys.exit(f"data_report: {e}")


if __name__ == "__main__":
    app.run(main)
