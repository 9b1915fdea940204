"""Convolutions made fast on CPU, for ``nn.Conv(conv_general_dilated=...)``: Winograd 3x3 layers
and a matmul kernel gradient.

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
(``lax.platform_dependent``). Frozen layers cost nothing: a symbolic-zero output gradient
skips the rule.

3x3 stride-1 convolutions with at least ``WINOGRAD_MIN_CHANNELS`` input and output channels
(VGG16's conv2_2 to conv5_3; in ResNet-50-FPN the 3x3 convolutions of stages 2-4 except each
stage's strided first one, and the FPN and RPN 3x3 convolutions) go further on CPU:
their forward pass, input gradient and kernel gradient all use Winograd's minimal filtering
F(2x2, 3x3) (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016):
each 2x2 block of outputs comes from a 4x4 input tile by 16 products instead of 36, so the
matmuls (a batched ``[16, tiles, C] x [16, C, D]``) do 2.25x fewer flops, and the tile
transforms are additions and halvings that XLA fuses. Measured alone against the direct forms
(XLA's convolutions, the matmul kernel gradient; benchmarks/conv_ab.py, RESULTS.md): forward
1.3-1.6x, input gradient 1.4-1.6x and kernel gradient 1.7-2.2x faster at 256-512 channels;
VGG16's train step 1.50x, ResNet-50-FPN's 1.34x. Results differ from the direct convolution
only by float32 rounding (the transforms' coefficients are 0, +-1 and +-1/2). Below 128
channels the transforms cost more than the saved flops (64 channels: slower), so those
layers keep XLA's convolution. Everything else (strides, other kernels, bfloat16) is XLA's
forward and input gradient with the matmul kernel gradient above. ONNX export traces
under :func:`xla_convolutions`, so its graphs hold plain ``Conv`` nodes.
"""

from __future__ import annotations

import contextlib
import contextvars
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


# Winograd F(2x2, 3x3): Y = A^T [(G g G^T) * (B^T d B)] A for a 4x4 input tile d, a 3x3
# kernel g and a 2x2 output tile Y (Lavin and Gray 2016, section 4.1).
_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_AT = ((1, 1, 1, 0), (0, 1, -1, -1))

# Input and output channels from which the CPU runs 3x3 stride-1 convolutions by Winograd.
WINOGRAD_MIN_CHANNELS = 128
_WINOGRAD = contextvars.ContextVar("frcnn_jax_winograd", default=True)


@contextlib.contextmanager
def xla_convolutions():
    """Within it, convolutions traced are XLA's own on every platform (no Winograd form).

    For exports to runtimes with their own convolution kernels (ONNX); read when a
    convolution is traced, so wrap the tracing (``jax.make_jaxpr``, ``.lower``), not a call
    of an already compiled function.
    """
    token = _WINOGRAD.set(False)
    try:
        yield
    finally:
        _WINOGRAD.reset(token)


def _combine(coefficients, terms):
    """sum(a * t for a, t in zip(coefficients, terms)), as adds and subtracts where a = +-1."""
    total = None
    for a, t in zip(coefficients, terms, strict=True):
        if a == 0:
            continue
        t = t if a == 1 else -t if a == -1 else a * t
        total = t if total is None else total + t
    return total


def _winograd_tiles(x):
    """The 4x4 tiles' transforms B^T d B: ``[16, B * TH * TW, C]``, and (TH, TW).

    Tile (t, u) is rows 2t .. 2t + 3 and columns 2u .. 2u + 3 of ``x`` padded by one pixel
    (and at the bottom and right up to whole tiles); TH, TW = ceil(H / 2), ceil(W / 2).
    """
    b, h, w, c = x.shape
    th, tw = -(-h // 2), -(-w // 2)
    xp = jnp.pad(x, ((0, 0), (1, 2 * th + 1 - h), (1, 2 * tw + 1 - w), (0, 0)))
    # Element s of every tile along an axis: s, s + 2, ..., s + 2 * (count - 1).
    rows = [lax.slice_in_dim(xp, s, s + 2 * th - 1, stride=2, axis=1) for s in range(4)]
    out = []
    for bt_row in _BT:
        r = _combine(bt_row, rows)  # [B, TH, 2 * TW + 2, C]
        cols = [lax.slice_in_dim(r, s, s + 2 * tw - 1, stride=2, axis=2) for s in range(4)]
        out.extend(_combine(bt_col, cols) for bt_col in _BT)
    return jnp.stack(out).reshape(16, b * th * tw, c), (th, tw)


def winograd_conv(x, w, precision=None):
    """3x3 convolution, stride 1, padding 1, NHWC/HWIO, by Winograd F(2x2, 3x3).

    Equals ``lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), NHWC)`` up to float32
    rounding: the tiles' transforms (``[16, tiles, C]``) times the kernel's (``[16, C, D]``),
    one batched matmul, then each 2x2 output tile A^T m A.
    """
    b, h, wd, _ = x.shape
    c, d = w.shape[2:]
    v, (th, tw) = _winograd_tiles(x)
    g = jnp.asarray(_G, w.dtype)
    u = jnp.einsum("ik,klcd,jl->ijcd", g, w, g, precision=precision).reshape(16, c, d)
    m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))), precision=precision, **_F32_OUT)
    m = m.reshape(4, 4, b, th, tw, d)
    # Output pixel (i, j) of every tile: sum over l of t[i][l] A^T[j, l], where t[i][l] is sum
    # over k of A^T[i, k] m[k, l].
    t = [[_combine(at_i, [m[k, l] for k in range(4)]) for l in range(4)] for at_i in _AT]
    y = jnp.stack([jnp.stack([_combine(at_j, t_i) for at_j in _AT], axis=3) for t_i in t], axis=2)
    # y: [B, TH, 2 (i), TW, 2 (j), D]
    return y.reshape(b, 2 * th, 2 * tw, d)[:, :h, :wd].astype(x.dtype)


def winograd_input_grad(dy, w, precision=None):
    """The input gradient of :func:`winograd_conv`: the same convolution of ``dy`` with the
    kernel flipped in space and its channels swapped."""
    return winograd_conv(dy, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2), precision)


def winograd_kernel_grad(x, dy, precision=None):
    """The kernel gradient of :func:`winograd_conv`, float32 ``[3, 3, C, D]``.

    The adjoint of its steps in reverse: each output tile's gradient to the 16 products
    (A dY A^T), the products' gradient summed over tiles against the input tiles' transforms
    (a batched ``[16, C, tiles] x [16, tiles, D]`` matmul), then back through the kernel's
    transform (G^T dU G).
    """
    b, h, wd, _ = x.shape
    d = dy.shape[-1]
    v, (th, tw) = _winograd_tiles(x)
    dyp = jnp.pad(dy, ((0, 0), (0, 2 * th - h), (0, 2 * tw - wd), (0, 0)))
    dyp = dyp.reshape(b, th, 2, tw, 2, d)
    a = tuple(zip(*_AT, strict=True))  # A = (A^T)^T, [4, 2]
    # dM[k, l] = sum over i of A[k, i] r[i][l], where r[i][l] is sum over j of dY[i, j] A[l, j].
    r = [[_combine(a_l, [dyp[:, :, i, :, j] for j in range(2)]) for a_l in a] for i in range(2)]
    dm = [_combine(a_k, [r[i][l] for i in range(2)]) for a_k in a for l in range(4)]
    dm = jnp.stack(dm).reshape(16, b * th * tw, d)
    du = lax.dot_general(v, dm, (((1,), (1,)), ((0,), (0,))), precision=precision, **_F32_OUT)
    g = jnp.asarray(_G, jnp.float32)
    return jnp.einsum("ik,ijcd,jl->klcd", g, du.reshape(4, 4, *du.shape[1:]), g)


def _winograd_applies(x, w, strides, padding) -> bool:
    """Whether the CPU runs this convolution by Winograd (module docstring)."""
    return (
        _WINOGRAD.get()
        and w.shape[:2] == (3, 3)
        and strides == (1, 1)
        and padding == ((1, 1), (1, 1))
        and x.dtype == w.dtype == jnp.float32
        and min(w.shape[2:]) >= WINOGRAD_MIN_CHANNELS
    )


def _forward(x, w, strides, padding, precision):
    if not _winograd_applies(x, w, strides, padding):
        return _xla_conv(x, w, strides, padding, precision)
    return lax.platform_dependent(
        x,
        w,
        cpu=functools.partial(winograd_conv, precision=precision),
        default=lambda x, w: _xla_conv(x, w, strides, padding, precision),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, precision):
    return _forward(x, w, strides, padding, precision)


def _conv_fwd(x, w, strides, padding, precision):
    # symbolic_zeros=True: x and w arrive as CustomVJPPrimal (value, perturbed).
    x, w = x.value, w.value
    return _forward(x, w, strides, padding, precision), (x, w)


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
    options = {"strides": strides, "padding": padding, "precision": precision}

    def input_grad_xla(x, w, dy):
        return jax.vjp(lambda x: _xla_conv(x, w, strides, padding, precision), x)[1](dy)[0]

    if _winograd_applies(x, w, strides, padding):
        dx, dw = lax.platform_dependent(
            x,
            w,
            dy,
            cpu=lambda x, w, dy: (
                winograd_input_grad(dy, w, precision),
                winograd_kernel_grad(x, dy, precision).astype(w.dtype),
            ),
            default=lambda x, w, dy: (
                input_grad_xla(x, w, dy),
                kernel_grad_xla(x, w, dy, **options),
            ),
        )
        return dx, dw

    def matmuls(x, dy):
        return kernel_grad_matmuls(x, dy, kernel_size=w.shape[:2], **options).astype(w.dtype)

    dx = input_grad_xla(x, w, dy)
    dw = lax.platform_dependent(
        x, dy, cpu=matmuls, default=lambda x, dy: kernel_grad_xla(x, w, dy, **options)
    )
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd, symbolic_zeros=True)
