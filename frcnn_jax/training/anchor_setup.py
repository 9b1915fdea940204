"""Anchors checked against the training boxes at the start of training, or chosen from them.

``model.anchors.auto = True`` fits anchor sizes (and, where that raises recall, ratios) to
the training split's boxes at the configured input scale (``frcnn_jax.data.auto_anchors``:
deterministic, no randomness), starting from the backbone's default anchors; the chosen values
go into the config the run writes to its workdir (with ``auto`` False), so evaluation and the
Detector rebuild the same model. Either way the anchor recall of the trained boxes (best anchor IoU
>= 0.5, under the RPN's border rule) is logged, with a warning below ``RECALL_WARNING``.

Reads annotations and image headers only: sources that cannot list their boxes without
decoding every image (tfds) are not checked, and cannot use ``auto``.
"""

from __future__ import annotations

import time

import ml_collections
from absl import logging

from frcnn_jax import data as data_lib
from frcnn_jax.data import auto_anchors, stats
from frcnn_jax.models import build, options

RECALL_WARNING = 0.95  # below this recall at IoU 0.5, training warns
# RPNOptions.border_rule -> the stats rule of the anchors a gt box may match.
STATS_RULES = {"ignore_crossing": "inside", "train_crossing": "centered"}


def anchor_set_for_model(model) -> stats.AnchorSet:
    """The AnchorSet a FasterRCNN module uses (its strides, anchor sizes and ratios)."""
    strides = tuple(int(s) for s in model._strides())
    sizes = tuple(float(size) for size in model.anchor_options.sizes)
    ratios = tuple(float(ratio) for ratio in model.anchor_options.ratios)
    if model.is_fpn:
        return stats.AnchorSet(strides=strides, sizes=tuple((s,) for s in sizes), ratios=ratios)
    return stats.AnchorSet(strides=strides, sizes=(sizes,), ratios=ratios)


def default_sizes(backbone: str) -> tuple[float, ...]:
    """The anchors ``auto`` starts from: FPN 32..512 (one per level), else the seed's 128..512."""
    if backbone.endswith("_fpn"):
        return (32.0, 64.0, 128.0, 256.0, 512.0)
    return options.AnchorOptions().sizes


def setup_anchors(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with ``auto`` anchors resolved (a copy), after logging their recall."""
    auto = bool(config.model.anchors.get("auto", False))
    source = data_lib.source_module(config.data)
    if not hasattr(source, "records"):
        if auto:
            raise ValueError(
                f"model.anchors.auto=True needs a source that lists its boxes without decoding "
                f"(voc_dir, coco_json, synthetic); data.name={config.data.name!r} does not: give "
                "sizes, e.g. from `python -m frcnn_jax.data_report`"
            )
        return config
    start = time.perf_counter()
    data_config = config.data
    min_size, max_size = int(data_config.min_size), int(data_config.max_size)
    buckets = data_lib.bucket_shapes(
        min_size=min_size, max_size=max_size, buckets=data_config.get("buckets") or None
    )
    records = data_lib.records(data_config, data_config.train_split)
    split = stats.scale_records(records, min_size=min_size, max_size=max_size)
    exclude = bool(data_config.exclude_difficult)
    geometry = stats.trained_geometry(split, buckets=buckets, exclude_difficult=exclude)
    rule = STATS_RULES[config.model.rpn.border_rule]
    if auto:
        if not len(geometry[0]):
            raise ValueError(
                f"model.anchors.auto=True: data.train_split={data_config.train_split!r} has "
                "no training box to fit anchors to"
            )
        config = config.copy_and_resolve_references()
        config.model.anchors.sizes = default_sizes(config.model.backbone)
        config.model.anchors.ratios = options.AnchorOptions().ratios
        config.model.anchors.auto = False
    anchor_set = anchor_set_for_model(build.build_model(config.model, num_classes=1))
    if auto:
        anchor_set = auto_anchors.auto_anchor_set(anchor_set, *geometry, rule=rule)
        sizes = tuple(size for level in anchor_set.sizes for size in level)
        config.model.anchors.sizes = tuple(round(float(s), 2) for s in sizes)
        config.model.anchors.ratios = tuple(round(float(r), 4) for r in anchor_set.ratios)
        anchor_set = anchor_set_for_model(build.build_model(config.model, num_classes=1))
    if len(geometry[0]):
        table = stats.anchor_recall(
            split, anchor_set, buckets=buckets, rule=rule, exclude_difficult=exclude
        )
        recall_50, recall_70 = table[-1][2][:2]
        logging.info(
            "anchors%s: sizes %s ratios %s; recall of %d training boxes (rule %r): %.1f%% at IoU "
            "0.5, %.1f%% at 0.7 (%.1f s)",
            " chosen from the training boxes" if auto else "",
            tuple(config.model.anchors.sizes),
            tuple(config.model.anchors.ratios),
            len(geometry[0]),
            rule,
            100 * recall_50,
            100 * recall_70,
            time.perf_counter() - start,
        )
        if recall_50 < RECALL_WARNING:
            logging.warning(
                "anchor recall at IoU 0.5 is %.1f%% (< %.0f%%): training boxes without a "
                "matching anchor are hard to learn. %s`python -m frcnn_jax.data_report` shows "
                "the recall per size range; a larger input (data.min_size) or a finer stride "
                "(an FPN backbone) helps small boxes.",
                100 * recall_50,
                100 * RECALL_WARNING,
                "" if auto else "Try --config.model.anchors.auto=True. ",
            )
    return config
