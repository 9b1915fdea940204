"""Convolution with a matmul kernel gradient on CPU, for ``nn.Conv(conv_general_dilated=...)``.

Shape shorthand: B batch, H, W input size, OH, OW output size, C input and D output
channels, KH, KW kernel size.

XLA:CPU computes a convolution's kernel gradient as another convolution whose
"kernel" is the whole output gradient, and runs that 4-12x slower than the forward
convolution (measured on 2 cores: a 3x3 conv at 152x256x256 -> 256 takes 258 ms
forward and 1427 ms for the kernel gradient; a 1x1 stride-2 conv at 200x336x256 ->
512, 46 and 381 ms). Written as matmuls,

    dW[i, j] = sum over b, oh, ow of x_padded[b, oh*sh + i, ow*sw + j, :]^T dy[b, oh, ow, :]

it runs at matmul speed: VGG16's forward+backward at 608x1024 went from 7.8 to
5.6 s, ResNet-50-FPN's at 800x1344 from 11.3 to 7.3 s with one matmul per tap
(benchmarks/RESULTS.md). It now runs over blocks of output rows, all taps of a block in one
matmul over its im2col patches (``kernel_grad_matmuls``), so that the output gradient is read
from memory once instead of once per tap, and only one block's patches are alive at a
time. Accelerators keep XLA's
own kernel gradient (cuDNN's is fast), chosen per platform at lowering
(``lax.platform_dependent``). The forward pass and the input gradient are XLA's
everywhere. Frozen layers cost nothing: a symbolic-zero output gradient skips the rule.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_F32_OUT = {"preferred_element_type": jnp.float32}  # accumulate in float32, also for bfloat16
# The only layout handled here; anything else goes to lax.conv_general_dilated unchanged.
_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """``lax.conv_general_dilated``, with the CPU kernel gradient of the module docstring.

    Takes the fast path for 2-D NHWC/HWIO convolutions with explicit non-negative
    padding, no dilation and no groups (every convolution of our models); any other
    call is passed to ``lax.conv_general_dilated`` as is. Same arguments and result.
    """
    plain = functools.partial(
        lax.conv_general_dilated,
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if lhs.ndim == 4 and isinstance(padding, str):  # "SAME" / "VALID" as explicit pairs
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    if (
        lhs.ndim != 4
        or any(lo < 0 or hi < 0 for lo, hi in padding)
        or any(d != 1 for d in (lhs_dilation or (1, 1)))
        or any(d != 1 for d in (rhs_dilation or (1, 1)))
        or feature_group_count != 1
        or batch_group_count != 1
        or preferred_element_type is not None
        or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    ):
        return plain()
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(lhs, rhs, tuple(int(s) for s in window_strides), pads, precision)


# XLA options for our jitted programs on CPU (train step, predict). XLA:CPU hands chains of
# convolutions to YNNPACK as one fusion by default, which ran VGG16's forward at 608x1024 in
# 3.27 s against 2.02 s with XLA's own convolutions (each layer then as fast as torch's oneDNN).
# Single dots, on the other hand, run faster in YNNPACK than in XLA's own kernels where one
# side is wide: VGG16's fc6 over 300 rois ([300, 25088] x [25088, 4096]) in 488 against 728 ms.
# So YNNPACK gets each dot on its own and nothing else: VGG16's train step 1.12x, configs/
# custom.py's 1.04-1.06x, ResNet-50-FPN's unchanged; individual convolutions (0.94x) and
# elementwise fusions (0.85x) in YNNPACK were slower (benchmarks/step_ab.py, RESULTS.md).
COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def compiler_options(platform: str) -> dict[str, str] | None:
    """``jax.jit(compiler_options=...)`` for programs running on ``platform`` ("cpu", "gpu").

    Only CPU programs get :data:`COMPILER_OPTIONS`: an experimental XLA:CPU flag is not
    something to hand another backend's compiler.
    """
    return dict(COMPILER_OPTIONS) if platform == "cpu" else None


# flax's Conv with the CPU kernel gradient; a drop-in for nn.Conv (same parameters and names).
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def torch_padding(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit symmetric padding k // 2, as PyTorch's ``padding=k // 2``.

    ``"SAME"`` pads stride-2 convolutions asymmetrically (more at the end),
    which would break the one-to-one match with torchvision weights.
    """
    return ((k // 2, k // 2), (k // 2, k // 2))


def _xla_conv(x, w, strides, padding, precision):
    return lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=_NHWC, precision=precision
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, precision):
    return _xla_conv(x, w, strides, padding, precision)


def _conv_fwd(x, w, strides, padding, precision):
    # symbolic_zeros=True: x and w arrive as CustomVJPPrimal (value, perturbed).
    x, w = x.value, w.value
    return _xla_conv(x, w, strides, padding, precision), (x, w)


# Rows of im2col patches per block of the kernel gradient, counted in elements
# (B * rows * OW * KH * KW * C): ~1 MB of float32, so that a block's patches and output
# gradient stay in cache while the block's matmul reads them (see kernel_grad_matmuls).
BLOCK_ELEMENTS = 1 << 18


def kernel_grad_matmuls(
    x, dy, *, kernel_size, strides, padding, precision=None, block_elements=BLOCK_ELEMENTS
):
    """The kernel gradient of an NHWC/HWIO convolution as matmuls over blocks of output rows.

    For a block of output rows, the input pixels that every kernel tap met are laid side by
    side (im2col: ``[B * rows * OW, KH * KW * C]``) and multiplied with the block's output
    gradient (``[B * rows * OW, D]``); a scan over blocks sums the products. A block holds
    about ``block_elements`` patch values, so each is read from cache. One matmul per tap
    over the whole image (this function's earlier form) read the output gradient from memory
    KH * KW times and ran 2-3x slower on large layers (VGG16's conv1_2 at 600x1000: 1.77 s
    against 0.70 s; the 7x7 stem of a batch of four 256x352 images: 42 ms against 22 ms).
    A 1x1 kernel has no patches to lay out and stays one matmul.

    Args:
      x: ``[B, H, W, C]`` the convolution's input.
      dy: ``[B, OH, OW, D]`` the gradient of its output.
      kernel_size: (KH, KW).
      strides: (sh, sw).
      padding: ((top, bottom), (left, right)), non-negative.
      block_elements: patch values per block (tests make it small to get many blocks).

    Returns:
      float32 ``[KH, KW, C, D]``, d(sum(y * dy)) / dW.
    """
    (kh, kw), (sh, sw) = kernel_size, strides
    b, h, _, c = x.shape
    oh, ow, d = dy.shape[1:]
    (top, _), (left, right) = padding
    if kh * kw == 1:
        xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
        seen = xp[:, : sh * (oh - 1) + 1 : sh, : sw * (ow - 1) + 1 : sw]
        dw = jnp.einsum("bhwc,bhwd->cd", seen, dy, precision=precision, **_F32_OUT)
        return dw.reshape(1, 1, c, d)
    # Output rows per block, spread evenly over the blocks (the last block pads dy with zero
    # rows, which add nothing).
    rows = max(1, min(oh, block_elements // (b * ow * kh * kw * c)))
    blocks = -(-oh // rows)
    rows = -(-oh // blocks)
    dy = jnp.pad(dy, ((0, 0), (0, blocks * rows - oh), (0, 0), (0, 0)))
    need = sh * (blocks * rows - 1) + kh  # padded input rows the blocks read
    xp = jnp.pad(x, ((0, 0), (top, max(0, need - top - h)), (left, right), (0, 0)))[:, :need]
    window = sh * (rows - 1) + kh  # input rows one block reads

    def block(acc, r):
        xs = lax.dynamic_slice_in_dim(xp, r * rows * sh, window, axis=1)
        taps = [
            lax.slice(
                xs,
                (0, i, j, 0),
                (b, i + sh * (rows - 1) + 1, j + sw * (ow - 1) + 1, c),
                (1, sh, sw, 1),
            )
            for i in range(kh)
            for j in range(kw)
        ]  # each [B, rows, OW, C]: the pixels tap (i, j) met
        patches = jnp.concatenate(taps, axis=-1).reshape(-1, kh * kw * c)
        grad = lax.dynamic_slice_in_dim(dy, r * rows, rows, axis=1).reshape(-1, d)
        return acc + jnp.dot(patches.T, grad, precision=precision, **_F32_OUT), None

    zero = jnp.zeros((kh * kw * c, d), jnp.float32)
    return lax.scan(block, zero, jnp.arange(blocks))[0].reshape(kh, kw, c, d)


def kernel_grad_xla(x, w, dy, *, strides, padding, precision=None):
    """XLA's own kernel gradient (the accelerators' path); same arguments as the matmuls'."""
    _, kernel_vjp = jax.vjp(lambda w: _xla_conv(x, w, strides, padding, precision), w)
    return kernel_vjp(dy)[0]


def _conv_bwd(strides, padding, precision, residuals, dy):
    if isinstance(dy, jax.custom_derivatives.SymbolicZero):
        # Frozen layers (a stop_gradient downstream): no work, and the residuals are dropped.
        return None, None
    x, w = residuals
    _, input_vjp = jax.vjp(lambda x: _xla_conv(x, w, strides, padding, precision), x)
    (dx,) = input_vjp(dy)
    options = {"strides": strides, "padding": padding, "precision": precision}

    def matmuls(x, dy):
        return kernel_grad_matmuls(x, dy, kernel_size=w.shape[:2], **options).astype(w.dtype)

    dw = lax.platform_dependent(
        x, dy, cpu=matmuls, default=lambda x, dy: kernel_grad_xla(x, w, dy, **options)
    )
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd, symbolic_zeros=True)
