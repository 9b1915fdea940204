"""Anchor boxes: the base table of one feature-map cell, the grid over a feature
map, and the FPN pyramid.

Box format: float32 ``[..., 4]`` ``(ymin, xmin, ymax, xmax)`` absolute pixels of
the (resized) input image.

Shape shorthand: A anchors per cell (``len(ratios) * len(scales)``), H, W
feature-map height and width, L pyramid levels.

Aspect ratio convention (the seed's ``generate_anchor_base``): ``ratio = h / w``.
An anchor of base size ``b``, scale ``s`` and ratio ``r`` has
``h = b * s * sqrt(r)`` and ``w = b * s / sqrt(r)`` (area ``(b * s) ** 2``) and is
centred on ``(b / 2, b / 2)``, the centre of the cell's first pixel block; the
grid then shifts it by multiples of the stride.

Sizes are static Python ints, so these functions can be called inside
``jax.jit``: ``anchor_base`` is a NumPy constant and ``grid_anchors`` a few
fused iota/broadcast ops, cheaper than baking a large constant into the program.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def anchor_base(
    base_size: float = 16,
    ratios: Sequence[float] = (0.5, 1.0, 2.0),
    scales: Sequence[float] = (8, 16, 32),
) -> np.ndarray:
    """The A anchors of one feature-map cell (the seed's ``generate_anchor_base``).

    Args:
      base_size: side of the cell in input pixels (the feature stride).
      ratios: aspect ratios ``h / w``.
      scales: anchor side ``sqrt(h * w)`` in units of ``base_size``.

    Returns:
      float32 NumPy ``[A, 4]`` (ymin, xmin, ymax, xmax), ratio major, scale
      minor, centred on ``(base_size / 2, base_size / 2)``. The defaults give
      the seed's 9 anchors of sides 128, 256, 512.
    """
    center = base_size / 2.0
    rows = []
    for ratio in ratios:
        for scale in scales:
            h = base_size * scale * math.sqrt(ratio)
            w = base_size * scale * math.sqrt(1.0 / ratio)
            rows.append((center - h / 2.0, center - w / 2.0, center + h / 2.0, center + w / 2.0))
    return np.asarray(rows, np.float32).reshape(-1, 4)


def grid_anchors(base, stride: int, feat_height: int, feat_width: int) -> jnp.ndarray:
    """Shifts the base anchors to every feature-map position (the seed's
    ``_enumerate_shifted_anchor``).

    Args:
      base: float ``[A, 4]`` base anchors, e.g. ``anchor_base()``.
      stride: feature stride in input pixels; position (i, j) shifts the base
        by ``(i * stride, j * stride)``.
      feat_height: H, static Python int.
      feat_width: W, static Python int.

    Returns:
      float32 ``[H * W * A, 4]`` (ymin, xmin, ymax, xmax): row ``(i * W + j) * A
      + a`` is base anchor ``a`` at position (i, j) (position major, anchor
      minor, rows of the feature map first), matching an ``[H, W, A]`` head
      output reshaped to ``[H * W * A]``.
    """
    base = jnp.asarray(base, jnp.float32)
    shift_y = jnp.arange(feat_height, dtype=jnp.float32) * stride  # [H]
    shift_x = jnp.arange(feat_width, dtype=jnp.float32) * stride  # [W]
    shift_y, shift_x = jnp.meshgrid(shift_y, shift_x, indexing="ij")  # [H, W]
    shifts = jnp.stack([shift_y, shift_x, shift_y, shift_x], axis=-1)  # [H, W, 4]
    anchors = shifts[:, :, None, :] + base[None, None, :, :]  # [H, W, A, 4]
    return anchors.reshape(-1, 4)


def pyramid_feature_shapes(
    image_shape: Sequence[int], *, strides: Sequence[int] = (4, 8, 16, 32, 64)
) -> tuple[tuple[int, int], ...]:
    """Feature-map sizes of each pyramid level for an input of ``image_shape``.

    Args:
      image_shape: ``(height, width)`` of the (padded) input in pixels.
      strides: stride of each level.

    Returns:
      ``((H_l, W_l), ...)`` with ``H_l = ceil(height / stride_l)``: the size a
      chain of SAME-padded stride-2 layers produces (exact for the multiple-of-32
      buckets of the data pipeline, and for P6 as a stride-2 subsample of P5).
    """
    height, width = image_shape
    return tuple((-(-int(height) // s), -(-int(width) // s)) for s in strides)


def pyramid_level_counts(
    feature_shapes: Sequence[Sequence[int]], *, ratios: Sequence[float] = (0.5, 1.0, 2.0)
) -> tuple[int, ...]:
    """Number of anchors of each pyramid level, ``H_l * W_l * len(ratios)``.

    Splits the level-major outputs of ``pyramid_anchors`` (and of a head run on
    every level and concatenated the same way): ``jnp.split(x,
    np.cumsum(counts)[:-1])``.
    """
    return tuple(int(h) * int(w) * len(ratios) for h, w in feature_shapes)


def pyramid_anchors(
    feature_shapes: Sequence[Sequence[int]],
    *,
    strides: Sequence[int] = (4, 8, 16, 32, 64),
    sizes: Sequence[float] = (32, 64, 128, 256, 512),
    ratios: Sequence[float] = (0.5, 1.0, 2.0),
) -> jnp.ndarray:
    """Anchors of an FPN (P2..P6 by default), one size and several ratios per level.

    Level l uses ``anchor_base(base_size=stride_l, ratios, scales=(size_l /
    stride_l,))``: anchors of side ``size_l`` centred on ``(stride_l / 2,
    stride_l / 2)`` of each cell, the same convention as the single-level
    anchors. (The TF2 seed centres them on the cell corner and its ratio means
    w / h; the set of shapes is the same.)

    Args:
      feature_shapes: ``[(H_l, W_l), ...]`` static feature-map sizes, one per
        level, e.g. ``pyramid_feature_shapes(image_shape)``.
      strides: stride of each level in input pixels.
      sizes: anchor side ``sqrt(h * w)`` of each level in input pixels.
      ratios: aspect ratios ``h / w``, shared by every level.

    Returns:
      float32 ``[sum_l H_l * W_l * len(ratios), 4]`` (ymin, xmin, ymax, xmax),
      level major, then ``grid_anchors`` order within a level;
      ``pyramid_level_counts`` gives the size of each level's block.
    """
    if not len(feature_shapes) == len(strides) == len(sizes):
        raise ValueError(
            "pyramid_anchors needs one feature shape, stride and size per level, got "
            f"{len(feature_shapes)}, {len(strides)}, {len(sizes)}"
        )
    levels = []
    for (height, width), stride, size in zip(feature_shapes, strides, sizes):
        base = anchor_base(base_size=stride, ratios=ratios, scales=(size / stride,))
        levels.append(grid_anchors(base, stride, int(height), int(width)))
    return jnp.concatenate(levels, axis=0)


# Which anchors the RPN trains (``anchor_targets(border_rule=...)``, ``model.rpn.border_rule``).
BORDER_RULES = ("ignore_crossing", "train_crossing")


def fully_inside(anchors: jnp.ndarray, image_size) -> jnp.ndarray:
    """bool ``[A]``: the anchor lies inside ``[0, height] x [0, width]`` (the seed's
    ``_get_inside_index``). ``image_size``: (height, width), Python numbers or a traced [2]."""
    anchors = jnp.asarray(anchors, jnp.float32)
    size = jnp.asarray(image_size, jnp.float32)
    return (
        (anchors[:, 0] >= 0)
        & (anchors[:, 1] >= 0)
        & (anchors[:, 2] <= size[0])
        & (anchors[:, 3] <= size[1])
    )


def centred_in_image(anchors: jnp.ndarray, image_size) -> jnp.ndarray:
    """bool ``[A]``: the anchor's centre lies in the image, ``[0, height) x [0, width)``, not
    in the batch's zero padding (an anchor centred on the image's last edge is out: its
    receptive field is half padding)."""
    anchors = jnp.asarray(anchors, jnp.float32)
    size = jnp.asarray(image_size, jnp.float32)
    cy = (anchors[:, 0] + anchors[:, 2]) / 2.0
    cx = (anchors[:, 1] + anchors[:, 3]) / 2.0
    return (cy >= 0) & (cx >= 0) & (cy < size[0]) & (cx < size[1])


def trainable_anchors(anchors: jnp.ndarray, image_size, *, border_rule: str) -> jnp.ndarray:
    """bool ``[A]``: anchors that take part in RPN training under ``border_rule``.

    "ignore_crossing" (the seed, py-faster-rcnn): only anchors fully inside the image; every
    anchor that crosses the border is ignored, which for small images leaves few large anchors.
    "train_crossing" (torchvision, detectron2's default BOUNDARY_THRESH=-1): anchors crossing
    the border are trained too (their IoU with the gt boxes decides); only anchors centred in
    the padding are left out, since they look at no image (torchvision and detectron2 keep
    even those, as negatives).
    """
    if border_rule == "ignore_crossing":
        return fully_inside(anchors, image_size)
    if border_rule == "train_crossing":
        return centred_in_image(anchors, image_size)
    raise ValueError(f"model.rpn.border_rule={border_rule!r}; choose one of {BORDER_RULES}")
