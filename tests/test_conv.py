"""models/conv.py: the CPU kernel gradient equals XLA's, and everything else is untouched."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from frcnn_jax.models import conv

NHWC = ("NHWC", "HWIO", "NHWC")

# (input [B, H, W, C], kernel [KH, KW, C, D], strides, padding): every kind our models use.
CASES = {
    "3x3 stride 1": ((2, 9, 11, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1))),
    "3x3 stride 2, odd size": ((1, 9, 12, 4), (3, 3, 4, 5), (2, 2), ((1, 1), (1, 1))),
    "1x1 stride 2 (ResNet downsample)": ((2, 8, 10, 6), (1, 1, 6, 3), (2, 2), ((0, 0), (0, 0))),
    "7x7 stride 2 (ResNet stem)": ((1, 16, 14, 3), (7, 7, 3, 4), (2, 2), ((3, 3), (3, 3))),
    "asymmetric padding": ((1, 7, 8, 2), (3, 3, 2, 3), (1, 2), ((0, 2), (1, 0))),
    "SAME string": ((1, 7, 9, 2), (3, 3, 2, 2), (2, 2), "SAME"),
}


def _inputs(case):
    x_shape, w_shape, strides, padding = CASES[case]
    kx, kw = jax.random.split(jax.random.key(0))
    return jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape), strides, padding


def _reference(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


def _ours(x, w, strides, padding):
    return conv.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)


@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_match_xla(case):
    x, w, strides, padding = _inputs(case)
    out_shape = _reference(x, w, strides, padding).shape
    dy = jax.random.normal(jax.random.key(1), out_shape)  # a cotangent that is not all ones

    def loss(fn):
        return jax.jit(
            jax.value_and_grad(lambda x, w: jnp.sum(fn(x, w, strides, padding) * dy), (0, 1))
        )

    value, (dx, dw) = loss(_ours)(x, w)
    ref_value, (ref_dx, ref_dw) = loss(_reference)(x, w)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kernel, block_elements",
    [
        ((3, 2), conv.BLOCK_ELEMENTS),  # one block
        ((3, 2), 1),  # one output row per block: 5 blocks
        ((3, 2), 2 * (2 * 7 * 3 * 2 * 3)),  # 2 rows per block: 3 blocks, the last one padded
        ((1, 1), 1),  # a 1x1 kernel: one matmul, no blocks
    ],
)
def test_kernel_grad_matmuls_against_a_loop(kernel, block_elements):
    # Slow and obviously correct: dW[i, j, c, d] = sum over b, oh, ow of
    # x_padded[b, oh * s + i, ow * s + j, c] * dy[b, oh, ow, d].
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 8, 7, 3)).astype(np.float32)
    strides, padding = (2, 1), ((1, 2), (0, 1))  # 3x2 kernel: 5 x 7 outputs
    kh, kw = kernel
    xp = np.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    oh = (xp.shape[1] - kh) // strides[0] + 1
    ow = (xp.shape[2] - kw) // strides[1] + 1
    dy = rng.normal(size=(2, oh, ow, 4)).astype(np.float32)
    expected = np.zeros((kh, kw, 3, 4), np.float64)
    for i in range(kh):
        for j in range(kw):
            for r in range(oh):
                for q in range(ow):
                    seen = xp[:, r * strides[0] + i, q * strides[1] + j]  # [B, C]
                    expected[i, j] += seen.T @ dy[:, r, q]
    got = conv.kernel_grad_matmuls(
        jnp.asarray(x),
        jnp.asarray(dy),
        kernel_size=(kh, kw),
        strides=strides,
        padding=padding,
        block_elements=block_elements,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_accelerator_path_is_xlas_kernel_gradient():
    # What GPUs and TPUs run (lax.platform_dependent's default branch), checked here on CPU.
    x, w, strides, padding = _inputs("3x3 stride 2, odd size")
    dy = jax.random.normal(jax.random.key(1), _reference(x, w, strides, padding).shape)
    pads = ((1, 1), (1, 1))
    xla = conv.kernel_grad_xla(x, w, dy, strides=strides, padding=pads)
    matmuls = conv.kernel_grad_matmuls(x, dy, kernel_size=(3, 3), strides=strides, padding=pads)
    np.testing.assert_allclose(xla, matmuls, rtol=1e-4, atol=1e-4)


def test_bfloat16_gradient_keeps_the_kernel_dtype():
    x, w, strides, padding = _inputs("3x3 stride 1")
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    dw = jax.grad(lambda w: jnp.sum(_ours(xb, w, strides, padding).astype(jnp.float32)))(wb)
    ref = jax.grad(lambda w: jnp.sum(_reference(x, w, strides, padding)))(w)
    assert dw.dtype == jnp.bfloat16
    np.testing.assert_allclose(dw.astype(jnp.float32), ref, rtol=2e-2, atol=2e-1)


def test_frozen_layer_gets_zero_gradient_without_backward_work():
    x, w, strides, padding = _inputs("3x3 stride 1")

    def grad(frozen):
        cut = lax.stop_gradient if frozen else (lambda y: y)
        return jax.grad(lambda w: jnp.sum(cut(_ours(x, w, strides, padding))))

    np.testing.assert_array_equal(grad(True)(w), np.zeros_like(w))
    # A symbolic-zero output gradient skips the rule: no kernel-gradient scan, no input gradient.
    assert "scan" in str(jax.make_jaxpr(grad(False))(w))
    frozen = str(jax.make_jaxpr(grad(True))(w))
    assert "scan" not in frozen and frozen.count("conv_general_dilated") == 1  # the forward only


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rhs_dilation": (2, 2)},
        {"lhs_dilation": (2, 1)},
        {"feature_group_count": 2},
    ],
)
def test_other_convolutions_are_passed_through(kwargs):
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 4))
    w = jax.random.normal(jax.random.key(1), (3, 3, 4 // kwargs.get("feature_group_count", 1), 4))

    def grads(fn):
        def loss(x, w):
            return jnp.sum(
                fn(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC, **kwargs) ** 2
            )

        return jax.grad(loss, (0, 1))(x, w)

    for a, b in zip(grads(conv.conv_general_dilated), grads(lax.conv_general_dilated), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_flax_conv_has_nn_conv_parameters():
    x = jnp.ones((1, 8, 8, 3))
    ours = conv.Conv(5, (3, 3), padding=((1, 1), (1, 1)), name="c").init(jax.random.key(0), x)
    ref = nn.Conv(5, (3, 3), padding=((1, 1), (1, 1)), name="c").init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, ref)
    jax.tree.map(np.testing.assert_array_equal, ours, ref)


def test_compiler_options_keep_convolutions_out_of_ynnpack_and_give_it_the_dots():
    # XLA:CPU fuses this chain into YNNPACK by default (slower for our convolutions, see
    # COMPILER_OPTIONS); with our options the convolutions stay XLA's, and a dense layer's
    # dot (faster in YNNPACK) goes to YNNPACK on its own.
    layer = conv.Conv(64, (3, 3), padding=((1, 1), (1, 1)))
    x = jnp.ones((1, 64, 64, 64))
    variables = layer.init(jax.random.key(0), x)

    def two_layers(variables, x):
        return jax.nn.relu(layer.apply(variables, jax.nn.relu(layer.apply(variables, x))))

    def compiled_text(**kwargs):
        return jax.jit(two_layers, **kwargs).lower(variables, x).compile().as_text()

    assert "ynn_fusion" in compiled_text()
    assert "ynn_fusion" not in compiled_text(compiler_options=conv.compiler_options("cpu"))
    assert conv.compiler_options("gpu") is None

    rois, kernel = jnp.ones((30, 64)), jnp.ones((64, 32))
    dense = jax.jit(lambda r, k: jax.nn.relu(r @ k), compiler_options=conv.compiler_options("cpu"))
    fusions = [
        line
        for line in dense.lower(rois, kernel).compile().as_text().splitlines()
        if "ynn_fusion = " in line
    ]
    assert len(fusions) == 1 and "dot_general" in fusions[0], fusions
    np.testing.assert_allclose(dense(rois, kernel), np.full((30, 32), 64.0))


def test_winograd_hand_worked_two_by_two_image():
    # x = [[1, 2], [3, 4]], k = [[0, 1, 2], [3, 4, 5], [6, 7, 8]], padding 1: output (r, c) is
    # sum over the 3x3 window centred there, e.g. (0, 0) = 1*4 + 2*5 + 3*7 + 4*8 = 67.
    x = jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)
    k = jnp.arange(9.0).reshape(3, 3, 1, 1)
    np.testing.assert_allclose(conv.winograd_conv(x, k)[0, :, :, 0], [[67, 57], [37, 27]])


@pytest.mark.parametrize(
    "shape",
    [(2, 6, 8, 3, 5), (1, 7, 5, 4, 2), (1, 1, 1, 2, 3), (3, 2, 9, 1, 1)],
    ids=["even, batch 2", "odd height and width", "one pixel", "one channel"],
)
def test_winograd_equals_the_direct_convolution_and_its_gradients(shape):
    b, h, w, c, d = shape
    kx, kw, ky = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (b, h, w, c))
    kernel = jax.random.normal(kw, (3, 3, c, d))
    dy = jax.random.normal(ky, (b, h, w, d))
    pads = ((1, 1), (1, 1))
    ref, vjp = jax.vjp(lambda x, k: _reference(x, k, (1, 1), pads), x, kernel)
    ref_dx, ref_dw = vjp(dy)
    np.testing.assert_allclose(conv.winograd_conv(x, kernel), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(conv.winograd_input_grad(dy, kernel), ref_dx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(conv.winograd_kernel_grad(x, dy), ref_dw, rtol=1e-5, atol=1e-4)


def _compiled_cpu_gradient(x, w):
    dy = jnp.ones((1, *x.shape[1:3], w.shape[-1]))

    def loss(x, w):
        return jnp.sum(_ours(x, w, (1, 1), ((1, 1), (1, 1))) * dy)

    fn = jax.jit(jax.value_and_grad(loss, (0, 1)))
    return fn, fn.lower(x, w).compile().as_text()


def test_cpu_runs_wide_3x3_layers_by_winograd_unless_told_otherwise():
    kx, kw = jax.random.split(jax.random.key(0))
    wide = conv.WINOGRAD_MIN_CHANNELS
    x = jax.random.normal(kx, (1, 5, 6, wide))
    w = jax.random.normal(kw, (3, 3, wide, wide)) * 0.05
    fn, text = _compiled_cpu_gradient(x, w)
    # Forward, input and kernel gradients: no convolution left, batched matmuls instead.
    assert " convolution(" not in text
    value, (dx, dw) = fn(x, w)
    ref_value, (ref_dx, ref_dw) = jax.value_and_grad(
        lambda x, w: jnp.sum(_reference(x, w, (1, 1), ((1, 1), (1, 1)))), (0, 1)
    )(x, w)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-4, atol=1e-3)
    # Traced under xla_convolutions (what ONNX export does): XLA's convolutions again.
    with conv.xla_convolutions():
        assert " convolution(" in _compiled_cpu_gradient(x, w)[1]
    # Narrower layers (the transforms cost more than they save) and bfloat16 stay XLA's.
    assert " convolution(" in _compiled_cpu_gradient(x[..., :64], w[:, :, :64, :64])[1]
    xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    assert " convolution(" in _compiled_cpu_gradient(xb, wb)[1]
