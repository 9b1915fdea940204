"""Tests for frcnn_jax.boxes: hand-worked cases, the seed's NumPy code, properties."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from frcnn_jax.boxes import SCALE_CLAMP, area, clip_boxes, decode, encode, pairwise_iou

NAN, INF = float("nan"), float("inf")


def seed_bbox2loc(src_bbox, dst_bbox):
    """The seed's bbox2loc (simple-faster-rcnn-pytorch), NumPy."""
    height = src_bbox[:, 2] - src_bbox[:, 0]
    width = src_bbox[:, 3] - src_bbox[:, 1]
    ctr_y = src_bbox[:, 0] + 0.5 * height
    ctr_x = src_bbox[:, 1] + 0.5 * width
    base_height = dst_bbox[:, 2] - dst_bbox[:, 0]
    base_width = dst_bbox[:, 3] - dst_bbox[:, 1]
    base_ctr_y = dst_bbox[:, 0] + 0.5 * base_height
    base_ctr_x = dst_bbox[:, 1] + 0.5 * base_width
    eps = np.finfo(height.dtype).eps
    height = np.maximum(height, eps)
    width = np.maximum(width, eps)
    dy = (base_ctr_y - ctr_y) / height
    dx = (base_ctr_x - ctr_x) / width
    dh = np.log(base_height / height)
    dw = np.log(base_width / width)
    return np.vstack((dy, dx, dh, dw)).transpose()


def seed_loc2bbox(src_bbox, loc):
    """The seed's loc2bbox, NumPy."""
    src_height = src_bbox[:, 2] - src_bbox[:, 0]
    src_width = src_bbox[:, 3] - src_bbox[:, 1]
    src_ctr_y = src_bbox[:, 0] + 0.5 * src_height
    src_ctr_x = src_bbox[:, 1] + 0.5 * src_width
    ctr_y = loc[:, 0] * src_height + src_ctr_y
    ctr_x = loc[:, 1] * src_width + src_ctr_x
    h = np.exp(loc[:, 2]) * src_height
    w = np.exp(loc[:, 3]) * src_width
    return np.stack([ctr_y - 0.5 * h, ctr_x - 0.5 * w, ctr_y + 0.5 * h, ctr_x + 0.5 * w], axis=1)


def seed_bbox_iou(bbox_a, bbox_b):
    """The seed's bbox_iou, NumPy (valid for boxes of positive area)."""
    tl = np.maximum(bbox_a[:, None, :2], bbox_b[:, :2])
    br = np.minimum(bbox_a[:, None, 2:], bbox_b[:, 2:])
    area_i = np.prod(br - tl, axis=2) * (tl < br).all(axis=2)
    area_a = np.prod(bbox_a[:, 2:] - bbox_a[:, :2], axis=1)
    area_b = np.prod(bbox_b[:, 2:] - bbox_b[:, :2], axis=1)
    return area_i / (area_a[:, None] + area_b - area_i)


def random_boxes(rng, n, lo=1.0, hi=100.0):
    """float32 [n, 4] boxes of positive size in (lo, hi) pixels."""
    yx = rng.uniform(0, 500, (n, 2))
    hw = rng.uniform(lo, hi, (n, 2))
    return np.concatenate([yx, yx + hw], axis=1).astype(np.float32)


# --- area -------------------------------------------------------------------


def test_area_hand_worked():
    boxes = jnp.array(
        [
            [0, 0, 10, 20],  # 10 x 20
            [5, 5, 5, 9],  # zero height
            [10, 10, 0, 20],  # inverted: empty, not negative
        ],
        jnp.float32,
    )
    np.testing.assert_array_equal(area(boxes), [200, 0, 0])


# --- pairwise_iou -----------------------------------------------------------

IOU_CASES = [
    # (box_a, box_b, iou)
    ([0, 0, 10, 10], [5, 5, 15, 15], 25 / 175),  # quarter overlap: 25 / (100 + 100 - 25)
    ([0, 0, 10, 10], [0, 0, 10, 5], 0.5),  # half of a inside a
    ([0, 0, 10, 10], [2, 2, 4, 4], 4 / 100),  # b inside a
    ([0, 0, 10, 10], [0, 10, 10, 20], 0.0),  # touching edges, no overlap
    ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),  # disjoint
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),  # identical
    ([3, 3, 3, 3], [3, 3, 3, 3], 0.0),  # two points: empty union -> 0, not NaN
    ([0, 0, 10, 10], [5, 5, 5, 8], 0.0),  # zero-height box inside a
    ([0, 0, 10, 10], [8, 8, 2, 2], 0.0),  # inverted box has no area
    ([0, 0, 10, 10], [NAN, 0, 10, 10], 0.0),  # NaN coordinate -> 0
    ([0, 0, 10, 10], [0, 0, INF, INF], 0.0),  # 100 / inf
    ([-INF, -INF, INF, INF], [-INF, -INF, INF, INF], 0.0),  # inf - inf: defined as 0
]


@pytest.mark.parametrize("box_a,box_b,expected", IOU_CASES)
def test_pairwise_iou_hand_worked(box_a, box_b, expected):
    iou = pairwise_iou(jnp.array([box_a], jnp.float32), jnp.array([box_b], jnp.float32))
    assert iou.shape == (1, 1) and iou.dtype == jnp.float32
    np.testing.assert_allclose(iou[0, 0], expected, rtol=1e-6)


def test_pairwise_iou_matches_seed():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 7), random_boxes(rng, 5)
    np.testing.assert_allclose(pairwise_iou(a, b), seed_bbox_iou(a, b), rtol=1e-5, atol=1e-7)


def test_pairwise_iou_empty_inputs():
    assert pairwise_iou(jnp.zeros((0, 4)), jnp.zeros((3, 4))).shape == (0, 3)


box_arrays = hnp.arrays(
    np.float32, (6, 4), elements=st.floats(-50, 50, width=32, allow_subnormal=False)
)


@settings(max_examples=50, deadline=None)
@given(box_arrays, box_arrays)
def test_pairwise_iou_properties(a, b):
    ab, ba = np.asarray(_jit_iou(a, b)), np.asarray(_jit_iou(b, a))
    np.testing.assert_array_equal(ab, ba.T)  # symmetric, exactly
    assert np.all((ab >= 0) & (ab <= 1))
    self_iou = np.diag(np.asarray(_jit_iou(a, a)))
    positive = (a[:, 2] > a[:, 0]) & (a[:, 3] > a[:, 1])
    np.testing.assert_allclose(self_iou[positive], 1.0, rtol=1e-6)  # IoU(b, b) = 1
    np.testing.assert_array_equal(self_iou[~positive], 0.0)  # empty boxes: 0


_jit_iou = jax.jit(pairwise_iou)


# --- encode / decode --------------------------------------------------------


def test_encode_hand_worked():
    # src: centre (5, 10), 10 x 20; dst: centre (10, 20), 10 x 40.
    src = jnp.array([[0, 0, 10, 20]], jnp.float32)
    dst = jnp.array([[5, 0, 15, 40]], jnp.float32)
    # dy = 5 / 10, dx = 10 / 20, dh = log(10 / 10), dw = log(40 / 20).
    np.testing.assert_allclose(encode(src, dst), [[0.5, 0.5, 0.0, math.log(2)]], rtol=1e-6)
    # Weights multiply each component (detectron2's (10, 10, 5, 5) style).
    np.testing.assert_allclose(
        encode(src, dst, weights=(10, 10, 5, 5)), [[5, 5, 0, 5 * math.log(2)]], rtol=1e-6
    )


def test_decode_hand_worked():
    src = jnp.array([[0, 0, 10, 20]], jnp.float32)
    # Move the centre by (0.5 h, 0.5 w) = (5, 10), keep h, double w: (10, 20), 10 x 40.
    np.testing.assert_allclose(
        decode(src, [[0.5, 0.5, 0.0, math.log(2)]]), [[5, 0, 15, 40]], atol=1e-5
    )
    np.testing.assert_allclose(
        decode(src, [[5, 5, 0, 5 * math.log(2)]], weights=(10, 10, 5, 5)),
        [[5, 0, 15, 40]],
        atol=1e-5,
    )


def test_decode_clamps_scale():
    # dh = 10 would make a 10 px box 220000 px tall; clamped to 1000/16 times: 625 px.
    src = jnp.array([[0, 0, 10, 10]], jnp.float32)
    out = decode(src, [[0.0, 0.0, 10.0, INF]])
    np.testing.assert_allclose(out[0, 2] - out[0, 0], 10 * math.exp(SCALE_CLAMP), rtol=1e-5)
    np.testing.assert_allclose(out[0, 3] - out[0, 1], 625.0, rtol=1e-5)
    assert np.all(np.isfinite(out))


def test_encode_decode_match_seed():
    rng = np.random.default_rng(1)
    src, dst = random_boxes(rng, 8, lo=10), random_boxes(rng, 8, lo=10)
    np.testing.assert_allclose(encode(src, dst), seed_bbox2loc(src, dst), rtol=1e-5, atol=1e-5)
    deltas = rng.normal(0, 0.5, (8, 4)).astype(np.float32)
    np.testing.assert_allclose(
        decode(src, deltas), seed_loc2bbox(src, deltas), rtol=1e-5, atol=1e-3
    )


size = st.floats(10, 500, width=32)
corner = st.floats(-500, 500, width=32)
boxes_of_size = st.tuples(corner, corner, size, size).map(
    lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(boxes_of_size, min_size=5, max_size=5),
    st.lists(boxes_of_size, min_size=5, max_size=5),
    st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]),
)
def test_decode_inverts_encode(src, dst, weights):
    # Sizes 10..500 keep dst/src below exp(SCALE_CLAMP) = 62.5, so no clamping.
    src, dst = np.float32(src), np.float32(dst)
    out = decode(src, encode(src, dst, weights), weights)
    np.testing.assert_allclose(out, dst, rtol=1e-5, atol=2e-3)


def test_zero_area_boxes_encode_to_finite_values():
    src = jnp.array([[0, 0, 0, 0], [5, 5, 5, 15], [0, 0, 10, 10]], jnp.float32)
    dst = jnp.array([[1, 1, 11, 11], [0, 0, 10, 10], [3, 3, 3, 3]], jnp.float32)
    deltas = encode(src, dst)
    assert np.all(np.isfinite(deltas))
    # The zero-area src point at (0, 0): its size is floored at float32 eps.
    eps = np.finfo(np.float32).eps
    np.testing.assert_allclose(
        deltas[0], [6 / eps, 6 / eps, np.log(10 / eps), np.log(10 / eps)], rtol=1e-5
    )


def test_non_finite_deltas_stay_in_their_row():
    src = jnp.array([[0, 0, 10, 10]] * 3, jnp.float32)
    out = np.asarray(decode(src, [[0, 0, 0, 0], [NAN, 0, 0, 0], [0, 0, -INF, 0]]))
    np.testing.assert_allclose(out[0], [0, 0, 10, 10])
    assert np.isnan(out[1, [0, 2]]).all()  # NaN dy -> NaN y coordinates, only there
    np.testing.assert_allclose(out[2], [5, 0, 5, 10])  # exp(-inf) = 0: zero height


# --- clip_boxes -------------------------------------------------------------


def test_clip_boxes_hand_worked():
    boxes = jnp.array([[-5, -5, 700, 900], [10, 20, 30, 40]], jnp.float32)
    np.testing.assert_array_equal(
        clip_boxes(boxes, (600, 800)), [[0, 0, 600, 800], [10, 20, 30, 40]]
    )


def test_clip_boxes_traced_size_under_vmap():
    boxes = jnp.array([[[-5, -5, 700, 900]], [[-5, -5, 700, 900]]], jnp.float32)  # [2, 1, 4]
    sizes = jnp.array([[600, 800], [300, 400]], jnp.int32)
    out = jax.jit(jax.vmap(clip_boxes))(boxes, sizes)
    np.testing.assert_array_equal(out[:, 0], [[0, 0, 600, 800], [0, 0, 300, 400]])


# --- jit, vmap, gradients ---------------------------------------------------


def test_jit_matches_eager():
    rng = np.random.default_rng(2)
    a, b = random_boxes(rng, 6), random_boxes(rng, 6)
    deltas = rng.normal(0, 1, (6, 4)).astype(np.float32)

    def everything(a, b, deltas):
        return [
            pairwise_iou(a, b),
            encode(a, b),
            decode(a, deltas),
            area(a),
            clip_boxes(a, (300, 300)),
        ]

    for jitted, eager in zip(jax.jit(everything)(a, b, deltas), everything(a, b, deltas)):
        np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)


def test_vmap_matches_loop():
    rng = np.random.default_rng(3)
    a = np.stack([random_boxes(rng, 5) for _ in range(3)])  # [B, N, 4]
    b = np.stack([random_boxes(rng, 4) for _ in range(3)])  # [B, M, 4]
    deltas = rng.normal(0, 1, (3, 5, 4)).astype(np.float32)
    for fn, args in [(pairwise_iou, (a, b)), (encode, (a, a[:, ::-1])), (decode, (a, deltas))]:
        batched = jax.jit(jax.vmap(fn))(*args)
        looped = np.stack([jax.jit(fn)(*(x[i] for x in args)) for i in range(3)])
        np.testing.assert_allclose(batched, looped, rtol=1e-6, atol=1e-6)


DEGENERATE = [
    ([[0, 0, 10, 10]], [[0, 0, 10, 10]]),  # identical boxes
    ([[0, 5, 10, 5]], [[0, 0, 10, 10]]),  # zero width
    ([[3, 3, 3, 3]], [[3, 3, 3, 3]]),  # identical points: empty union
    ([[0, 0, 10, 10]], [[20, 20, 30, 30]]),  # disjoint
    ([[10, 10, 0, 0]], [[0, 0, 10, 10]]),  # inverted
]


@jax.jit
def _all_gradients(a, b):
    """Gradients of IoU, encode and decode wrt every box input (one compile)."""
    return [
        jax.grad(lambda x, y: pairwise_iou(x, y).sum(), argnums=(0, 1))(a, b),
        jax.grad(lambda x, y: encode(x, y).sum(), argnums=(0, 1))(a, b),
        jax.grad(lambda x, d: decode(x, d).sum(), argnums=(0, 1))(a, jnp.zeros_like(a)),
    ]


@pytest.mark.parametrize("a,b", DEGENERATE)
def test_finite_gradients_at_degenerate_boxes(a, b):
    grads = _all_gradients(jnp.array(a, jnp.float32), jnp.array(b, jnp.float32))
    for grad in jax.tree_util.tree_leaves(grads):
        assert np.all(np.isfinite(grad)), grads


def test_iou_gradient_hand_worked():
    # b = [2, 2, 8, 6] lies strictly inside a = [0, 0, 10, 10], so
    # IoU = h_b * w_b / 100 = 6 * 4 / 100: d/d(ymin, xmin, ymax, xmax) of b
    # is (-w_b, -h_b, w_b, h_b) / 100.
    iou_grad = jax.jit(jax.grad(lambda b: pairwise_iou(jnp.array([[0.0, 0, 10, 10]]), b)[0, 0]))
    grad = iou_grad(jnp.array([[2.0, 2, 8, 6]]))
    np.testing.assert_allclose(grad, [[-0.04, -0.06, 0.04, 0.06]], rtol=1e-5)
