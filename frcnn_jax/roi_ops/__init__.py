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

from frcnn_jax.roi_ops.align import fpn_levels, multilevel_roi_align, roi_align
from frcnn_jax.roi_ops.pool import roi_pool

__all__ = ["fpn_levels", "multilevel_roi_align", "roi_align", "roi_pool"]
