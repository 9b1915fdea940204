"""Tests for frcnn_jax.proposals against a NumPy version of the seed's ProposalCreator."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frcnn_jax.anchors import anchor_base, grid_anchors
from frcnn_jax.boxes import SCALE_CLAMP
from frcnn_jax.proposals import propose

IMAGE_SIZE = (64, 72)
# 8 x 9 positions x 9 anchors of sides 8..32 px: 648 anchors, many sticking out.
ANCHORS = np.asarray(grid_anchors(anchor_base(8, scales=(1, 2, 4)), 8, 8, 9))

propose_jit = jax.jit(propose, static_argnames=("pre_nms_top_n", "post_nms_top_n", "nms_iou"))


# ---------------------------------------------------------------- reference
def np_iou_row(box, boxes):
    tl = np.maximum(box[:2], boxes[:, :2])
    br = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.maximum(br - tl, 0), axis=1)
    area = lambda b: np.prod(np.maximum(b[..., 2:] - b[..., :2], 0), axis=-1)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def loop_nms(boxes, thresh):
    """Greedy NMS over boxes already sorted by score: suppress IoU > thresh."""
    keep, suppressed = [], np.zeros(len(boxes), bool)
    for i in range(len(boxes)):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= np_iou_row(boxes[i], boxes) > thresh
    return np.asarray(keep, np.int64)


def seed_propose(
    loc,
    score,
    anchor,
    img_size,
    n_pre_nms,
    n_post_nms,
    nms_thresh=0.7,
    min_size=16,
    with_scores=False,
):
    """The seed's ProposalCreator.__call__ in NumPy (float64).

    Differences, all documented in propose(): dh, dw are clamped at SCALE_CLAMP
    as boxes.decode does; non-finite scores and deltas are dropped; score ties
    go to the lower anchor index (lax.top_k) instead of argsort()[::-1]'s higher;
    anchors centred outside ``img_size`` (in a batch's padding, which the seed at
    batch size 1 never has) make no proposal.
    """
    anchor, loc, score = (np.asarray(a, np.float64) for a in (anchor, loc, score))
    h, w = anchor[:, 2] - anchor[:, 0], anchor[:, 3] - anchor[:, 1]
    cy, cx = anchor[:, 0] + 0.5 * h, anchor[:, 1] + 0.5 * w
    with np.errstate(invalid="ignore", over="ignore"):
        ctr_y, ctr_x = loc[:, 0] * h + cy, loc[:, 1] * w + cx
        rh = np.exp(np.minimum(loc[:, 2], SCALE_CLAMP)) * h
        rw = np.exp(np.minimum(loc[:, 3], SCALE_CLAMP)) * w
        roi = np.stack([ctr_y - 0.5 * rh, ctr_x - 0.5 * rw, ctr_y + 0.5 * rh, ctr_x + 0.5 * rw], 1)
        roi[:, 0::2] = np.clip(roi[:, 0::2], 0, img_size[0])
        roi[:, 1::2] = np.clip(roi[:, 1::2], 0, img_size[1])
        hs, ws = roi[:, 2] - roi[:, 0], roi[:, 3] - roi[:, 1]
        finite = np.isfinite(score) & np.all(np.isfinite(loc), 1) & np.all(np.isfinite(roi), 1)
        in_image = (cy < img_size[0]) & (cx < img_size[1])
        keep = np.where((hs >= min_size) & (ws >= min_size) & finite & in_image)[0]
    roi, score = roi[keep], score[keep]
    order = np.argsort(-score, kind="stable")[:n_pre_nms]
    roi, score = roi[order], score[order]
    kept = loop_nms(roi, nms_thresh)[:n_post_nms]
    return (roi[kept], score[kept]) if with_scores else roi[kept]


def random_inputs(seed, num_bad=0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=len(ANCHORS)).astype(np.float32)
    deltas = (rng.normal(size=(len(ANCHORS), 4)) * 0.3).astype(np.float32)
    bad = rng.choice(len(ANCHORS), size=num_bad, replace=False)
    values = np.array([np.nan, np.inf, -np.inf], np.float32)
    scores[bad[::2]] = rng.choice(values, size=len(bad[::2]))
    deltas[bad[1::2], rng.integers(0, 4, len(bad[1::2]))] = rng.choice(values, size=len(bad[1::2]))
    return scores, deltas


def assert_matches_seed(scores, deltas, rois, roi_mask, **kwargs):
    expected = seed_propose(deltas, scores, ANCHORS, IMAGE_SIZE, **kwargs)
    rois, roi_mask = np.asarray(rois), np.asarray(roi_mask)
    assert roi_mask.sum() == len(expected)
    np.testing.assert_array_equal(roi_mask, np.arange(len(roi_mask)) < len(expected))
    np.testing.assert_allclose(rois[: len(expected)], expected, rtol=1e-5, atol=1e-4)
    assert np.all(rois[len(expected) :] == 0)


# ---------------------------------------------------------------- tests
def test_propose_hand_worked():
    anchors = np.array(
        [
            [0, 0, 20, 20],  # 0: score 0.9, kept first
            [1, 1, 21, 21],  # 1: IoU 361 / 439 = 0.82 with box 0: suppressed
            [30, 30, 40, 40],  # 2: best score but 10 px < min_size 16: dropped
            [30, 0, 50, 20],  # 3: NaN score: dropped
            [0, 30, 20, 50],  # 4: deltas move it to [-8, 30, 32, 50], clipped at y = 0
            [40, 40, 70, 70],  # 5: clipped to [40, 40, 60, 60] by the 60 x 60 image
            [0, 0, 20, 20],  # 6: infinite delta: dropped
        ],
        np.float32,
    )
    scores = np.array([0.9, 0.8, 0.95, np.nan, 0.5, 0.6, 1.0], np.float32)
    deltas = np.zeros((7, 4), np.float32)
    deltas[4] = [0.1, 0, np.log(2), 0]  # centre y 10 + 0.1 * 20 = 12, height 40
    deltas[6, 1] = np.inf
    rois, roi_mask = propose_jit(
        scores, deltas, anchors, (60, 60), pre_nms_top_n=7, post_nms_top_n=5
    )
    np.testing.assert_array_equal(roi_mask, [1, 1, 1, 0, 0])
    expected = [[0, 0, 20, 20], [40, 40, 60, 60], [0, 30, 32, 50], [0] * 4, [0] * 4]
    np.testing.assert_allclose(rois, expected, atol=1e-5)
    # pre_nms_top_n = 2 keeps only boxes 0 and 1 (the top valid scores): 1 is suppressed.
    rois, roi_mask = propose_jit(
        scores, deltas, anchors, (60, 60), pre_nms_top_n=2, post_nms_top_n=5
    )
    np.testing.assert_array_equal(roi_mask, [1, 0, 0, 0, 0])


def test_propose_drops_anchors_centred_in_the_padding_and_takes_a_min_height_and_width():
    # A 40 x 48 image in a larger padded bucket.
    anchors = np.array(
        [
            [0, 0, 20, 20],  # 0: score 0.5, 20 x 20
            [30, 40, 50, 60],  # 1: best score; centre (40, 50) lies in the padding: dropped
            [10, 10, 30, 50],  # 2: score 0.7; clipped to [10, 10, 30, 48], 20 x 38
        ],
        np.float32,
    )
    scores = np.array([0.5, 0.9, 0.7], np.float32)
    deltas = np.zeros((3, 4), np.float32)
    rois, roi_mask = propose_jit(
        scores, deltas, anchors, (40, 48), pre_nms_top_n=3, post_nms_top_n=3, min_size=4.0
    )
    np.testing.assert_array_equal(roi_mask, [1, 1, 0])
    np.testing.assert_allclose(rois, [[10, 10, 30, 48], [0, 0, 20, 20], [0] * 4], atol=1e-5)
    # min_size (height 15, width 30): anchor 0 is 20 px wide, dropped; anchor 2 stays.
    rois, roi_mask = propose_jit(
        scores, deltas, anchors, (40, 48), pre_nms_top_n=3, post_nms_top_n=3,
        min_size=np.array([15.0, 30.0], np.float32),
    )  # fmt: skip
    np.testing.assert_array_equal(roi_mask, [1, 0, 0])
    np.testing.assert_allclose(rois[0], [10, 10, 30, 48], atol=1e-5)


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([0, 40]))
def test_propose_matches_seed(seed, num_bad):
    scores, deltas = random_inputs(seed, num_bad)
    kwargs = dict(n_pre_nms=200, n_post_nms=60, min_size=16)
    rois, roi_mask = propose_jit(
        scores, deltas, ANCHORS, IMAGE_SIZE, pre_nms_top_n=200, post_nms_top_n=60
    )
    assert_matches_seed(scores, deltas, rois, roi_mask, **kwargs)
    assert np.all(np.isfinite(np.asarray(rois)))


def test_propose_pre_nms_top_n_larger_than_anchors():
    # 5000 > 648 anchors is clamped; 500 output slots are more than NMS keeps: padding.
    scores, deltas = random_inputs(3, num_bad=20)
    rois, roi_mask = propose_jit(
        scores,
        deltas,
        ANCHORS,
        IMAGE_SIZE,
        pre_nms_top_n=5000,
        post_nms_top_n=500,
        nms_iou=0.5,
        min_size=8.0,
    )
    assert rois.shape == (500, 4) and 0 < roi_mask.sum() < 500
    assert_matches_seed(
        scores, deltas, rois, roi_mask, n_pre_nms=5000, n_post_nms=500, nms_thresh=0.5, min_size=8
    )


def test_propose_all_scores_non_finite_keeps_nothing():
    scores = np.full(len(ANCHORS), np.nan, np.float32)
    scores[::3] = np.inf
    deltas = np.zeros((len(ANCHORS), 4), np.float32)
    rois, roi_mask = propose_jit(
        scores, deltas, ANCHORS, IMAGE_SIZE, pre_nms_top_n=200, post_nms_top_n=60
    )
    assert not np.any(roi_mask) and np.all(rois == 0)


def test_propose_jit_and_vmap_with_traced_size_and_min_size():
    inputs = [random_inputs(seed, num_bad=10) for seed in range(3)]
    scores = np.stack([s for s, _ in inputs])
    deltas = np.stack([d for _, d in inputs])
    sizes = np.array([[64, 72], [40, 56], [64, 30]], np.int32)
    min_sizes = np.array([16.0, 8.0, 12.0], np.float32)
    f = functools.partial(propose, anchors=ANCHORS, pre_nms_top_n=150, post_nms_top_n=40)
    batched = jax.jit(jax.vmap(f))(scores, deltas, image_size=sizes, min_size=min_sizes)
    # Eager once: op-by-op dispatch compiles every op, seconds on a loaded machine.
    eager = f(scores[0], deltas[0], image_size=sizes[0], min_size=min_sizes[0])
    for b, e in zip(batched, eager):
        np.testing.assert_array_equal(b[0], e)
    single = jax.jit(f)
    for i in range(3):
        for b, e in zip(
            batched, single(scores[i], deltas[i], image_size=sizes[i], min_size=min_sizes[i])
        ):
            np.testing.assert_array_equal(b[i], e)
        expected = seed_propose(
            deltas[i], scores[i], ANCHORS, sizes[i], 150, 40, min_size=min_sizes[i]
        )
        assert batched[1][i].sum() == len(expected)
        np.testing.assert_allclose(batched[0][i][: len(expected)], expected, atol=1e-4)


def test_propose_ties_go_to_lower_anchor_index():
    # Two identical boxes with equal scores: the lower index wins the NMS.
    anchors = jnp.array([[0, 0, 20, 20], [0, 0, 20, 20], [30, 30, 50, 50]], jnp.float32)
    deltas = jnp.zeros((3, 4)).at[1].set(jnp.array([0.0, 0.0, 0.0, 0.01]))
    rois, roi_mask = propose_jit(
        jnp.array([1.0, 1.0, 0.0]), deltas, anchors, (60, 60), pre_nms_top_n=3, post_nms_top_n=3
    )
    np.testing.assert_array_equal(roi_mask, [1, 1, 0])
    np.testing.assert_allclose(rois[:2], [[0, 0, 20, 20], [30, 30, 50, 50]], atol=1e-5)


def test_propose_per_level_matches_the_seed_rule_run_on_each_level():
    # FPN rule: top-k and NMS within each level, then the best P over all levels.
    # Reference: the seed's ProposalCreator per level (keeping every survivor, with
    # scores), merged by descending score (stable: lower level first, as the
    # levels' anchors are concatenated in that order).
    scores, deltas = random_inputs(11)
    sizes = [300, 200, len(ANCHORS) - 500]
    pre, post = 50, 60
    merged = []
    start = 0
    for level, size in enumerate(sizes):
        part = slice(start, start + size)
        kept, kept_scores = seed_propose(
            deltas[part], scores[part], ANCHORS[part], IMAGE_SIZE, pre, size, with_scores=True
        )
        merged += [(-sc, level, i, b) for i, (b, sc) in enumerate(zip(kept, kept_scores))]
        start += size
    merged.sort(key=lambda t: (t[0], t[1], t[2]))
    expected = np.array([t[3] for t in merged[:post]])
    rois, roi_mask = jax.jit(
        functools.partial(propose, pre_nms_top_n=pre, post_nms_top_n=post, level_sizes=sizes)
    )(scores, deltas, ANCHORS, IMAGE_SIZE)
    rois, roi_mask = np.asarray(rois), np.asarray(roi_mask)
    assert roi_mask.sum() == len(expected)
    np.testing.assert_allclose(rois[: len(expected)], expected, rtol=1e-5, atol=1e-4)
    # Without levels, cross-level NMS and one global top-k give a different set.
    flat, _ = propose_jit(
        scores, deltas, ANCHORS, IMAGE_SIZE, pre_nms_top_n=pre, post_nms_top_n=post
    )
    assert not np.allclose(np.asarray(flat), rois)


def test_propose_rejects_level_sizes_that_do_not_cover_the_anchors():
    scores, deltas = random_inputs(0)
    with pytest.raises(ValueError, match="level_sizes"):
        propose(
            scores,
            deltas,
            ANCHORS,
            IMAGE_SIZE,
            pre_nms_top_n=10,
            post_nms_top_n=5,
            level_sizes=[10, 20],
        )
