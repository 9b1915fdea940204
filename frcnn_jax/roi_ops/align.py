"""RoIAlign and FPN multi-level RoIAlign on one image, torchvision's CPU kernel.

Shape shorthand: R rois, H, W, C one feature map, O output_size, S sampling_ratio,
L pyramid levels, N cells of all levels together.

Rois are float ``[R, 4]`` (ymin, xmin, ymax, xmax) in absolute pixels of the (resized) input
image. Each bin's (2S)^2 bilinear taps are gathered as C-vectors (costs in the docstrings,
timings in benchmarks/roi_bench.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from frcnn_jax import boxes as box_lib


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
    areas = box_lib.area(jnp.asarray(rois, jnp.float32))
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
