"""Anchor sizes and aspect ratios chosen from the training boxes, deterministically.

Shape shorthand: N gt boxes.

Both are 1-D k-means (Lloyd's algorithm) in log space, started from fixed quantiles so that
the same boxes always give the same anchors: in log space the distance between a box and an
anchor of the same centre and shape depends only on their size ratio (two squares of sides a
and b have IoU (min / max)^2), so clusters are ranges of equal relative width, not of equal
pixels. Sizes are box sizes sqrt(h * w) in input pixels (after the configured resize); ratios
are h / w as in ``frcnn_jax.anchors``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from frcnn_jax.data import stats

_ITERATIONS = 100


def log_kmeans(values: np.ndarray, *, num_clusters: int, init_quantiles: Sequence[float]):
    """Sorted cluster centres (float64 [num_clusters]) of positive ``values`` in log space.

    Lloyd's algorithm from the ``init_quantiles`` of log(values); a cluster left empty keeps
    its centre. Deterministic: no random start.
    """
    logs = np.log(np.asarray(values, np.float64).reshape(-1))
    if logs.size == 0 or not np.all(np.isfinite(logs)):
        raise ValueError("log_kmeans needs at least one positive, finite value")
    if len(init_quantiles) != num_clusters or num_clusters < 1:
        raise ValueError(f"need {num_clusters} >= 1 initial quantiles, got {init_quantiles}")
    centres = np.quantile(logs, init_quantiles)
    for _ in range(_ITERATIONS):
        nearest = np.argmin(np.abs(logs[:, None] - centres[None, :]), axis=1)
        updated = np.array(
            [
                logs[nearest == k].mean() if np.any(nearest == k) else centres[k]
                for k in range(num_clusters)
            ]
        )
        if np.allclose(updated, centres, rtol=0, atol=1e-9):
            break
        centres = updated
    return np.sort(np.exp(centres))


def auto_anchor_sizes(
    box_sizes: np.ndarray,
    *,
    num_sizes: int,
    low_quantile: float = 0.02,
    high_quantile: float = 0.98,
) -> tuple[float, ...]:
    """``num_sizes`` anchor sizes (pixels, ascending, rounded to 0.1) for boxes of these sizes.

    k-means of log(size) started at points log-uniformly spread between the ``low_quantile``
    and ``high_quantile`` box sizes, so that the tails keep a size of their own. For an FPN
    pass ``num_sizes`` = number of levels: the i-th size goes to the i-th (finer to coarser)
    level; for one level, all go to it.

    Args:
      box_sizes: float [N] sqrt(h * w) of the training boxes at the input scale (> 0).
      num_sizes: how many sizes to return.
    """
    sizes = np.asarray(box_sizes, np.float64).reshape(-1)
    sizes = sizes[sizes > 0]
    if sizes.size == 0:
        raise ValueError("auto_anchor_sizes: no training box with a positive size")
    low, high = np.quantile(sizes, [low_quantile, high_quantile])
    # Quantiles at the log-uniform points between low and high (the init, in rank terms).
    targets = (
        np.exp(np.linspace(np.log(low), np.log(high), num_sizes + 2)[1:-1])
        if num_sizes > 1
        else [np.median(sizes)]
    )
    ranks = [float(np.mean(sizes <= t)) for t in targets]
    centres = log_kmeans(sizes, num_clusters=num_sizes, init_quantiles=ranks)
    return tuple(round(float(c), 1) for c in centres)


def auto_anchor_ratios(
    heights: np.ndarray, widths: np.ndarray, *, num_ratios: int
) -> tuple[float, ...]:
    """``num_ratios`` aspect ratios h / w (ascending, rounded to 0.01) of the training boxes.

    k-means of log(h / w) started at the quantiles (i + 0.5) / num_ratios.
    """
    heights, widths = np.asarray(heights, np.float64), np.asarray(widths, np.float64)
    ok = (heights > 0) & (widths > 0)
    if not ok.any():
        raise ValueError("auto_anchor_ratios: no training box with a positive area")
    quantiles = [(k + 0.5) / num_ratios for k in range(num_ratios)]
    centres = log_kmeans(
        heights[ok] / widths[ok], num_clusters=num_ratios, init_quantiles=quantiles
    )
    return tuple(round(float(c), 2) for c in centres)


# Candidate sizes of fit_anchor_sizes: a geometric grid with 8 steps per octave.
_CANDIDATES_PER_OCTAVE = 8
_MAX_FIT_BOXES = 5000  # an even subsample above this keeps fitting to a few seconds
_MAX_ROUNDS = 4
THRESHOLDS = (0.5, 0.7)  # the RoI head's positive IoU and the RPN's


def _with_sizes(anchor_set: stats.AnchorSet, flat_sizes) -> stats.AnchorSet:
    """anchor_set with its sizes replaced by ``flat_sizes`` (ascending, level by level)."""
    flat, sizes, start = sorted(float(s) for s in flat_sizes), [], 0
    for level in anchor_set.sizes:
        sizes.append(tuple(flat[start : start + len(level)]))
        start += len(level)
    return stats.AnchorSet(anchor_set.strides, tuple(sizes), anchor_set.ratios)


def _subsample(boxes, image_sizes, padded_shapes):
    """The geometry as float64 / int arrays, evenly subsampled to at most _MAX_FIT_BOXES."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    keep = np.arange(len(boxes))
    if len(boxes) > _MAX_FIT_BOXES:
        keep = np.linspace(0, len(boxes) - 1, _MAX_FIT_BOXES).astype(int)
    return boxes[keep], np.asarray(image_sizes)[keep], np.asarray(padded_shapes)[keep]


def objective(anchor_set, geometry, *, rule, thresholds=THRESHOLDS) -> tuple[float, float]:
    """(sum of the recalls at ``thresholds``, mean best IoU): what the fit maximises.

    Recall at 0.5 alone buys coverage of the size tails with anchors that fit nothing at 0.7.
    """
    ious = stats.best_anchor_ious(*geometry, anchor_set, rule=rule)
    return sum(float(np.mean(ious >= t)) for t in thresholds), float(np.mean(ious))


def fit_anchor_sizes(
    anchor_set: stats.AnchorSet,
    boxes: np.ndarray,
    image_sizes: np.ndarray,
    padded_shapes: np.ndarray,
    *,
    rule: str,
    thresholds: Sequence[float] = THRESHOLDS,
) -> stats.AnchorSet:
    """``anchor_set`` with the sizes that maximise ``objective`` on these boxes.

    Keeps the strides, the ratios and the number of sizes of each level; the sizes, ascending,
    fill the levels from the finest stride. Starts from ``auto_anchor_sizes`` and then moves
    one size at a time to the candidate (a geometric grid over the box sizes, 8 per octave)
    that most raises the objective, until a round changes nothing. Recall is exact
    (``stats.best_anchor_ious``: the grid, the strides and ``rule`` count, not only the
    sizes); the result is deterministic.

    Args:
      anchor_set: strides, ratios and the number of sizes per level.
      boxes: float [N, 4] trained gt boxes (ymin, xmin, ymax, xmax) at the input scale.
      image_sizes, padded_shapes: int [N, 2] resized (h, w) and bucket (Hb, Wb) of each box's
        image; ``stats.trained_geometry`` gives all three for a split.
      rule: which anchors a box may use ("all", "centered", "inside"; ``stats``).
    """
    geometry = _subsample(boxes, image_sizes, padded_shapes)
    sizes = stats.box_sizes(geometry[0])
    sizes = sizes[sizes > 0]
    if sizes.size == 0:
        raise ValueError("fit_anchor_sizes: no training box with a positive size")
    num_sizes = sum(len(level) for level in anchor_set.sizes)
    current = list(auto_anchor_sizes(sizes, num_sizes=num_sizes))
    low, high = np.log2(sizes.min() / 2), np.log2(sizes.max() * 2)
    steps = int(np.ceil((high - low) * _CANDIDATES_PER_OCTAVE))
    candidates = np.round(2.0 ** np.linspace(low, high, steps + 1), 1)

    def score(flat):
        return objective(_with_sizes(anchor_set, flat), geometry, rule=rule, thresholds=thresholds)

    best = score(current)
    for _ in range(_MAX_ROUNDS):
        changed = False
        for i in range(num_sizes):
            for candidate in candidates:
                trial = [*current[:i], float(candidate), *current[i + 1 :]]
                trial_score = score(trial)
                if trial_score > best:
                    best, current, changed = trial_score, trial, True
        if not changed:
            break
    return _with_sizes(anchor_set, current)


def auto_anchor_set(
    anchor_set: stats.AnchorSet,
    boxes: np.ndarray,
    image_sizes: np.ndarray,
    padded_shapes: np.ndarray,
    *,
    rule: str,
    fit_ratios: bool = True,
    thresholds: Sequence[float] = THRESHOLDS,
) -> stats.AnchorSet:
    """Anchors for these boxes: ``fit_anchor_sizes`` with ``anchor_set``'s ratios and, if
    ``fit_ratios``, also with as many ratios from ``auto_anchor_ratios``; of the two, the one
    with the higher ``objective`` (the given ratios on a tie).

    Args as ``fit_anchor_sizes``.
    """
    geometry = _subsample(boxes, image_sizes, padded_shapes)
    candidates = [fit_anchor_sizes(anchor_set, *geometry, rule=rule, thresholds=thresholds)]
    if fit_ratios:
        heights = geometry[0][:, 2] - geometry[0][:, 0]
        widths = geometry[0][:, 3] - geometry[0][:, 1]
        ratios = auto_anchor_ratios(heights, widths, num_ratios=len(anchor_set.ratios))
        if ratios != tuple(anchor_set.ratios):
            with_ratios = stats.AnchorSet(anchor_set.strides, anchor_set.sizes, ratios)
            candidates.append(
                fit_anchor_sizes(with_ratios, *geometry, rule=rule, thresholds=thresholds)
            )
    scores = [objective(c, geometry, rule=rule, thresholds=thresholds) for c in candidates]
    return candidates[max(range(len(candidates)), key=scores.__getitem__)]
