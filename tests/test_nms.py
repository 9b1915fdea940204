"""Tests for frcnn_jax.nms against a slow NumPy greedy loop."""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from frcnn_jax import nms as nms_lib
from frcnn_jax.nms import ACCELERATOR_TILE_SIZE, batched_nms, nms

NAN, INF = float("nan"), float("inf")


def _np_iou(box, others):
    """IoU of one float32 box [4] with float32 boxes [K, 4] (0 for an empty union)."""
    ih = np.maximum(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0)
    iw = np.maximum(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0)
    inter = ih * iw
    area = np.maximum(box[2] - box[0], 0) * np.maximum(box[3] - box[1], 0)
    areas = np.maximum(others[:, 2] - others[:, 0], 0) * np.maximum(others[:, 3] - others[:, 1], 0)
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0)


def reference_nms(boxes, scores, iou_threshold, max_output, valid=None, classes=None):
    """The textbook greedy loop: kept indices, best score first (stable ties)."""
    boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    ok = np.isfinite(scores) & np.isfinite(boxes).all(axis=1)
    if valid is not None:
        ok &= np.asarray(valid, bool)
    classes = np.zeros(len(scores), int) if classes is None else np.asarray(classes)
    keep = []
    for i in np.argsort(-np.where(ok, scores, -np.inf), kind="stable"):
        if not ok[i] or len(keep) == max_output:
            break
        kept = np.array(keep, int)
        overlap = _np_iou(boxes[i], boxes[kept]) > np.float32(iou_threshold)
        if not np.any(overlap & (classes[kept] == classes[i])):
            keep.append(int(i))
    return keep


@functools.partial(jax.jit, static_argnames=("max_output", "tile_size"))
def jit_nms(boxes, scores, valid, iou_threshold, *, max_output, tile_size=512):
    return nms(
        boxes,
        scores,
        iou_threshold=iou_threshold,
        max_output=max_output,
        valid=valid,
        tile_size=tile_size,
    )


@functools.partial(jax.jit, static_argnames=("max_output", "tile_size"))
def jit_batched_nms(boxes, scores, classes, valid, iou_threshold, *, max_output, tile_size=512):
    return batched_nms(
        boxes,
        scores,
        classes,
        iou_threshold=iou_threshold,
        max_output=max_output,
        valid=valid,
        tile_size=tile_size,
    )


def kept(result):
    """Kept indices as a list, after checking the output layout."""
    indices, valid = (np.asarray(x) for x in result)
    assert indices.dtype == np.int32 and valid.dtype == bool
    num_kept = int(valid.sum())
    assert valid[:num_kept].all(), "valid must be a prefix"
    assert (indices[num_kept:] == 0).all(), "padding indices must be 0"
    return indices[:num_kept].tolist()


def small_nms(boxes, scores, iou_threshold, valid=None, *, classes=None, max_output=8, tile_size=8):
    """Runs (batched) NMS on at most 8 boxes padded to 8 with invalid rows, so
    that the small cases share a few compilations; padding must change nothing."""
    boxes, scores = np.asarray(boxes, np.float32), np.asarray(scores, np.float32)
    pad = SMALL - len(scores)
    valid = np.ones(len(scores), bool) if valid is None else np.asarray(valid)
    args = (np.pad(boxes, ((0, pad), (0, 0))), np.pad(scores, (0, pad)), np.pad(valid, (0, pad)))
    options = dict(max_output=max_output, tile_size=tile_size)
    if classes is None:
        return jit_nms(*args, iou_threshold, **options)
    classes = np.pad(np.asarray(classes, np.int32), (0, pad))
    return jit_batched_nms(args[0], args[1], classes, args[2], iou_threshold, **options)


SMALL = 8


def crowded_boxes(rng, n):
    """float32 boxes [n, 4] of side 10..20 around (20, 20), and scores [n]."""
    centres, sides = rng.uniform(15, 25, (n, 2)), rng.uniform(10, 20, (n, 2))
    boxes = np.concatenate([centres - sides / 2, centres + sides / 2], axis=1)
    return boxes.astype(np.float32), rng.uniform(size=n).astype(np.float32)


def random_boxes(rng, n, image=(600, 1000)):
    """RPN-like float32 boxes [n, 4] and scores [n]."""
    cy, cx = rng.uniform(0, image[0], n), rng.uniform(0, image[1], n)
    h = np.exp(rng.uniform(np.log(16), np.log(300), n))
    w = h * np.exp(rng.uniform(-1, 1, n))
    boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=1)
    return boxes.astype(np.float32), rng.uniform(size=n).astype(np.float32)


# --- hand-worked cases --------------------------------------------------------


def test_hand_worked():
    boxes = np.array(
        [
            [1, 1, 11, 11],  # IoU 81 / 119 = 0.68 with box 2: suppressed by box 2
            [20, 20, 30, 30],  # kept, overlaps nothing
            [0, 0, 10, 10],  # best score: kept
            [0, 0, 10, 4],  # IoU 0.4 with box 2: kept
        ],
        np.float32,
    )
    scores = np.array([0.8, 0.7, 0.9, 0.6], np.float32)
    assert kept(small_nms(boxes, scores, 0.5)) == [2, 1, 3]
    # At threshold 0.3, box 3 (IoU 0.4 with box 2) is suppressed as well.
    assert kept(small_nms(boxes, scores, 0.3)) == [2, 1]


def test_iou_equal_to_threshold_is_not_suppressed():
    # IoU = 50 / (100 + 50 - 50) = 0.5 exactly: suppression needs IoU > 0.5.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    assert kept(small_nms(boxes, scores, 0.5)) == [0, 1]
    assert kept(small_nms(boxes, scores, 0.49)) == [0]


@pytest.mark.parametrize("tile_size", [2, 8])
def test_suppressed_box_does_not_suppress(tile_size):
    # A chain along x: IoU(A, B) = IoU(B, C) = 70 / 130 > 0.5, IoU(A, C) = 40 / 160.
    # Greedy keeps A, B is suppressed by A, so C survives although it overlaps B.
    # Tiles of 2 resolve it across tiles, a tile of 8 inside one tile.
    boxes = np.array([[0, 0, 10, 10], [0, 3, 10, 13], [0, 6, 10, 16]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert kept(small_nms(boxes, scores, 0.5, tile_size=tile_size)) == [0, 2]


def test_equal_scores_keep_lower_index():
    # Identical boxes with identical scores: the lower index is kept.
    boxes = np.array([[5, 5, 15, 15], [0, 0, 1, 1], [5, 5, 15, 15]], np.float32)
    scores = np.array([0.5, 0.5, 0.5], np.float32)
    assert kept(small_nms(boxes, scores, 0.5)) == [0, 1]


def test_max_output_truncates_and_pads():
    boxes = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]], np.float32)  # disjoint
    scores = np.array([0.1, 0.3, 0.2], np.float32)
    assert kept(small_nms(boxes, scores, 0.5, max_output=2)) == [1, 2]
    indices, valid = small_nms(boxes, scores, 0.5, max_output=10)  # K > N: padded
    np.testing.assert_array_equal(indices, [1, 2, 0] + [0] * 7)
    np.testing.assert_array_equal(valid, [True] * 3 + [False] * 7)


def test_invalid_and_non_finite_are_never_kept_and_never_suppress():
    box = [0, 0, 10, 10]
    boxes = np.array([box, box, box, box, [NAN, 0, 10, 10], [0, 0, INF, 10], box], np.float32)
    scores = np.array([0.99, NAN, INF, -INF, 0.98, 0.97, 0.5], np.float32)
    valid = np.array([False, True, True, True, True, True, True])
    # 0 is masked out, 1-3 have non-finite scores, 4-5 non-finite coordinates:
    # only box 6 remains, unsuppressed by the identical higher-scoring boxes.
    assert kept(small_nms(boxes, scores, 0.5, valid)) == [6]


def test_all_invalid_and_empty_inputs():
    boxes, scores = random_boxes(np.random.default_rng(0), 5)
    indices, valid = small_nms(boxes, scores, 0.5, np.zeros(5, bool))
    np.testing.assert_array_equal(indices, [0] * 8)
    np.testing.assert_array_equal(valid, [False] * 8)
    indices, valid = nms(np.zeros((0, 4)), np.zeros((0,)), iou_threshold=0.5, max_output=2)
    assert indices.shape == (2,) and not valid.any()


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="boxes \\[N, 4\\] and scores \\[N\\]"):
        nms(np.zeros((3, 4)), np.zeros((2,)), iou_threshold=0.5, max_output=2)
    with pytest.raises(ValueError, match="classes \\[N\\]"):
        batched_nms(np.zeros((3, 4)), np.zeros(3), np.zeros(2), iou_threshold=0.5, max_output=2)


# --- against the reference ------------------------------------------------------


@pytest.mark.parametrize(
    "num_boxes,max_output,tile_size,iou_threshold",
    [(300, 300, 64, 0.5), (300, 300, 64, 0.3), (300, 50, 7, 0.7)],
)
def test_matches_reference(num_boxes, max_output, tile_size, iou_threshold):
    boxes, scores = random_boxes(np.random.default_rng(num_boxes + tile_size), num_boxes)
    valid = np.random.default_rng(1).uniform(size=num_boxes) < 0.9
    got = kept(
        jit_nms(boxes, scores, valid, iou_threshold, max_output=max_output, tile_size=tile_size)
    )
    assert got == reference_nms(boxes, scores, iou_threshold, max_output, valid)


def test_matches_reference_at_proposal_scale():
    # The seed's test-time proposal setting: 6000 candidates -> 300 at IoU 0.7.
    boxes, scores = random_boxes(np.random.default_rng(7), 6000)
    got = kept(jit_nms(boxes, scores, None, 0.7, max_output=300))
    assert got == reference_nms(boxes, scores, 0.7, 300)


def test_never_builds_an_n_by_n_matrix():
    num_boxes = 12000  # the accelerator form's blocks are [2048, 2048]
    jaxpr = jax.make_jaxpr(lambda b, s: nms(b, s, iou_threshold=0.7, max_output=200))(
        jnp.zeros((num_boxes, 4)), jnp.zeros((num_boxes,))
    )

    def sizes(jaxpr):
        for eqn in jaxpr.eqns:
            yield from (np.prod(v.aval.shape, dtype=int) for v in eqn.outvars)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from sizes(sub)

    # At most [N, 4] or [T, T, 2] corner blocks, in both forms (the jaxpr holds both):
    # T = 2048 on accelerators, where N * N would be 144M.
    tile = ACCELERATOR_TILE_SIZE
    assert tile < num_boxes and max(sizes(jaxpr.jaxpr)) <= 2 * tile * tile


# Small integer boxes (including empty and inverted ones) and few distinct
# scores make overlaps, exact threshold hits and score ties common.
coordinate = st.integers(0, 12).map(float)
small_boxes = hnp.arrays(np.float32, (10, 4), elements=coordinate)
tied_scores = hnp.arrays(
    np.float32, (10,), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, NAN, INF])
)
thresholds = st.sampled_from([0.0, 0.25, 0.5, 0.7, 1.0])
layouts = st.sampled_from([(4, 3), (13, 4)])  # (max_output, tile_size): K < N, K > N


@settings(max_examples=60, deadline=None)
@given(small_boxes, tied_scores, hnp.arrays(bool, (10,)), thresholds, layouts)
def test_property_matches_reference(boxes, scores, valid, iou_threshold, layout):
    max_output, tile_size = layout
    got = kept(
        jit_nms(boxes, scores, valid, iou_threshold, max_output=max_output, tile_size=tile_size)
    )
    assert got == reference_nms(boxes, scores, iou_threshold, max_output, valid)
    # Invariants, independent of the reference: a subset of valid, finite
    # candidates, in descending score order, no kept pair above the threshold.
    assert len(set(got)) == len(got) and all(valid[got]) and np.isfinite(scores[got]).all()
    assert (np.diff(scores[got]) <= 0).all()
    for rank, i in enumerate(got):
        assert not (_np_iou(boxes[i], boxes[got[:rank]]) > iou_threshold).any()


@settings(max_examples=40, deadline=None)
@given(
    small_boxes,
    tied_scores,
    hnp.arrays(np.int32, (10,), elements=st.integers(0, 2)),
    thresholds,
    layouts,
)
def test_property_batched_matches_per_class_reference(
    boxes, scores, classes, iou_threshold, layout
):
    max_output, tile_size = layout
    got = kept(
        jit_batched_nms(
            boxes, scores, classes, None, iou_threshold, max_output=max_output, tile_size=tile_size
        )
    )
    assert got == reference_nms(boxes, scores, iou_threshold, max_output, classes=classes)


# --- batched_nms ----------------------------------------------------------------


def test_batched_nms_hand_worked():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([3, 7, 3, 1_000_000])
    # Box 1 is identical to box 0 but of another class: kept. Box 2 is
    # suppressed by box 0 (same class, IoU 0.81). Large class ids are exact.
    assert kept(small_nms(boxes, scores, 0.5, classes=classes, tile_size=2)) == [0, 1, 3]


def test_batched_nms_matches_reference_on_many_classes():
    rng = np.random.default_rng(3)
    boxes, scores = random_boxes(rng, 400, image=(100, 100))  # crowded: much overlap
    classes = rng.integers(0, 20, 400)
    got = kept(jit_batched_nms(boxes, scores, classes, None, 0.5, max_output=100, tile_size=64))
    assert got == reference_nms(boxes, scores, 0.5, 100, classes=classes)


# --- jit and vmap ---------------------------------------------------------------


def test_jit_matches_eager():
    boxes, scores = crowded_boxes(np.random.default_rng(4), SMALL)
    eager = nms(boxes, scores, iou_threshold=0.5, max_output=SMALL, tile_size=2)
    jitted = small_nms(boxes, scores, 0.5, tile_size=2)
    for a, b in zip(eager, jitted):
        np.testing.assert_array_equal(a, b)


def test_vmap_matches_loop():
    rng = np.random.default_rng(5)
    batch = [crowded_boxes(rng, SMALL) for _ in range(3)]
    boxes = np.stack([b for b, _ in batch])  # [B, N, 4]
    scores = np.stack([s for _, s in batch])  # [B, N]
    valid = np.arange(SMALL)[None, :] < np.array([[8], [3], [0]])  # loop lengths differ
    classes = rng.integers(0, 2, (3, SMALL)).astype(np.int32)
    options = dict(iou_threshold=0.5, max_output=SMALL, tile_size=2)
    batched = jax.jit(jax.vmap(lambda b, s, v: nms(b, s, valid=v, **options)))(boxes, scores, valid)
    batched_cls = jax.jit(jax.vmap(lambda b, s, c, v: batched_nms(b, s, c, valid=v, **options)))(
        boxes, scores, classes, valid
    )
    assert 0 < len(kept((batched[0][0], batched[1][0]))) < SMALL  # some boxes suppressed
    for i in range(3):
        single = small_nms(boxes[i], scores[i], 0.5, valid[i], tile_size=2)
        single_cls = small_nms(boxes[i], scores[i], 0.5, valid[i], classes=classes[i], tile_size=2)
        for a, b in zip(batched, single):
            np.testing.assert_array_equal(a[i], b)
        for a, b in zip(batched_cls, single_cls):
            np.testing.assert_array_equal(a[i], b)


# --- the CPU and accelerator forms ----------------------------------------------


@functools.partial(jax.jit, static_argnames=("max_output", "tile_size", "form"))
def forced_nms(boxes, scores, classes, valid, iou_threshold, *, max_output, tile_size, form):
    options = dict(iou_threshold=iou_threshold, max_output=max_output, tile_size=tile_size)
    return nms_lib._nms(boxes, scores, classes, valid, form=form, **options)


def assert_forms_agree(boxes, scores, classes, valid, iou_threshold, **options):
    """Both forms on CPU: identical indices and masks. Returns the kept list."""
    cpu, accelerator = (
        forced_nms(boxes, scores, classes, valid, iou_threshold, form=form, **options)
        for form in ("cpu", "accelerator")
    )
    for a, b in zip(cpu, accelerator):
        np.testing.assert_array_equal(a, b)
    return kept(cpu)


def test_accelerator_form_equals_cpu_form_at_proposal_scale():
    # The training proposals: 12000 -> 2000 at IoU 0.7, half of them crowded (long
    # suppression chains); default tiles are 512 (CPU) and 2048 (accelerators).
    rng = np.random.default_rng(11)
    spread, spread_scores = random_boxes(rng, 6000)
    crowd, crowd_scores = crowded_boxes(rng, 6000)
    boxes, scores = (
        np.concatenate([spread, crowd * 10]),
        np.concatenate([spread_scores, crowd_scores]),
    )
    valid = rng.uniform(size=12000) < 0.95
    got = assert_forms_agree(boxes, scores, None, valid, 0.7, max_output=2000, tile_size=None)
    assert 100 < len(got) <= 2000
    # Per-class, as the detector's post-processing: 300 rois x 20 classes -> 100.
    classes = rng.integers(0, 20, 12000).astype(np.int32)
    got = assert_forms_agree(boxes, scores, classes, None, 0.3, max_output=100, tile_size=None)
    assert got == reference_nms(boxes, scores, 0.3, 100, classes=classes)


@settings(max_examples=40, deadline=None)
@given(
    small_boxes,
    tied_scores,
    hnp.arrays(np.int32, (10,), elements=st.integers(0, 2)),
    hnp.arrays(bool, (10,)),
    thresholds,
    layouts,
)
def test_property_accelerator_form_equals_cpu_form(
    boxes, scores, classes, valid, iou_threshold, layout
):
    max_output, tile_size = layout
    got = assert_forms_agree(
        boxes, scores, classes, valid, iou_threshold, max_output=max_output, tile_size=tile_size
    )
    assert got == reference_nms(boxes, scores, iou_threshold, max_output, valid, classes)


def test_each_platform_lowers_its_form():
    # CPU: tiles, kept-block checks and the fixed point (3 loops); accelerators: no kept-block
    # loop (2 loops).
    boxes, scores = jnp.zeros((3000, 4)), jnp.zeros((3000,))
    lowered = jax.jit(lambda b, s: nms(b, s, iou_threshold=0.7, max_output=500)).trace(
        boxes, scores
    )
    for platform, num_loops in (("cpu", 3), ("cuda", 2)):
        text = lowered.lower(lowering_platforms=(platform,)).as_text()
        assert text.count("stablehlo.while") == num_loops, platform
