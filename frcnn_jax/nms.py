"""Greedy non-maximum suppression with static shapes, tiled so that it scales.

Box format: float ``[N, 4]`` ``(ymin, xmin, ymax, xmax)`` absolute pixels.

Shape shorthand: N candidate boxes, K = ``max_output`` kept boxes, T tile size.

Semantics (both functions): the exact result of the classic greedy loop --
visit candidates by descending score, keep one unless a box already kept has
IoU strictly greater than ``iou_threshold`` with it -- stopped after K keeps.
Ties in score are broken stably: the lower input index is visited first.
Candidates that are masked out (``valid`` False) or have a non-finite score or
coordinate are never kept and never suppress anything. Zero-area and inverted
boxes are ordinary candidates: their IoU with every box is 0, so they are kept
unless K is reached (filter them beforehand, as the proposal layer's min-size
rule does).

Algorithm (after TF Model Garden's ``sorted_non_max_suppression_padded`` and
axlearn's ``non_max_suppression_padded``): sort once, then a ``lax.while_loop``
over tiles of T sorted candidates. Each tile is first suppressed by the boxes
kept so far (``[T, T]`` IoU blocks against the filled part of the output
buffer), then resolved internally by a fixed-point iteration on its own
``[T, T]`` IoU block, and its survivors are appended to the output buffer. The
loop stops as soon as K boxes are kept or only invalid candidates remain. Work
is about (candidates visited) x (boxes kept + T) IoUs; memory is O(T * T + N +
K): no ``[N, N]`` (or ``[N, K]``) matrix is ever built.

Two forms, chosen per platform at lowering (``lax.platform_dependent``), give
the same result: on CPU, T = DEFAULT_TILE_SIZE and the kept boxes are checked
in a loop over their filled ``[T, T]`` blocks; on accelerators, where each
sequential step costs more than a large block, T = ACCELERATOR_TILE_SIZE and
one ``[T, K]`` block checks the whole buffer.

Both functions are ``jax.jit``-able (``max_output`` and ``tile_size`` static,
``iou_threshold`` may be a traced scalar) and ``jax.vmap``-able over images.
They return indices, so they are not differentiated.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from frcnn_jax.boxes import area

# Tile of sorted candidates resolved per while-loop step on CPU: the tile of the
# TF Model Garden and axlearn implementations (on CPU, where sequential steps are
# cheap, tile_size=128 was ~1.5x faster for 12000 -> 2000).
DEFAULT_TILE_SIZE = 512
# On accelerators every while-loop step costs kernel launches and a device-to-host
# copy of the loop condition, while a [T, T] IoU block is cheap: bigger tiles, and
# each tile checked against the whole output buffer at once instead of a loop over
# its blocks. For 12000 proposals crowded around objects -> 2000 at IoU 0.7, the
# sequential steps (tiles + kept-block checks + fixed-point iterations) go from
# 24 + 57 + 40 to 6 + 0 + 15 (benchmarks/nms_steps.py).
ACCELERATOR_TILE_SIZE = 2048


def _resolve_tile(overlaps: jnp.ndarray, alive: jnp.ndarray) -> jnp.ndarray:
    """Greedy NMS inside one tile by fixed-point iteration.

    Args:
      overlaps: bool ``[T, T]``; ``overlaps[k, m]`` is True when k < m (k comes
        first in score order) and IoU(k, m) > threshold, i.e. k would suppress m.
      alive: bool ``[T]`` candidates not yet suppressed.

    Returns:
      bool ``[T]``: exactly the candidates the sequential greedy loop keeps.

    Why it is exact: ``alive`` always contains the greedy result G. A box with
    no alive predecessor overlapping it has no kept predecessor overlapping it,
    so it is in G; removing what such boxes overlap removes only boxes outside
    G. If ``alive`` still had a box outside G, the smallest such box is
    suppressed in G by a box whose alive predecessors are all in G and all
    disjoint from it, so the next step removes it: the iteration stops exactly
    at G, after at most T steps (typically a handful).
    """
    overlaps = overlaps.astype(jnp.float32)

    def body(state):
        alive, _ = state
        # [T] number of alive predecessors overlapping each box; float matvec
        # because it maps onto matrix units on accelerators.
        threats = alive.astype(jnp.float32) @ overlaps
        certain = alive & (threats == 0)
        suppressed = (certain.astype(jnp.float32) @ overlaps) > 0
        new_alive = alive & ~suppressed
        return new_alive, jnp.any(new_alive != alive)

    alive, _ = jax.lax.while_loop(lambda s: s[1], body, (alive, jnp.array(True)))
    return alive


def _overlaps(boxes_a, classes_a, boxes_b, classes_b, iou_threshold) -> jnp.ndarray:
    """bool ``[Ta, Tb]``: same class and IoU > threshold, for finite boxes.

    Equal to ``(pairwise_iou(a, b) > iou_threshold) & same_class`` for finite
    coordinates (the only ones NMS compares) without ``pairwise_iou``'s
    clipping and non-finite guards, which more than double the cost of an IoU
    block on CPU.
    """
    top_left = jnp.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])  # [Ta, Tb, 2]
    bottom_right = jnp.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])  # [Ta, Tb, 2]
    inter = jnp.prod(jnp.maximum(bottom_right - top_left, 0.0), axis=-1)  # [Ta, Tb]
    union = area(boxes_a)[:, None] + area(boxes_b)[None, :] - inter  # [Ta, Tb]
    iou = inter / jnp.where(union > 0, union, 1.0)  # empty union: inter = 0, IoU 0
    return (iou > iou_threshold) & (classes_a[:, None] == classes_b[None, :])


def _nms(boxes, scores, classes, valid, *, iou_threshold, max_output, tile_size, form=None):
    """Shared body of ``nms`` and ``batched_nms``; ``classes`` may be None.

    ``form``: "cpu" or "accelerator" forces that form (tests run both on CPU); None
    picks it per platform at lowering (``lax.platform_dependent``).
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    num_boxes = boxes.shape[0]
    if boxes.shape != (num_boxes, 4) or scores.shape != (num_boxes,):
        raise ValueError(
            f"nms expects boxes [N, 4] and scores [N], got {boxes.shape}, {scores.shape}"
        )
    if max_output < 1:
        raise ValueError(f"max_output must be >= 1, got {max_output}")
    if tile_size is not None and tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")
    if num_boxes == 0:
        return jnp.zeros((max_output,), jnp.int32), jnp.zeros((max_output,), bool)

    ok = jnp.isfinite(scores) & jnp.all(jnp.isfinite(boxes), axis=-1)
    if valid is not None:
        ok &= jnp.asarray(valid, bool)
    if classes is None:
        classes = jnp.zeros((num_boxes,), jnp.int32)
    classes = jnp.asarray(classes, jnp.int32)

    # Stable descending sort; invalid candidates go last (-inf key).
    order = jnp.argsort(-jnp.where(ok, scores, -jnp.inf), stable=True).astype(jnp.int32)
    sorted_ok = ok[order]
    # Zeroing invalid rows keeps NaN/inf out of the IoU blocks.
    sorted_boxes = jnp.where(sorted_ok[:, None], boxes[order], 0.0)
    operands = (order, sorted_ok, sorted_boxes, classes[order], jnp.asarray(iou_threshold))
    # The output never needs more rows than there are candidates.
    capacity = min(max_output, num_boxes)
    forms = {
        "cpu": functools.partial(
            _greedy_tiles, capacity=capacity, tile=tile_size or DEFAULT_TILE_SIZE, one_shot=False
        ),
        "accelerator": functools.partial(
            _greedy_tiles,
            capacity=capacity,
            tile=tile_size or ACCELERATOR_TILE_SIZE,
            one_shot=True,
        ),
    }
    if form is None:
        kept_idx, count = jax.lax.platform_dependent(
            *operands, cpu=forms["cpu"], default=forms["accelerator"]
        )
    else:
        kept_idx, count = forms[form](*operands)
    kept_mask = jnp.arange(max_output) < count
    kept_idx = jnp.pad(kept_idx, (0, max_output - capacity))
    return kept_idx, kept_mask


def _greedy_tiles(order, sorted_ok, sorted_boxes, sorted_classes, iou_threshold, **options):
    """The greedy loop over tiles of sorted candidates (module docstring).

    Args: the candidates in score order (``order`` int32 ``[N]`` their input
    indices, ``sorted_ok`` bool ``[N]``, ``sorted_boxes`` float32 ``[N, 4]``
    zeroed where not ok, ``sorted_classes`` int32 ``[N]``) and the threshold.
    Keyword options: ``capacity`` (static rows kept, <= N), ``tile`` (T) and
    ``one_shot``: False checks each tile against the kept boxes one ``[T, T]``
    block at a time, only over the filled blocks (work grows with the number
    kept: CPU); True checks it against the whole ``[capacity]`` buffer in one
    ``[T, capacity]`` block, without an inner loop (accelerators).

    Returns:
      ``(kept_idx, count)``: int32 ``[capacity]`` input indices of the kept
      boxes, then padding; int32 number kept.
    """
    capacity, tile, one_shot = options["capacity"], options["tile"], options["one_shot"]
    num_boxes = order.shape[0]
    num_valid = jnp.sum(sorted_ok)
    tile = min(tile, num_boxes)
    num_tiles = -(-num_boxes // tile)
    pad = num_tiles * tile - num_boxes
    # Padding rows are invalid zero boxes; they sit after every real candidate.
    order = jnp.pad(order, (0, pad))
    sorted_ok = jnp.pad(sorted_ok, (0, pad))
    sorted_boxes = jnp.pad(sorted_boxes, ((0, pad), (0, 0)))
    sorted_classes = jnp.pad(sorted_classes, (0, pad))

    # Kept boxes go to a buffer of which only the first ``capacity`` rows are used
    # (looped form: whole tiles, so that each block is one dynamic slice).
    buffer_size = capacity if one_shot else -(-capacity // tile) * tile
    later = jnp.arange(tile)[:, None] < jnp.arange(tile)[None, :]  # [T, T] k before m

    def suppress_by_kept(alive, tile_boxes, tile_classes, count, kept_boxes, kept_classes):
        if one_shot:
            hits = _overlaps(tile_boxes, tile_classes, kept_boxes, kept_classes, iou_threshold)
            filled = jnp.arange(buffer_size) < count  # [capacity]
            return alive & ~jnp.any(hits & filled[None, :], axis=1)

        # One [T, T] block of the buffer at a time and only over its filled part.
        def cross_body(cross_state):
            block, alive = cross_state
            block_start = block * tile
            hits = _overlaps(
                tile_boxes,
                tile_classes,
                jax.lax.dynamic_slice_in_dim(kept_boxes, block_start, tile),
                jax.lax.dynamic_slice_in_dim(kept_classes, block_start, tile),
                iou_threshold,
            )  # [T, T]
            filled = block_start + jnp.arange(tile) < count  # [T]
            return block + 1, alive & ~jnp.any(hits & filled[None, :], axis=1)

        _, alive = jax.lax.while_loop(
            lambda s: s[0] * tile < count, cross_body, (jnp.array(0, jnp.int32), alive)
        )
        return alive

    def cond(state):
        t, count = state[0], state[1]
        return (t < num_tiles) & (count < capacity) & (t * tile < num_valid)

    def body(state):
        t, count, kept_idx, kept_boxes, kept_classes = state
        start = t * tile
        tile_boxes = jax.lax.dynamic_slice_in_dim(sorted_boxes, start, tile)  # [T, 4]
        tile_classes = jax.lax.dynamic_slice_in_dim(sorted_classes, start, tile)  # [T]
        alive = jax.lax.dynamic_slice_in_dim(sorted_ok, start, tile)  # [T]
        tile_idx = jax.lax.dynamic_slice_in_dim(order, start, tile)  # [T]
        alive = suppress_by_kept(alive, tile_boxes, tile_classes, count, kept_boxes, kept_classes)

        # Suppression inside the tile: [T, T] block, only earlier -> later.
        overlaps = _overlaps(tile_boxes, tile_classes, tile_boxes, tile_classes, iou_threshold)
        alive = _resolve_tile(overlaps & later, alive)

        # Append survivors in score order; those past the capacity are dropped.
        slots = count + jnp.cumsum(alive) - 1
        slots = jnp.where(alive & (slots < capacity), slots, buffer_size)
        kept_idx = kept_idx.at[slots].set(tile_idx, mode="drop")
        kept_boxes = kept_boxes.at[slots].set(tile_boxes, mode="drop")
        kept_classes = kept_classes.at[slots].set(tile_classes, mode="drop")
        count = jnp.minimum(count + jnp.sum(alive), capacity)
        return t + 1, count, kept_idx, kept_boxes, kept_classes

    init = (
        jnp.array(0, jnp.int32),
        jnp.array(0, jnp.int32),
        jnp.zeros((buffer_size,), jnp.int32),
        jnp.zeros((buffer_size, 4), jnp.float32),
        jnp.zeros((buffer_size,), jnp.int32),
    )
    _, count, kept_idx, _, _ = jax.lax.while_loop(cond, body, init)
    return kept_idx[:capacity], count


def nms(
    boxes: jnp.ndarray,
    scores: jnp.ndarray,
    *,
    iou_threshold: float,
    max_output: int,
    valid: jnp.ndarray | None = None,
    tile_size: int | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Greedy NMS on one image (see the module docstring for exact semantics).

    Args:
      boxes: float ``[N, 4]`` (ymin, xmin, ymax, xmax), any order.
      scores: float ``[N]``; higher is kept first (any monotone score works).
      iou_threshold: a candidate is suppressed when its IoU with a kept box is
        strictly greater than this (IoU exactly equal is not suppressed).
      max_output: K, static number of output slots.
      valid: optional bool ``[N]``; False candidates are ignored entirely.
      tile_size: T, static candidates per while-loop step (speed knob only:
        the result does not depend on it); None: DEFAULT_TILE_SIZE on CPU,
        ACCELERATOR_TILE_SIZE elsewhere.

    Returns:
      ``(indices, valid)``: int32 ``[K]`` indices into ``boxes`` of the kept
      boxes in descending score order, then padding (index 0); bool ``[K]``
      True for the kept entries, a prefix.
    """
    return _nms(
        boxes,
        scores,
        None,
        valid,
        iou_threshold=iou_threshold,
        max_output=max_output,
        tile_size=tile_size,
    )


def batched_nms(
    boxes: jnp.ndarray,
    scores: jnp.ndarray,
    classes: jnp.ndarray,
    *,
    iou_threshold: float,
    max_output: int,
    valid: jnp.ndarray | None = None,
    tile_size: int | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-class greedy NMS on one image in a single call.

    Boxes only suppress boxes of the same class. The result equals running
    ``nms`` for each class separately, merging the kept boxes by descending
    score (stable ties: lower index first) and keeping the first K. Class
    equality is tested directly rather than by offsetting coordinates per
    class (torchvision's trick), which in float32 would perturb IoUs of large
    class ids and make the result inexact.

    Args:
      boxes: float ``[N, 4]`` (ymin, xmin, ymax, xmax).
      scores: float ``[N]``.
      classes: int ``[N]`` class id of each box (any integers).
      iou_threshold: suppress when IoU > this, within a class.
      max_output: K, static number of output slots (over all classes).
      valid: optional bool ``[N]``; False candidates are ignored entirely.
      tile_size: T, static speed knob as in ``nms``.

    Returns:
      ``(indices, valid)``: int32 ``[K]`` indices into ``boxes`` in descending
      score order, padded with 0; bool ``[K]`` True for kept entries (a prefix).
    """
    classes = jnp.asarray(classes)
    if classes.shape != (jnp.shape(boxes)[0],):
        raise ValueError(f"batched_nms expects classes [N], got {classes.shape}")
    return _nms(
        boxes,
        scores,
        classes,
        valid,
        iou_threshold=iou_threshold,
        max_output=max_output,
        tile_size=tile_size,
    )
