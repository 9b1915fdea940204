"""Tests for frcnn_jax.roi_ops against slow NumPy loops that follow torchvision's kernels.

The references below mirror torchvision/csrc/ops/cpu/roi_pool_kernel.cpp and
roi_align_kernel.cpp (+ roi_align_common.h) line by line, with two changes of
form only: rois are (ymin, xmin, ymax, xmax) instead of (x1, y1, x2, y2), and
feature maps are [H, W, C]. torchvision's compiled ops do not load on this
platform, so these loops are the ground truth.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frcnn_jax import roi_ops


def c_round(value):
    """C's round(): halves away from zero."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def ref_roi_pool(features, rois, output_size, spatial_scale):
    """roi_pool_forward_kernel_impl; returns (output, argmax) with argmax -1 for empty bins.

    Bin edges use exact integer arithmetic: the kernel's float32 floor(ph *
    bin_size) / ceil((ph + 1) * bin_size) agree with it except in rounding
    accidents (7 * float32(57 / 7) = 57.000004, whose ceil adds a 58th row).
    """
    height, width, channels = features.shape
    out = np.zeros((len(rois), output_size, output_size, channels), np.float32)
    argmax = np.full(out.shape, -1)
    scale = np.float32(spatial_scale)
    for n, roi in enumerate(np.asarray(rois, np.float32)):
        start_h, start_w, end_h, end_w = (c_round(float(v * scale)) for v in roi)
        roi_height = max(end_h - start_h + 1, 1)  # force malformed rois to be 1x1
        roi_width = max(end_w - start_w + 1, 1)
        for ph in range(output_size):
            for pw in range(output_size):
                hstart = (ph * roi_height) // output_size
                wstart = (pw * roi_width) // output_size
                hend = -(-(ph + 1) * roi_height // output_size)
                wend = -(-(pw + 1) * roi_width // output_size)
                hstart = min(max(hstart + start_h, 0), height)
                hend = min(max(hend + start_h, 0), height)
                wstart = min(max(wstart + start_w, 0), width)
                wend = min(max(wend + start_w, 0), width)
                is_empty = hend <= hstart or wend <= wstart
                for c in range(channels):
                    maxval = 0.0 if is_empty else -np.finfo(np.float32).max
                    for h in range(hstart, hend):
                        for w in range(wstart, wend):
                            if features[h, w, c] > maxval:
                                maxval = features[h, w, c]
                                argmax[n, ph, pw, c] = h * width + w
                    out[n, ph, pw, c] = maxval
    return out, argmax


def ref_roi_pool_grad(shape, argmax, grad_out):
    """roi_pool_backward_kernel_impl: each bin's gradient goes to its argmax."""
    grad = np.zeros((shape[0] * shape[1], shape[2]))
    for (n, ph, pw, c), index in np.ndenumerate(argmax):
        if index != -1:
            grad[index, c] += grad_out[n, ph, pw, c]
    return grad.reshape(shape)


def ref_bilinear_taps(height, width, y, x):
    """pre_calc_for_bilinear_interpolate for one sample: [((row, col), weight)] * 4."""
    if not (y >= -1.0 and y <= height and x >= -1.0 and x <= width):
        return []  # empty: outside the feature map (or NaN)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return [
        ((y_low, x_low), hy * hx),
        ((y_low, x_high), hy * lx),
        ((y_high, x_low), ly * hx),
        ((y_high, x_high), ly * lx),
    ]


def ref_roi_align_bins(rois, shape, output_size, spatial_scale, sampling_ratio, aligned):
    """Yields (n, ph, pw, taps, count) of roi_align_forward_kernel_impl (float64)."""
    offset = 0.5 if aligned else 0.0
    for n, (y1, x1, y2, x2) in enumerate(np.asarray(rois, np.float64)):
        roi_start_h, roi_start_w = y1 * spatial_scale - offset, x1 * spatial_scale - offset
        roi_height = y2 * spatial_scale - offset - roi_start_h
        roi_width = x2 * spatial_scale - offset - roi_start_w
        if not aligned:  # force malformed ROIs to be 1x1
            roi_height, roi_width = max(roi_height, 1.0), max(roi_width, 1.0)
        bin_size_h, bin_size_w = roi_height / output_size, roi_width / output_size
        for ph in range(output_size):
            for pw in range(output_size):
                taps = []
                for iy in range(sampling_ratio):
                    y = roi_start_h + ph * bin_size_h + (iy + 0.5) * bin_size_h / sampling_ratio
                    for ix in range(sampling_ratio):
                        x = roi_start_w + pw * bin_size_w + (ix + 0.5) * bin_size_w / sampling_ratio
                        taps += ref_bilinear_taps(shape[0], shape[1], y, x)
                yield n, ph, pw, taps, sampling_ratio * sampling_ratio


def ref_roi_align(features, rois, output_size, spatial_scale, sampling_ratio=2, aligned=True):
    out = np.zeros((len(rois), output_size, output_size, features.shape[-1]))
    args = (rois, features.shape, output_size, spatial_scale, sampling_ratio, aligned)
    for n, ph, pw, taps, count in ref_roi_align_bins(*args):
        for cell, weight in taps:
            out[n, ph, pw] += weight * features[cell]
        out[n, ph, pw] /= count  # average pooling
    return out


def ref_roi_align_grad(shape, rois, grad_out, output_size, spatial_scale, sampling_ratio, aligned):
    """roi_align_backward_kernel_impl: each tap receives weight * grad / count."""
    grad = np.zeros(shape)
    args = (rois, shape, output_size, spatial_scale, sampling_ratio, aligned)
    for n, ph, pw, taps, count in ref_roi_align_bins(*args):
        for cell, weight in taps:
            grad[cell] += weight * grad_out[n, ph, pw] / count
    return grad


def ref_fpn_level(roi):
    """torchvision's LevelMapper without its eps: floor(4 + log2(sqrt(area) / 224)) in [2, 5]."""
    area = max(roi[2] - roi[0], 0.0) * max(roi[3] - roi[1], 0.0)
    if not area > 0:
        return 2
    return int(min(max(math.floor(4 + math.log2(math.sqrt(area) / 224)), 2), 5))


def random_rois(rng, num, extent):
    """Rois across the map, partly or wholly outside it, inverted, tiny and huge."""
    starts = rng.uniform(-0.3 * extent, 1.1 * extent, (num, 2))
    sizes = rng.uniform(-0.1 * extent, 0.9 * extent, (num, 2))
    rois = np.concatenate([starts, starts + sizes], axis=1)
    rois[0] = [-10 * extent, -10 * extent, 10 * extent, 10 * extent]  # much larger than the map
    rois[1] = [0.3 * extent, 0.2 * extent, 0.3 * extent, 0.2 * extent]  # a point
    return rois.astype(np.float32)


@pytest.fixture(params=["loop", "table"])
def pool_path(request, monkeypatch):
    """roi_pool's two exact implementations: bin-offset loop (small maps), sparse table."""
    if request.param == "table":
        monkeypatch.setattr(roi_ops.pool, "POOL_LOOP_MAX_CELLS", 0)
    return request.param


@pytest.mark.parametrize("output_size,spatial_scale", [(7, 1 / 16), (3, 1 / 8), (2, 1.0)])
def test_roi_pool_matches_reference(output_size, spatial_scale, pool_path):
    rng = np.random.default_rng(output_size)
    features = rng.normal(size=(9, 13, 3)).astype(np.float32)
    features[2:6, 3:9] = 1.5  # a plateau: ties must pick the first maximum
    rois = random_rois(rng, 30, 13 / spatial_scale)
    pool = functools.partial(roi_ops.roi_pool, output_size=output_size, spatial_scale=spatial_scale)
    expected, argmax = ref_roi_pool(features, rois, output_size, spatial_scale)
    np.testing.assert_array_equal(jax.jit(pool)(features, rois), expected)
    # The gradient flows to the kernel's argmax, the first maximum in row-major order.
    grad_out = rng.normal(size=expected.shape).astype(np.float32)
    grad = jax.jit(jax.grad(lambda f: jnp.sum(pool(f, rois) * grad_out)))(features)
    expected_grad = ref_roi_pool_grad(features.shape, argmax, grad_out)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-5)
    # Batched as in the detector: vmap batches the loop and the custom gradient's scatter.
    loss = lambda f: jnp.sum(jax.vmap(pool, (0, None))(f, rois) * grad_out)  # noqa: E731
    grads = jax.jit(jax.grad(loss))(np.stack([features, -features]))
    np.testing.assert_allclose(grads[0], expected_grad, atol=1e-5)
    _, argmax = ref_roi_pool(-features, rois, output_size, spatial_scale)
    expected_grad = ref_roi_pool_grad(features.shape, argmax, grad_out)
    np.testing.assert_allclose(grads[1], expected_grad, atol=1e-5)


def test_roi_pool_hand_cases(pool_path):
    features = np.arange(16, dtype=np.float32).reshape(4, 4, 1)  # value = 4 * row + col
    pool = jax.jit(functools.partial(roi_ops.roi_pool, output_size=2, spatial_scale=1.0))
    # The whole map: rows/cols [0, 4) -> bins [0, 2) and [2, 4); maxima at their bottom right.
    np.testing.assert_array_equal(
        pool(features, np.array([[0, 0, 3, 3]]))[0, ..., 0], [[5, 7], [13, 15]]
    )
    # Partly outside: rows [-2, 2) -> bin 0 is rows [-2, 0) = empty -> 0, bin 1 rows [0, 2).
    np.testing.assert_array_equal(
        pool(features, np.array([[-2, 0, 1, 3]]))[0, ..., 0], [[0, 0], [5, 7]]
    )
    # Wholly outside the map: every bin is empty.
    np.testing.assert_array_equal(pool(features, np.array([[10, 10, 12, 12]])), 0)


def test_roi_pool_bin_edges_are_exact(pool_path):
    rows = np.arange(64, dtype=np.float32)[:, None, None] * np.ones((1, 2, 1), np.float32)
    pool7 = jax.jit(functools.partial(roi_ops.roi_pool, output_size=7, spatial_scale=1.0))
    # 21 rows into 7 bins of exactly 3 rows: rows [3i, 3i + 3). With 21 / 7 computed as
    # 3.0000002 (XLA's reciprocal multiply) ceil would give 3i + 4 and take row 3i + 3.
    out = pool7(rows, np.array([[0, 0, 20, 1]]))
    np.testing.assert_array_equal(out[0, :, 0, 0], [2, 5, 8, 11, 14, 17, 20])
    # 57 rows: ceil(7 * 57 / 7) = 57, the last bin ends at row 56 (torchvision's float32
    # kernel computes 7 * float32(57 / 7) = 57.000004 and would also read row 57).
    out = pool7(rows, np.array([[0, 0, 56, 1]]))
    assert out[0, -1, 0, 0] == 56
    # Coordinates round halves away from zero: 40 / 16 = 2.5 -> 3, 72 / 16 = 4.5 -> 5
    # (round-half-to-even would pool rows 2..4 and give 4).
    out = jax.jit(functools.partial(roi_ops.roi_pool, output_size=1))(
        rows, np.array([[40, 0, 72, 16]])
    )
    assert out[0, 0, 0, 0] == 5


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_roi_pool_accelerator_form_equals_cpu_form(dtype):
    # The CPU form at this map size is the bin loop; accelerators take the sparse table.
    rng = np.random.default_rng(5)
    features = rng.normal(size=(9, 13, 3)).astype(np.float32)
    features[2:6, 3:9] = 1.5  # a plateau: both must pick the first maximum
    features[7:, :4] = -np.inf  # bins whose cells are all -inf still name their first cell
    features = jnp.asarray(features, dtype)
    rois = random_rois(rng, 40, 13 * 16)
    edges = roi_ops.pool._roi_edges(rois, 9, 13, output_size=7, spatial_scale=1 / 16)
    forms = (roi_ops.pool._cpu_bin_maxima, roi_ops.pool._accelerator_bin_maxima)
    (cpu_values, cpu_cells), (values, cells) = (jax.jit(f)(features, edges) for f in forms)
    # Empty bins are zeroed, and get no gradient, after either form; every other bin has
    # the same maximum bit for bit and the same argmax cell, hence the same gradient.
    row_lo, row_hi, col_lo, col_hi = (np.asarray(e) for e in edges)
    full = (row_hi > row_lo)[:, :, None] & (col_hi > col_lo)[:, None, :]  # [R, O, O]
    assert 0 < full.sum() < full.size
    np.testing.assert_array_equal(np.asarray(values)[full], np.asarray(cpu_values)[full])
    np.testing.assert_array_equal(np.asarray(cells)[full], np.asarray(cpu_cells)[full])
    # Lowered for a GPU, roi_pool has no loop; for CPU at this size, the bin loop.
    pool = jax.jit(functools.partial(roi_ops.roi_pool, output_size=7)).trace(features, rois)
    assert "stablehlo.while" not in pool.lower(lowering_platforms=("cuda",)).as_text()
    assert "stablehlo.while" in pool.lower(lowering_platforms=("cpu",)).as_text()


@pytest.fixture(params=["matmul", "gather"])
def align_path(request, monkeypatch):
    """roi_align's two exact implementations: interpolation matrices (small maps), tap gather."""
    if request.param == "gather":
        monkeypatch.setattr(roi_ops.align, "MATMUL_MAX_CELLS", 0)
    return request.param


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio,output_size", [(1, 7), (2, 7), (3, 2)])
def test_roi_align_matches_reference(aligned, sampling_ratio, output_size, align_path):
    rng = np.random.default_rng(sampling_ratio)
    features = rng.normal(size=(9, 13, 3)).astype(np.float32)
    rois = random_rois(rng, 20, 13 * 8)
    kwargs = dict(output_size=output_size, spatial_scale=1 / 8, sampling_ratio=sampling_ratio)
    align = functools.partial(roi_ops.roi_align, aligned=aligned, **kwargs)
    expected = ref_roi_align(features, rois, aligned=aligned, **kwargs)
    # The kernel samples in float32 too: positions in a roi 20x the map's size carry ~1e-5 error.
    np.testing.assert_allclose(jax.jit(align)(features, rois), expected, atol=1e-4)
    grad_out = rng.normal(size=expected.shape)
    grad = jax.jit(jax.grad(lambda f: jnp.sum(align(f, rois) * grad_out)))(features)
    expected_grad = ref_roi_align_grad(features.shape, rois, grad_out, aligned=aligned, **kwargs)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-4)


def test_roi_align_hand_cases(align_path):
    # value = row + 10, linear in y, so bilinear sampling returns the sample's row + 10.
    features = (np.arange(4, dtype=np.float32)[:, None, None] + 10) * np.ones((1, 4, 1))
    align = functools.partial(roi_ops.roi_align, spatial_scale=1.0, aligned=False)
    two = jax.jit(functools.partial(align, output_size=2))
    # Rows [0, 4) in 2 bins with 2 samples each: y = 0.5, 1.5 -> mean 11; y = 2.5 -> 12.5 and
    # y = 3.5, past the last row, clamped to row 3 -> 13: mean 12.75.
    out = two(features, np.array([[0, 0, 4, 4]], np.float32))
    np.testing.assert_allclose(out[0, :, :, 0], [[11, 11], [12.75, 12.75]])
    # aligned=True shifts by half a cell: the same samples come from a roi half a pixel lower.
    aligned = jax.jit(functools.partial(roi_ops.roi_align, output_size=2, spatial_scale=1.0))
    out = aligned(features, np.array([[0.5, 0.5, 4.5, 4.5]]))
    np.testing.assert_allclose(out[0, :, :, 0], [[11, 11], [12.75, 12.75]])
    one = jax.jit(functools.partial(align, output_size=1, sampling_ratio=1))
    # One sample at y = -0.5: inside [-1, H], clamped to row 0 -> 10.
    np.testing.assert_allclose(one(features, np.array([[-1.0, 0, 0, 1]])), 10)
    # y = -2.5 and y = 4.5 fall outside [-1, 4]: the kernels give 0, not the edge row.
    np.testing.assert_allclose(one(features, np.array([[-3.0, 0, -2, 1]])), 0)
    np.testing.assert_allclose(one(features, np.array([[4.0, 0, 5, 1]])), 0)
    # y = 4.0 exactly is still inside (y <= H): clamped to the last row -> 13.
    np.testing.assert_allclose(one(features, np.array([[3.5, 0, 4.5, 1]])), 13)


def test_fpn_levels_hand_cases():
    def box(height, width):
        return [10.0, 20.0, 10.0 + height, 20.0 + width]

    rois = np.array(
        [
            box(112, 112),
            box(224, 224),
            box(8, 8),
            box(2000, 2000),
            box(0, 50),
            box(223.9, 224),
            box(448, 448),
            box(112, 448),
            [np.nan, 0, 5, 5],
        ]
    )
    levels = roi_ops.fpn_levels(rois)
    # 112 -> P3, 224 -> P4, tiny -> P2, huge -> P5, zero area -> P2, just under 224 -> P3,
    # 448 -> P5, 112 x 448 (sqrt area 224) -> P4, NaN -> P2.
    np.testing.assert_array_equal(levels, [3, 4, 2, 5, 2, 3, 5, 4, 2])
    rng = np.random.default_rng(0)
    rois = random_rois(rng, 200, 1000)
    np.testing.assert_array_equal(roi_ops.fpn_levels(rois), [ref_fpn_level(r) for r in rois])


def pyramid(rng, channels=2):
    """P2..P5 of a 128 x 192 image (strides 4..32), plus a P6 that must be ignored."""
    shapes = [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]
    return [rng.normal(size=(h, w, channels)).astype(np.float32) for h, w in shapes]


def test_multilevel_roi_align_matches_reference():
    rng = np.random.default_rng(1)
    levels = pyramid(rng)
    rois = random_rois(rng, 24, 600)  # sides up to 540 px: every level is used
    got = jax.jit(roi_ops.multilevel_roi_align)(levels, rois)
    for n, roi in enumerate(rois):
        k = ref_fpn_level(roi)
        expected = ref_roi_align(levels[k - 2], roi[None], 7, 1 / 2**k)
        np.testing.assert_allclose(got[n], expected[0], atol=1e-5)
    assert {ref_fpn_level(r) for r in rois} == {2, 3, 4, 5}
    with pytest.raises(ValueError, match="needs 4 levels"):
        roi_ops.multilevel_roi_align(levels[:3], rois)
    with pytest.raises(ValueError, match="one stride per level"):
        roi_ops.multilevel_roi_align(levels, rois, strides=(4, 8))


OPS = {
    "roi_pool": functools.partial(roi_ops.roi_pool, output_size=3, spatial_scale=1 / 8),
    "roi_align": functools.partial(roi_ops.roi_align, output_size=3, spatial_scale=1 / 8),
    "multilevel_roi_align": functools.partial(roi_ops.multilevel_roi_align, output_size=3),
}


def op_inputs(name, rng, batch=None):
    lead = () if batch is None else (batch,)
    if name == "multilevel_roi_align":
        features = [rng.normal(size=lead + f.shape).astype(np.float32) for f in pyramid(rng)]
        extent = 600
    else:
        features = rng.normal(size=lead + (6, 7, 2)).astype(np.float32)
        extent = 56
    rois = np.stack([random_rois(rng, 5, extent) for _ in range(batch or 1)])
    return features, rois if batch else rois[0]


@pytest.mark.parametrize("name", list(OPS))
def test_jit_matches_eager_and_vmap_matches_loop(name):
    op = OPS[name]
    rng = np.random.default_rng(2)
    features, rois = op_inputs(name, rng)
    np.testing.assert_allclose(jax.jit(op)(features, rois), op(features, rois), atol=1e-6)
    features, rois = op_inputs(name, rng, batch=3)
    batched = jax.jit(jax.vmap(op))(features, rois)
    for b in range(3):
        image = [f[b] for f in features] if isinstance(features, list) else features[b]
        np.testing.assert_allclose(batched[b], jax.jit(op)(image, rois[b]), atol=1e-6)


def test_roi_align_gradients_finite_at_degenerate_rois(align_path):
    rng = np.random.default_rng(3)
    features = rng.normal(size=(6, 7, 2)).astype(np.float32)
    rois = np.array(
        [
            [8, 8, 8, 40],  # zero height
            [8, 8, 40, 8],  # zero width
            [8, 8, 8, 8],  # a point
            [10, 12, 30, 40],  # identical rois
            [10, 12, 30, 40],
            [40, 50, 20, 10],  # inverted
            [-80, -80, -60, -60],  # outside the map
            [np.nan, 0, 10, 10],  # non-finite: output 0, no gradient
            [0, 0, np.inf, 10],
        ],
        np.float32,
    )
    for aligned in (True, False):
        align = functools.partial(roi_ops.roi_align, spatial_scale=1 / 8, aligned=aligned)
        out = jax.jit(align)(features, rois)
        assert np.isfinite(out).all() and np.all(np.asarray(out)[-2:] == 0)
        loss = lambda f, r, align=align: jnp.sum(jnp.sin(align(f, r)))  # noqa: E731
        grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(features, rois)
        assert all(np.isfinite(g).all() for g in grads)
        assert np.all(np.asarray(grads[1])[-2:] == 0)
    levels = pyramid(rng)
    loss = lambda f, r: jnp.sum(roi_ops.multilevel_roi_align(f, r))  # noqa: E731
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(levels, rois * 8)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    grad = jax.jit(jax.grad(lambda f: jnp.sum(OPS["roi_pool"](f, rois))))(features)
    assert np.isfinite(grad).all()


def test_bfloat16_features():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(6, 7, 2)).astype(np.float32)
    rois = random_rois(rng, 6, 56)
    for op in (jax.jit(OPS["roi_pool"]), jax.jit(OPS["roi_align"])):
        low = op(jnp.asarray(features, jnp.bfloat16), rois)
        assert low.dtype == jnp.bfloat16
        np.testing.assert_allclose(low.astype(np.float32), op(features, rois), atol=0.05)
