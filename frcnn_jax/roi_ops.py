"""RoI feature extraction on one image: RoIPool, RoIAlign and FPN multi-level RoIAlign.

Rois are float ``[R, 4]`` (ymin, xmin, ymax, xmax) in absolute pixels of the
(resized) input image; ``spatial_scale`` maps them onto the feature map (1/16
for a stride-16 backbone). Features are channels-last ``[H, W, C]``. Every
function works on one image, is ``jax.jit``-able and ``jax.vmap``-able
(batching over images is ``jax.vmap``) and returns ``[R, O, O, C]``.

Shape shorthand: R rois, H, W, C one feature map, O output_size,
S sampling_ratio, L pyramid levels, N cells of all levels together.

Semantics are those of torchvision's compiled CPU kernels
(``torchvision/csrc/ops/cpu/roi_pool_kernel.cpp``, ``roi_align_kernel.cpp``),
which tests/test_roi_ops.py mirrors loop by loop in NumPy. Nothing of size
``[R, O, H, W, C]`` is formed: roi_pool loops over the cells of each roi's
bins (large maps: a sparse table of column maxima), roi_align gathers the
(2S)^2 bilinear taps of each bin as C-vectors (costs in the docstrings,
timings in benchmarks/roi_bench.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from frcnn_jax import boxes as boxes_lib

# roi_pool converts scaled coordinates to int32; clipping them here keeps the
# integer bin arithmetic, (i + 1) * roi_size, far from overflow for any output
# size < 1000 while lying far outside any feature map.
_COORD_LIMIT = 2**20


def _round_half_away(x):
    """C's round(): halves away from zero (jnp.round rounds them to even)."""
    magnitude = jnp.abs(x)
    whole = jnp.floor(magnitude)
    return jnp.sign(x) * (whole + (magnitude - whole >= 0.5))


def _merge(best_values, best_cells, values, cells):
    """Running argmax that keeps the first maximum in row-major (flat cell) order."""
    take = (values > best_values) | ((values == best_values) & (cells < best_cells))
    return jnp.where(take, values, best_values), jnp.where(take, cells, best_cells)


def _sparse_table(values, cells):
    """Max (and its first cell) of ``[w, w + 2^k)`` for every level k and column w.

    ``values``/``cells`` are ``[W, H, C]``; returns both as ``[K * W, H, C]``
    (row ``k * W + w``). Entries whose window crosses the end are never read.
    """
    width = values.shape[0]
    levels = [(values, cells)]
    while 2 ** len(levels) <= width:
        shift = 2 ** (len(levels) - 1)
        pad = ((0, shift), (0, 0), (0, 0))
        values = jnp.pad(values[shift:], pad, constant_values=-jnp.inf)
        cells = jnp.pad(cells[shift:], pad)
        levels.append(_merge(*levels[-1], values, cells))
        values, cells = levels[-1]
    return tuple(jnp.concatenate(parts) for parts in zip(*levels))


def _pool_edges(start, end, size, output_size):
    """Clipped bin edges ``[R, O]`` of torchvision's RoIPool along one axis.

    The kernel computes floor(i * roi_size / O) and ceil((i + 1) * roi_size / O)
    in floating point; we use exact integer arithmetic because XLA on CPU turns
    the division by the constant O into a multiplication by 1/O (21 / 7 gives
    3.0000002, whose ceil adds a row to the bin).
    """
    roi_size = jnp.maximum(end - start + 1, 1)[:, None]  # malformed rois become 1 cell
    i = jnp.arange(output_size, dtype=jnp.int32)
    lo = (i * roi_size) // output_size
    hi = -((-(i + 1) * roi_size) // output_size)
    return jnp.clip(lo + start[:, None], 0, size), jnp.clip(hi + start[:, None], 0, size)


# Maps of at most this many cells take roi_pool's bin loop (below), whose time
# grows with the largest bin of each roi; bigger maps take the sparse table,
# whose time grows with the map. At VGG16's 38 x 63 with rois inside the image
# (proposals are clipped to it) the loop is ~25x faster forward, ~10x with the
# gradient (benchmarks/roi_bench.py); a roi far larger than the map, one bin
# covering it all, costs H * W steps (~15x slower than the table), which this
# constant bounds.
POOL_LOOP_MAX_CELLS = 4096


def _bin_loop_maxima(features, row_lo, row_hi, col_lo, col_hi):
    """Bin maxima and their first cells ``[R, O, O, C]`` by a loop over bin offsets.

    For each roi, step k visits offset ``(k // U, k % U)`` of every bin (U the
    roi's widest bin): row-major within each bin, so strict ``>`` keeps the
    first maximum. The steps are as many as the roi's largest bin has cells.
    """
    height, width, _ = features.shape

    def per_roi(edges):
        row_lo, row_hi, col_lo, col_hi = edges  # [O] each
        col_span = jnp.maximum(jnp.max(col_hi - col_lo), 1)
        num_steps = jnp.max(row_hi - row_lo) * col_span

        def step(state):
            k, best_values, best_cells = state
            rows, cols = row_lo + k // col_span, col_lo + k % col_span  # [O]
            inside = (rows < row_hi)[:, None, None] & (cols < col_hi)[None, :, None]
            rows, cols = jnp.minimum(rows, height - 1), jnp.minimum(cols, width - 1)
            values = features[rows[:, None], cols[None, :]]  # [O, O, C]
            # Step 0 is every non-empty bin's first cell: it seeds the bin even at -inf.
            take = inside & ((k == 0) | (values > best_values))
            cells = (rows[:, None] * width + cols[None, :])[..., None]
            return k + 1, jnp.where(take, values, best_values), jnp.where(take, cells, best_cells)

        shape = (row_lo.shape[0], col_lo.shape[0], features.shape[-1])
        init = (0, jnp.full(shape, -jnp.inf, features.dtype), jnp.zeros(shape, jnp.int32))
        _, values, cells = jax.lax.while_loop(lambda state: state[0] < num_steps, step, init)
        return values, cells

    return jax.lax.map(per_roi, (row_lo, row_hi, col_lo, col_hi))


def _sparse_table_maxima(features, row_lo, row_hi, col_lo, col_hi):
    """Bin maxima and their first cells ``[R, O, O, C]`` from a sparse table of columns.

    The table gives each column bin's max on every row (two lookups), then a
    masked pass over the H rows takes each bin's max: work ``R * O * H * C * (4
    + O)`` plus the ``log2(W) * H * W * C`` table, whatever the rois.
    """
    height, width, channels = features.shape
    columns = jnp.transpose(features, (1, 0, 2))  # [W, H, C]
    cells = jnp.arange(height * width, dtype=jnp.int32).reshape(height, width).T[..., None]
    table_values, table_cells = _sparse_table(columns, jnp.broadcast_to(cells, columns.shape))
    spans = jnp.maximum(col_hi - col_lo, 1)  # [R, O]
    level = sum((spans >= 2**k).astype(jnp.int32) for k in range(1, width.bit_length()))
    first = jnp.minimum(level * width + col_lo, table_values.shape[0] - 1)
    last = jnp.maximum(level * width + col_hi - 2**level, 0)
    # Each column bin's max on every row: [R, O (columns), H, C].
    profile = _merge(table_values[first], table_cells[first], table_values[last], table_cells[last])

    best_values = jnp.full((*row_lo.shape, col_lo.shape[1], channels), -jnp.inf, features.dtype)
    best_cells = jnp.zeros(best_values.shape, jnp.int32)  # [R, O (rows), O (columns), C]
    for row in range(height):  # ascending rows: strict > keeps the first maximum
        in_bin = ((row_lo <= row) & (row < row_hi))[:, :, None, None]
        first_row = (row_lo == row)[:, :, None, None]  # seeds the bin even if all are -inf
        values, cells = profile[0][:, None, :, row], profile[1][:, None, :, row]
        take = in_bin & (first_row | (values > best_values))
        best_values = jnp.where(take, values, best_values)
        best_cells = jnp.where(take, cells, best_cells)
    return best_values, best_cells


def _bin_maxima(features, edges):
    height, width, _ = features.shape
    if height * width <= POOL_LOOP_MAX_CELLS:
        return _bin_loop_maxima(features, *edges)
    return _sparse_table_maxima(features, *edges)


@jax.custom_vjp
def _pool_bins(features, edges):
    """Max of ``features`` ``[H, W, C]`` over each bin of ``edges`` (4 x int32 ``[R, O]``).

    A custom rule because the gradient is one scatter-add of the output
    gradient to the saved argmax cells, where autodiff of a gather at those
    cells was ~10x slower on CPU.
    """
    return _bin_maxima(features, edges)[0]


def _pool_bins_fwd(features, edges):
    values, cells = _bin_maxima(features, edges)
    return values, (features, cells)


def _pool_bins_bwd(residuals, grad):
    features, cells = residuals
    height, width, channels = features.shape
    grad_flat = jnp.zeros((height * width, channels), jnp.float32)
    grad_flat = grad_flat.at[cells, jnp.arange(channels)].add(grad, mode="drop")
    return grad_flat.reshape(features.shape).astype(features.dtype), None


_pool_bins.defvjp(_pool_bins_fwd, _pool_bins_bwd)


def roi_pool(features, rois, *, output_size: int = 7, spatial_scale: float = 1.0 / 16):
    """Max pooling of each roi into ``O x O`` bins (Fast R-CNN / torchvision RoIPool).

    Roi coordinates are scaled and rounded (halves away from zero), a roi spans
    ``max(end - start + 1, 1)`` cells, bin i covers ``[floor(i * size / O),
    ceil((i + 1) * size / O))`` cells from its start, clipped to the map; an
    empty bin gives 0. The gradient flows to the first maximum of each bin
    (row-major order), as the kernel's argmax does; rois get no gradient.

    Exact for any roi and never forms ``[R, O, O, H, W, C]``: maps of at most
    POOL_LOOP_MAX_CELLS cells loop over the offsets of each roi's bins, larger
    maps use a sparse table of column maxima (costs at the helpers).

    Args:
      features: float ``[H, W, C]``; a NaN gives unspecified values in its bins.
      rois: float ``[R, 4]`` (ymin, xmin, ymax, xmax) input-image pixels; any
        values (outside the map, inverted, non-finite -> 0) are defined.
      output_size: O, bins per side.
      spatial_scale: feature-map cells per input pixel.

    Returns:
      ``[R, O, O, C]`` of ``features.dtype``.
    """
    features = jnp.asarray(features)
    height, width, _ = features.shape
    scaled = _round_half_away(jnp.asarray(rois, jnp.float32) * spatial_scale)
    corners = jnp.clip(jnp.nan_to_num(scaled), -_COORD_LIMIT, _COORD_LIMIT).astype(jnp.int32)
    row_lo, row_hi = _pool_edges(corners[:, 0], corners[:, 2], height, output_size)
    col_lo, col_hi = _pool_edges(corners[:, 1], corners[:, 3], width, output_size)
    pooled = _pool_bins(features, (row_lo, row_hi, col_lo, col_hi))
    empty = (row_hi <= row_lo)[:, :, None] | (col_hi <= col_lo)[:, None, :]  # [R, O, O]
    return jnp.where(empty[..., None], 0, pooled).astype(features.dtype)


def _sample_axis(start, bin_size, size, output_size, sampling_ratio):
    """Bilinear taps ``[R, O, 2S]`` (int32 cells, float32 weights) along one axis.

    torchvision's pre_calc_for_bilinear_interpolate: a sample outside
    ``[-1, size]`` (or NaN) weighs 0; otherwise it is clamped to ``[0, size - 1]``
    and splits between its low and high neighbour. ``start``, ``bin_size`` and
    ``size`` are ``[R]``.
    """
    bins = jnp.arange(output_size, dtype=jnp.float32)[:, None]
    offsets = (jnp.arange(sampling_ratio, dtype=jnp.float32) + 0.5)[None, :]
    bin_size = bin_size[:, None, None]
    pos = start[:, None, None] + bins * bin_size + offsets * bin_size / sampling_ratio  # [R, O, S]
    size = size[:, None, None]
    inside = (pos >= -1.0) & (pos <= size.astype(jnp.float32))
    pos = jnp.maximum(jnp.where(inside, pos, 0.0), 0.0)
    low = jnp.floor(pos).astype(jnp.int32)
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    frac = jnp.where(at_end, 0.0, pos - low)
    cells = jnp.stack([low, high], axis=-1)
    weights = jnp.where(inside[..., None], jnp.stack([1.0 - frac, frac], axis=-1), 0.0)
    return cells.reshape(*pos.shape[:2], -1), weights.reshape(*pos.shape[:2], -1)


@jax.custom_vjp
def _weighted_gather(flat, taps, weights):
    """``sum_k weights[:, k] * flat[taps[:, k]]``: ``[N, C]``, ``[M, K]``, ``[M, K]`` -> ``[M, C]``.

    Evaluated as K gathers that XLA fuses into one pass without intermediates.
    Under differentiation XLA would materialise each of them anyway, so the
    forward rule gathers ``[M, K, C]`` once and the backward rule scatters once
    (about 3x faster on CPU at benchmarks/roi_bench.py's sizes than autodiff).
    """
    out = 0.0
    for k in range(taps.shape[1]):
        out = out + weights[:, k, None] * flat.at[taps[:, k]].get(mode="clip")
    return out


def _weighted_gather_fwd(flat, taps, weights):
    gathered = flat.at[taps].get(mode="clip")  # [M, K, C]
    return jnp.einsum("mk,mkc->mc", weights, gathered), (flat, taps, weights, gathered)


def _weighted_gather_bwd(residuals, grad):
    flat, taps, weights, gathered = residuals
    updates = (weights[:, :, None] * grad[:, None, :]).reshape(-1, flat.shape[-1])
    grad_flat = jnp.zeros(flat.shape, grad.dtype).at[taps.reshape(-1)].add(updates, mode="drop")
    grad_weights = jnp.einsum("mc,mkc->mk", grad, gathered)
    return grad_flat.astype(flat.dtype), None, grad_weights


_weighted_gather.defvjp(_weighted_gather_fwd, _weighted_gather_bwd)


def _roi_align_levels(flat, rois, level, shapes, scales, output_size, sampling_ratio, aligned):
    """RoIAlign of roi r on map ``level[r]`` (``shapes[l]``, ``scales[l]``) stored in ``flat``.

    ``flat`` is ``[N, C]``: the maps flattened row-major one after the other.
    """
    sizes = [height * width for height, width in shapes]

    def per_roi(values, dtype):
        return jnp.asarray(values, dtype)[level]  # [R]

    heights = per_roi([height for height, _ in shapes], jnp.int32)
    widths = per_roi([width for _, width in shapes], jnp.int32)
    offsets = per_roi([sum(sizes[:i]) for i in range(len(shapes))], jnp.int32)
    scaled = jnp.asarray(rois, jnp.float32) * per_roi(scales, jnp.float32)[:, None]
    scaled = scaled - (0.5 if aligned else 0.0)  # [R, 4]
    roi_heights = scaled[:, 2] - scaled[:, 0]
    roi_widths = scaled[:, 3] - scaled[:, 1]
    if not aligned:  # the kernel forces malformed rois to 1 x 1 cells
        roi_heights = jnp.maximum(roi_heights, 1.0)
        roi_widths = jnp.maximum(roi_widths, 1.0)
    args = (output_size, sampling_ratio)
    rows, row_weights = _sample_axis(scaled[:, 0], roi_heights / output_size, heights, *args)
    cols, col_weights = _sample_axis(scaled[:, 1], roi_widths / output_size, widths, *args)
    taps = (
        offsets[:, None, None, None, None]
        + cols[:, None, :, None, :]
        + rows[:, :, None, :, None] * widths[:, None, None, None, None]
    )  # [R, O, O, 2S, 2S]
    # The kernel averages the S x S samples of a bin: fold 1 / S^2 into the weights.
    weights = row_weights[:, :, None, :, None] * col_weights[:, None, :, None, :]
    num_bins = rois.shape[0] * output_size**2
    pooled = _weighted_gather(
        flat, taps.reshape(num_bins, -1), weights.reshape(num_bins, -1) / sampling_ratio**2
    )
    return pooled.reshape(rois.shape[0], output_size, output_size, flat.shape[-1])


def roi_align(
    features,
    rois,
    *,
    output_size: int = 7,
    spatial_scale: float,
    sampling_ratio: int = 2,
    aligned: bool = True,
):
    """Bilinear RoIAlign (Mask R-CNN; torchvision's roi_align for a fixed sampling_ratio).

    Each of the O x O bins averages S x S bilinear samples. ``aligned=True``
    shifts the scaled roi by -0.5 cell (pixel centres); ``aligned=False`` forces
    roi sizes >= 1 cell. A sample outside ``[-1, H] x [-1, W]`` contributes 0,
    one inside is clamped to the map, as in the compiled kernels.

    Args:
      features: float ``[H, W, C]`` (any float dtype; accumulation is float32).
      rois: float ``[R, 4]`` (ymin, xmin, ymax, xmax) input-image pixels.
      output_size: O, bins per side.
      spatial_scale: feature-map cells per input pixel.
      sampling_ratio: S > 0, samples per bin side.
      aligned: half-pixel offset, see above.

    Returns:
      ``[R, O, O, C]`` of ``features.dtype``. Gradients (reverse mode) w.r.t.
      features and rois are finite for any rois, degenerate ones included
      (non-finite rois give 0 and no gradient).
    """
    features = jnp.asarray(features)
    height, width, channels = features.shape
    if height * width <= MATMUL_MAX_CELLS:
        return _roi_align_matmul(
            features, rois, output_size, spatial_scale, sampling_ratio, aligned
        ).astype(features.dtype)
    level = jnp.zeros(rois.shape[:1], jnp.int32)
    options = (output_size, sampling_ratio, aligned)
    flat = features.reshape(-1, channels)
    pooled = _roi_align_levels(flat, rois, level, [(height, width)], [spatial_scale], *options)
    return pooled.astype(features.dtype)


# Maps of at most this many cells (VGG16's 38 x 63 at 600 x 1000 is 2394) take
# the interpolation-matrix path of roi_align: it costs R*O*H*W*C multiply-adds,
# under 1% of a VGG16 step, but runs as two dense matmuls forward and backward,
# where the tap gather's scatter-add gradient is slow (3-10x on CPU).
MATMUL_MAX_CELLS = 4096


def _interpolation_matrix(cells, weights, size):
    """``[R, O, size]``: each bin's average bilinear weight on each cell of one axis."""
    one_hot = cells[..., None] == jnp.arange(size)  # [R, O, 2S, size]
    return jnp.einsum("rok,roks->ros", weights, one_hot.astype(weights.dtype))


def _roi_align_matmul(features, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """roi_align as ``A_r F B_r^T`` per channel, A and B the separable bin weights.

    The kernel's bin value is the mean of S x S samples whose bilinear weights
    (and out-of-range zeroing) factor into a row part and a column part, so the
    bin is ``sum_h sum_w A[h] B[w] F[h, w]`` with A, B averaging S samples each.
    """
    height, width, _ = features.shape
    scaled = jnp.asarray(rois, jnp.float32) * spatial_scale - (0.5 if aligned else 0.0)
    roi_heights = scaled[:, 2] - scaled[:, 0]
    roi_widths = scaled[:, 3] - scaled[:, 1]
    if not aligned:  # the kernel forces malformed rois to 1 x 1 cells
        roi_heights = jnp.maximum(roi_heights, 1.0)
        roi_widths = jnp.maximum(roi_widths, 1.0)
    num_rois = rois.shape[0]
    args = (output_size, sampling_ratio)
    rows = _sample_axis(
        scaled[:, 0], roi_heights / output_size, jnp.full((num_rois,), height, jnp.int32), *args
    )
    cols = _sample_axis(
        scaled[:, 1], roi_widths / output_size, jnp.full((num_rois,), width, jnp.int32), *args
    )
    row_matrix = _interpolation_matrix(*rows, height) / sampling_ratio  # [R, O, H]
    col_matrix = _interpolation_matrix(*cols, width) / sampling_ratio  # [R, O, W]
    partial = jnp.einsum("rih,hwc->riwc", row_matrix, features.astype(jnp.float32))
    return jnp.einsum("riwc,rjw->rijc", partial, col_matrix)  # [R, O, O, C]


def fpn_levels(
    rois,
    *,
    min_level: int = 2,
    max_level: int = 5,
    canonical_size: float = 224,
    canonical_level: int = 4,
):
    """FPN level of each roi: ``floor(k0 + log2(sqrt(h * w) / s0))`` clamped to the levels.

    The seed's rule (FPN paper, eq. 1): a 224 x 224 roi lands on P4, 112 x 112
    on P3. Evaluated as area thresholds, ``level >= j`` iff ``h * w >= (s0 *
    2^(j - k0))^2``, which is exact at the powers of two where log2 would round
    either way; zero-area and non-finite rois get ``min_level``.

    Args:
      rois: float ``[R, 4]`` (ymin, xmin, ymax, xmax) input-image pixels.

    Returns:
      int32 ``[R]`` in ``[min_level, max_level]``.
    """
    areas = boxes_lib.area(jnp.asarray(rois, jnp.float32))
    levels = jnp.full(areas.shape, min_level, jnp.int32)
    for level in range(min_level + 1, max_level + 1):
        threshold = (canonical_size * 2.0 ** (level - canonical_level)) ** 2
        levels = levels + (areas >= threshold).astype(jnp.int32)
    return levels


def multilevel_roi_align(
    features_by_level: Sequence,
    rois,
    *,
    output_size: int = 7,
    sampling_ratio: int = 2,
    aligned: bool = True,
    min_level: int = 2,
    max_level: int = 5,
    canonical_size: float = 224,
    canonical_level: int = 4,
    strides: Sequence[int] | None = None,
):
    """RoIAlign of each roi on its FPN level (``fpn_levels``), at scale 1 / stride.

    Fixed shapes without computing every roi on every level: the levels are
    flattened into one ``[N, C]`` table and each roi's taps are offset to its
    level, so the cost is one roi_align (R=512, C=256: 512 x 49 x 16 C-vectors)
    plus one copy of the pyramid, instead of L roi_aligns and a select.

    Args:
      features_by_level: sequence of float ``[H_l, W_l, C]`` from P{min_level}
        upward; levels beyond ``max_level`` (e.g. P6 for the RPN) are ignored.
      rois: float ``[R, 4]`` (ymin, xmin, ymax, xmax) input-image pixels.
      output_size, sampling_ratio, aligned: as in ``roi_align``.
      min_level, max_level, canonical_size, canonical_level: as in ``fpn_levels``.
      strides: input pixels per cell of each used level; default 2**level.

    Returns:
      ``[R, O, O, C]`` of the dtype of the levels.
    """
    num_levels = max_level - min_level + 1
    levels = [jnp.asarray(f) for f in list(features_by_level)[:num_levels]]
    if len(levels) < num_levels:
        raise ValueError(
            f"multilevel_roi_align needs {num_levels} levels "
            f"(P{min_level}..P{max_level}), got {len(levels)}"
        )
    if strides is None:
        strides = [2**level for level in range(min_level, max_level + 1)]
    if len(strides) != num_levels:
        raise ValueError(
            f"strides={tuple(strides)} must give one stride per level P{min_level}..P{max_level}"
        )
    kwargs = dict(canonical_size=canonical_size, canonical_level=canonical_level)
    level = fpn_levels(rois, min_level=min_level, max_level=max_level, **kwargs) - min_level
    flat = jnp.concatenate([f.reshape(-1, f.shape[-1]) for f in levels])  # [N, C]
    shapes = [f.shape[:2] for f in levels]
    scales = [1.0 / stride for stride in strides]
    options = (output_size, sampling_ratio, aligned)
    return _roi_align_levels(flat, rois, level, shapes, scales, *options).astype(flat.dtype)
