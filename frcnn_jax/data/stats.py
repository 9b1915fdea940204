"""Training-split statistics at the configured input scale: counts, box sizes, anchor recall.

Shape shorthand: I images, N gt boxes (of all images), K anchor shapes (sum over levels of
sizes x ratios), A anchors of one padded image.

Box format: float32 (ymin, xmin, ymax, xmax) continuous pixels; "size" of a box is
sqrt(height * width). Everything is NumPy on the host and reads annotation records only
(``frcnn_jax.data.records(data_config, split)``), never pixels.

Anchor recall is the share of gt boxes whose best anchor has IoU >= t. The anchors are the
model's (``frcnn_jax.anchors``: base anchors of side ``size`` and ratio h / w centred on
(stride / 2, stride / 2) of each cell, shifted by multiples of the stride) over the padded
image (``ceil(Hb / stride)`` cells: exact for strided convolutions, VGG16's pools floor odd
sizes instead). Which anchors a gt box may use is the ``rule``:
  "all"       every anchor of the padded image (padding too)
  "centered"  anchors whose centre lies in the image, 0 <= c < h (torchvision / detectron2
              train these; the ones centred in the padding are excluded)
  "inside"    anchors fully inside the image, 0 <= ymin, ymax <= h (the seed's rule)
The IoU of a fixed anchor shape with a box is a product of two 1-D overlaps, each
non-increasing in the distance between centres, so the best position of each shape is the
allowed grid cell nearest to the box centre in each axis: ``best_anchor_ious`` evaluates K
candidates per box instead of all A anchors (``AnchorSet.anchors`` + IoU is the slow
reference the tests compare it with).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from frcnn_jax import anchors as anchors_lib

RULES = ("all", "centered", "inside")
SIZE_EDGES = (0.0, 16.0, 32.0, 64.0, 128.0, 256.0, math.inf)  # recall is reported per range
THRESHOLDS = (0.5, 0.7)


def resized_size(height: int, width: int, *, min_size: int, max_size: int) -> tuple[int, int]:
    """(h, w) after the pipeline's min/max-size rescale (NumPy twin of pipeline.resized_size)."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    new_h = max(math.floor(height * scale + 0.5), 1)
    new_w = max(math.floor(width * scale + 0.5), 1)
    return int(new_h), int(new_w)


def bucket_for(size: Sequence[int], buckets: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The smallest-area (Hb, Wb) of ``buckets`` (sorted by area) that holds ``size``."""
    for height, width in buckets:
        if height >= size[0] and width >= size[1]:
            return int(height), int(width)
    raise ValueError(f"no bucket of {list(buckets)} holds an image of {tuple(size)}")


@dataclasses.dataclass(frozen=True)
class ScaledSplit:
    """The usable gt boxes of a split at the input scale (what the pipeline feeds the model)."""

    image_sizes: np.ndarray  # int32 [I, 2] resized (h, w)
    orig_sizes: np.ndarray  # int32 [I, 2] original (H, W)
    image_index: np.ndarray  # int32 [N], the image of each box
    boxes: np.ndarray  # float32 [N, 4] resized pixels
    classes: np.ndarray  # int32 [N], 0-based class indices
    difficult: np.ndarray  # bool [N]

    @property
    def num_images(self) -> int:
        return len(self.image_sizes)


def scale_records(records: Sequence, *, min_size: int, max_size: int) -> ScaledSplit:
    """Resizes every record's boxes as the pipeline does.

    Boxes are clipped to the original image, those with no height or width left are dropped
    (as ``pipeline.usable_boxes``), and the rest scaled by (h / H, w / W) per axis.
    """
    image_sizes, orig_sizes, index, boxes, classes, difficult = [], [], [], [], [], []
    for i, record in enumerate(records):
        height, width = (int(d) for d in record.image_size)
        new_h, new_w = resized_size(height, width, min_size=min_size, max_size=max_size)
        image_sizes.append((new_h, new_w))
        orig_sizes.append((height, width))
        clipped = np.clip(
            np.asarray(record.gt_boxes, np.float32).reshape(-1, 4), 0, [height, width] * 2
        )
        usable = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        scale = np.array([new_h / height, new_w / width] * 2, np.float32)
        boxes.append(clipped[usable] * scale)
        classes.append(np.asarray(record.gt_classes, np.int32)[usable])
        difficult.append(np.asarray(record.gt_difficult, bool)[usable])
        index.append(np.full(int(usable.sum()), i, np.int32))
    return ScaledSplit(
        image_sizes=np.asarray(image_sizes, np.int32).reshape(-1, 2),
        orig_sizes=np.asarray(orig_sizes, np.int32).reshape(-1, 2),
        image_index=np.concatenate(index or [np.zeros(0, np.int32)]),
        boxes=np.concatenate(boxes or [np.zeros((0, 4), np.float32)]).reshape(-1, 4),
        classes=np.concatenate(classes or [np.zeros(0, np.int32)]),
        difficult=np.concatenate(difficult or [np.zeros(0, bool)]),
    )


def box_sizes(boxes: np.ndarray) -> np.ndarray:
    """float [N] sqrt(height * width) of boxes [N, 4]."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.sqrt(
        np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    )


@dataclasses.dataclass(frozen=True)
class AnchorSet:
    """Anchor shapes per pyramid level: level l has stride ``strides[l]`` and every size of
    ``sizes[l]`` (pixels, sqrt(h * w)) at every ratio (h / w).

    One level with several sizes is the single-level detector (e.g. stride 16, sizes
    16 x (8, 16, 32)); one size per level is an FPN (strides 4..64, sizes 32..512).
    """

    strides: tuple[int, ...]
    sizes: tuple[tuple[float, ...], ...]
    ratios: tuple[float, ...]

    def __post_init__(self):
        if len(self.strides) != len(self.sizes) or not all(self.sizes) or not self.ratios:
            raise ValueError(f"AnchorSet needs sizes for each of the strides {self.strides}")

    def base_anchors(self) -> tuple[np.ndarray, np.ndarray]:
        """(float64 [K, 4] cell-0 anchors (``anchors.anchor_base``'s float32), int [K] strides)."""
        bases, strides = [], []
        for stride, sizes in zip(self.strides, self.sizes):
            scales = tuple(float(size) / stride for size in sizes)
            base = anchors_lib.anchor_base(base_size=stride, ratios=self.ratios, scales=scales)
            bases.append(base.astype(np.float64))
            strides.append(np.full(len(base), stride))
        return np.concatenate(bases), np.concatenate(strides)

    def anchors(self, padded_shape: Sequence[int]) -> np.ndarray:
        """float32 [A, 4] every anchor of a padded (Hb, Wb) image, in the model's order."""
        levels = []
        for stride, sizes in zip(self.strides, self.sizes):
            scales = tuple(float(size) / stride for size in sizes)
            base = anchors_lib.anchor_base(base_size=stride, ratios=self.ratios, scales=scales)
            (shape,) = anchors_lib.pyramid_feature_shapes(padded_shape, strides=(stride,))
            # anchors_lib.grid_anchors in NumPy (no JAX dispatch per image shape): the same
            # float32 sums, position major, then the base anchors.
            shift_y, shift_x = np.meshgrid(
                np.arange(shape[0], dtype=np.float32) * stride,
                np.arange(shape[1], dtype=np.float32) * stride,
                indexing="ij",
            )
            shifts = np.stack([shift_y, shift_x, shift_y, shift_x], axis=-1)  # [H, W, 4]
            levels.append((shifts[:, :, None, :] + base[None, None]).reshape(-1, 4))
        return np.concatenate(levels)


def allowed_anchors(anchors: np.ndarray, image_size: Sequence[int], *, rule: str) -> np.ndarray:
    """bool [A]: which anchors [A, 4] of a padded image a gt box may use under ``rule``."""
    height, width = image_size
    if rule == "all":
        return np.ones(len(anchors), bool)
    if rule == "inside":
        return (
            (anchors[:, 0] >= 0)
            & (anchors[:, 1] >= 0)
            & (anchors[:, 2] <= height)
            & (anchors[:, 3] <= width)
        )
    if rule == "centered":
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        return np.all((centres >= 0) & (centres < [height, width]), axis=1)
    raise ValueError(f"anchor rule {rule!r} unknown; expected one of {RULES}")


def _index_range(base_lo, base_hi, stride, limit, padded, rule):
    """Allowed grid indices [lo, hi] along one axis (arrays broadcast [N, K])."""
    num_cells = np.ceil(padded / stride)
    if rule == "all":
        return np.zeros_like(num_cells), num_cells - 1
    if rule == "centered":  # centre (base_lo + base_hi) / 2 + i * stride < limit
        return np.zeros_like(num_cells), np.ceil((limit - (base_lo + base_hi) / 2) / stride) - 1
    if rule == "inside":  # base_lo + i * stride >= 0 and base_hi + i * stride <= limit
        lo = np.maximum(np.ceil(-base_lo / stride), 0)
        return lo, np.minimum(np.floor((limit - base_hi) / stride), num_cells - 1)
    raise ValueError(f"anchor rule {rule!r} unknown; expected one of {RULES}")


def best_anchor_ious(
    boxes: np.ndarray,
    image_sizes: np.ndarray,
    padded_shapes: np.ndarray,
    anchor_set: AnchorSet,
    *,
    rule: str = "all",
) -> np.ndarray:
    """float32 [N]: the highest IoU of each box with an anchor it may use (0 when none).

    Args:
      boxes: float [N, 4] (ymin, xmin, ymax, xmax) resized pixels.
      image_sizes: int [N, 2] resized (h, w) of each box's image.
      padded_shapes: int [N, 2] (Hb, Wb) bucket of each box's image.
      anchor_set: the anchor shapes and strides.
      rule: "all", "centered" or "inside" (module docstring).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 1, 4)  # [N, 1, 4]
    image_sizes = np.asarray(image_sizes, np.float64).reshape(-1, 1, 2)
    padded_shapes = np.asarray(padded_shapes, np.float64).reshape(-1, 1, 2)
    base, strides = anchor_set.base_anchors()  # [K, 4], [K]
    inter = np.ones((len(boxes), len(base)))  # [N, K]
    for axis in range(2):
        lo_b, hi_b = base[None, :, axis], base[None, :, axis + 2]  # [1, K]
        lo, hi = _index_range(
            lo_b, hi_b, strides[None], image_sizes[..., axis], padded_shapes[..., axis], rule
        )  # [N, K] each
        box_lo, box_hi = boxes[..., axis], boxes[..., axis + 2]  # [N, 1]
        nearest = np.round(((box_lo + box_hi) - (lo_b + hi_b)) / (2 * strides[None]))
        index = np.clip(nearest, lo, hi)
        overlap = np.minimum(box_hi, hi_b + index * strides) - np.maximum(
            box_lo, lo_b + index * strides
        )
        inter *= np.where(lo <= hi, np.maximum(overlap, 0.0), 0.0)
    box_area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])  # [N, 1]
    anchor_area = (base[:, 2] - base[:, 0]) * (base[:, 3] - base[:, 1])  # [K]
    union = box_area + anchor_area[None] - inter
    ious = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return ious.max(axis=1, initial=0.0).astype(np.float32)


def recall_table(
    best_ious: np.ndarray,
    sizes: np.ndarray,
    *,
    thresholds: Sequence[float] = THRESHOLDS,
    size_edges: Sequence[float] = SIZE_EDGES,
) -> list[tuple[str, int, tuple[float, ...]]]:
    """[(size range, boxes, recall at each threshold)] per non-empty range, then "all"."""
    rows = []
    ranges = list(zip(size_edges[:-1], size_edges[1:]))
    for low, high in [*ranges, (size_edges[0], size_edges[-1])]:
        inside = (sizes >= low) & (sizes < high)
        if not inside.any() and (low, high) != (size_edges[0], size_edges[-1]):
            continue
        name = "all" if (low, high) == (size_edges[0], size_edges[-1]) else f"{low:g}-{high:g}"
        recalls = tuple(
            float(np.mean(best_ious[inside] >= t)) if inside.any() else float("nan")
            for t in thresholds
        )
        rows.append((name, int(inside.sum()), recalls))
    return rows


def trained_boxes(split: ScaledSplit, *, exclude_difficult: bool) -> np.ndarray:
    """bool [N]: the boxes training uses (difficult ones are masked when exclude_difficult)."""
    return ~split.difficult if exclude_difficult else np.ones(len(split.classes), bool)


def trained_geometry(
    split: ScaledSplit, *, buckets: Sequence[Sequence[int]], exclude_difficult: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes float32 [N', 4], image_sizes int [N', 2], padded_shapes int [N', 2]) of the
    trained boxes: what ``best_anchor_ious`` reads. Each image is padded to the smallest of
    ``buckets`` (``pipeline.bucket_shapes``) that holds it, as in the pipeline."""
    keep = trained_boxes(split, exclude_difficult=exclude_difficult)
    padded = np.array([bucket_for(size, buckets) for size in split.image_sizes]).reshape(-1, 2)
    index = split.image_index[keep]
    return split.boxes[keep], split.image_sizes[index], padded[index]


def anchor_recall(
    split: ScaledSplit,
    anchor_set: AnchorSet,
    *,
    buckets: Sequence[Sequence[int]],
    rule: str = "all",
    exclude_difficult: bool = True,
    thresholds: Sequence[float] = THRESHOLDS,
    size_edges: Sequence[float] = SIZE_EDGES,
) -> list[tuple[str, int, tuple[float, ...]]]:
    """``recall_table`` of the trained boxes of ``split`` for ``anchor_set`` under ``rule``."""
    geometry = trained_geometry(split, buckets=buckets, exclude_difficult=exclude_difficult)
    best = best_anchor_ious(*geometry, anchor_set, rule=rule)
    return recall_table(best, box_sizes(geometry[0]), thresholds=thresholds, size_edges=size_edges)
