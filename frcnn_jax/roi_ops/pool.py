"""RoIPool on one image (Fast R-CNN's max pooling over roi bins), torchvision's CPU kernel.

Shape shorthand: R rois, H, W, C one feature map, O output_size.

Rois are float ``[R, 4]`` (ymin, xmin, ymax, xmax) in absolute pixels of the (resized) input
image; ``spatial_scale`` maps them onto the feature map. Nothing of size ``[R, O, H, W, C]`` is
formed: on CPU the pool loops over the cells of each roi's bins (large maps: a sparse table of
column maxima); accelerators always take the sparse table, which has no loop (chosen at
lowering, ``lax.platform_dependent``). Both give the same values and argmax cells.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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


def _roi_edges(rois, height, width, *, output_size, spatial_scale):
    """(row_lo, row_hi, col_lo, col_hi), int32 ``[R, O]`` each: every bin's clipped cells."""
    scaled = _round_half_away(jnp.asarray(rois, jnp.float32) * spatial_scale)
    corners = jnp.clip(jnp.nan_to_num(scaled), -_COORD_LIMIT, _COORD_LIMIT).astype(jnp.int32)
    row_lo, row_hi = _pool_edges(corners[:, 0], corners[:, 2], height, output_size)
    col_lo, col_hi = _pool_edges(corners[:, 1], corners[:, 3], width, output_size)
    return row_lo, row_hi, col_lo, col_hi


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


def _cpu_bin_maxima(features, edges):
    height, width, _ = features.shape
    if height * width <= POOL_LOOP_MAX_CELLS:
        return _bin_loop_maxima(features, *edges)
    return _sparse_table_maxima(features, *edges)


def _accelerator_bin_maxima(features, edges):
    # No loop in the program: the bin loop's R x (largest bin) sequential steps (128 x ~50
    # for a VGG16 training step) would each cost a kernel launch on an accelerator.
    return _sparse_table_maxima(features, *edges)


def _bin_maxima(features, edges):
    """Bin maxima and their first cells ``[R, O, O, C]``, the form chosen per platform."""
    return jax.lax.platform_dependent(
        features, edges, cpu=_cpu_bin_maxima, default=_accelerator_bin_maxima
    )


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

    Exact for any roi and never forms ``[R, O, O, H, W, C]``: on CPU, maps of at
    most POOL_LOOP_MAX_CELLS cells loop over the offsets of each roi's bins,
    larger maps use a sparse table of column maxima; accelerators always use the
    table (costs at the helpers).

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
    row_lo, row_hi, col_lo, col_hi = _roi_edges(
        rois, height, width, output_size=output_size, spatial_scale=spatial_scale
    )
    pooled = _pool_bins(features, (row_lo, row_hi, col_lo, col_hi))
    empty = (row_hi <= row_lo)[:, :, None] | (col_hi <= col_lo)[:, None, :]  # [R, O, O]
    return jnp.where(empty[..., None], 0, pooled).astype(features.dtype)
