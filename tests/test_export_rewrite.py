"""frcnn_jax.export.rewrite: every rewritten form is bit-identical to the primitive it replaces."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.extend import core as jax_core

from frcnn_jax.export import rewrite
from frcnn_jax.export.inference import make_inference_fn
from frcnn_jax.models import build_model, init_variables
from tests.tiny import tiny_config

RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 7, 5)).astype(np.float32)  # [batch, rows, channels]


def _primitives(closed):
    """(primitive name, params) of every equation, sub-programs included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            found.append((eqn.primitive.name, eqn.params))
            for sub in jax_core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(closed.jaxpr)
    return found


def _check(fn, *args, rules=rewrite.ONNX_RULES):
    """Rewritten == original, bit for bit (NaNs in the same places); returns the new jaxpr."""
    specs = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in args]
    rewritten = rewrite.rewrite(fn, *specs, rules=rules)
    args = [jnp.asarray(a) for a in args]
    for got, want in zip(
        jax.tree.leaves(jax.jit(rewritten)(*args)), jax.tree.leaves(jax.jit(fn)(*args))
    ):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    closed = jax.make_jaxpr(rewritten)(*specs)
    if rules is rewrite.ONNX_RULES:  # only row takes and row sets remain
        for name, params in _primitives(closed):
            if name in ("gather", "scatter", "scatter-add"):
                dims = params["dimension_numbers"]
                assert not dims.operand_batching_dims, (name, dims)
                assert tuple(getattr(dims, "start_index_map", (0,))) == (0,), (name, dims)
    return closed


def test_vmapped_take_and_dynamic_slice_lose_their_batching_dims():
    rows = np.array([[0, 6, 3], [2, 2, 1], [5, 0, 4]], np.int32)
    _check(jax.vmap(lambda x, i: x[i]), X, rows)  # [3, 3, 5]
    starts = np.array([0, 4, 9], np.int32)  # 9 is clamped to 7 - 3 = 4
    _check(jax.vmap(lambda x, s: lax.dynamic_slice_in_dim(x, s, 3)), X, starts)
    # A window in both dims (channels 1..3 not whole: the channel dim is indexed too).
    corners = np.array([[1, 1], [-2, 0], [6, 4]], np.int32)  # clamped in both dims
    _check(jax.vmap(lambda x, c: lax.dynamic_slice(x, (c[0], c[1]), (2, 3))), X, corners)


def test_out_of_bounds_gathers_fill_or_clip_as_xla_does():
    rows = np.array([[0, 7, -1], [3, 100, 6], [-8, 2, 2]], np.int32)
    fill = jax.vmap(lambda x, i: x.at[i].get(mode="fill", fill_value=-1.0))
    _check(fill, X, rows)
    _check(jax.vmap(lambda x, i: x.at[i].get(mode="fill")), X, rows)  # NaN fill
    _check(jax.vmap(lambda x, i: x.at[i].get(mode="clip")), X, rows)
    _check(lambda x, i: x[0].at[i].get(mode="fill", fill_value=0.0), X, rows)  # no batching
    ints = RNG.integers(0, 9, (3, 7)).astype(np.int32)
    _check(jax.vmap(lambda x, i: x.at[i].get(mode="fill")), ints, rows)  # int32 min fill


def test_vmapped_scatters_set_add_and_drop_out_of_bounds_windows():
    rows = np.array([[0, 9, 3], [6, -1, 2], [1, 1, 5]], np.int32)  # 9, -1 dropped
    values = RNG.normal(size=(3, 3, 5)).astype(np.float32)
    _check(jax.vmap(lambda x, i, v: x.at[i].set(v, mode="drop")), X, rows, values)
    _check(jax.vmap(lambda x, i, v: x.at[i].add(v, mode="drop")), X, rows, values)
    _check(jax.vmap(lambda x, i, v: x.at[i].set(v, mode="clip")), X, rows, values)
    flags = np.zeros((3, 7), bool)
    _check(jax.vmap(lambda f, i: f.at[i].set(True, mode="drop")), flags, rows)
    # dynamic_update_slice with a batched start: a window of 2 rows x 3 channels.
    patch = RNG.normal(size=(3, 2, 3)).astype(np.float32)
    corners = np.array([[0, 0], [6, 2], [-3, 9]], np.int32)  # clamped into the array
    _check(
        jax.vmap(lambda x, p, c: lax.dynamic_update_slice(x, p, (c[0], c[1]))), X, patch, corners
    )


def test_batched_while_keeps_finished_elements_and_boolean_carries():
    def count_down(n, flags):
        def body(state):
            k, f = state
            return k - 1, f ^ (jnp.arange(f.shape[0]) == k)

        return lax.while_loop(lambda s: s[0] > 0, body, (n, flags))

    counts = np.array([0, 3, 5], np.int32)  # different trip counts per element
    _check(jax.vmap(count_down), counts, np.zeros((3, 6), bool))


def test_cond_and_scan_bodies_are_rewritten():
    rows = np.array([2, 0, 6], np.int32)

    def branchy(x, i):
        return lax.cond(i[0] > 1, lambda: jax.vmap(lambda a, j: a[j])(x, i), lambda: x[:, 0])

    _check(branchy, X, rows)
    _check(lambda x, i: lax.map(lambda args: args[0][args[1]], (x, i)), X, rows)


def test_top_k_by_sort_matches_lax_top_k_on_ties_zeros_and_nans():
    values = np.array(
        [[1.0, -0.0, 0.0, 1.0, np.nan, -np.inf, 2.0, -np.nan], [3.0, 3.0, 3.0, -1, 0, 0, 5, 5]],
        np.float32,
    )
    closed = _check(lambda v: lax.top_k(v, 5), values, rules=rewrite.TENSORFLOW_RULES)
    assert "top_k" not in [name for name, _ in _primitives(closed)]
    _check(jax.vmap(lambda v: lax.top_k(v, 8)), values, rules=rewrite.TENSORFLOW_RULES)
    scores = RNG.normal(size=(4, 50)).round(1).astype(np.float32)  # many ties
    _check(lambda v: lax.top_k(v, 20), scores, rules=rewrite.TENSORFLOW_RULES)


def test_unknown_sub_programs_are_named():
    with pytest.raises(NotImplementedError, match="remat2.*sub-program"):
        _check(jax.checkpoint(lambda x: jnp.sin(x) * 2), X)


def test_the_detector_with_roi_pool_is_unchanged():
    # RoIAlign (the tiny config's) is covered end to end by tests/test_export.py; RoIPool adds
    # lax.map (scan) and a custom_vjp to the program.
    config = tiny_config(**{"model.roi.op": "pool"})
    model = build_model(config.model, num_classes=3)
    variables = init_variables(model, jax.random.key(0))
    images = RNG.integers(1, 255, (2, 64, 64, 3), np.uint8)
    scales = np.array([[1.6, 1.6], [0.64, 0.6375]], np.float32)  # enlarged, shrunk
    _check(make_inference_fn(model, variables), images, scales)


@pytest.mark.parametrize(
    "window, strides, padding",
    [((3, 3), (2, 2), ((1, 1), (1, 1))), ((2, 2), (2, 2), "VALID"), ((1, 1), (2, 2), "VALID")],
)  # ResNet's stem, VGG16's pools, FPN's P6
def test_max_pools_become_maxima_of_strided_slices(window, strides, padding):
    images = RNG.normal(size=(2, 9, 11, 4)).astype(np.float32)
    images[0, 0, 0, 0] = np.nan
    closed = _check(lambda x: nn.max_pool(x, window, strides=strides, padding=padding), images)
    assert "reduce_window_max" not in [name for name, _ in _primitives(closed)]


def test_onnx_jaxpr_keeps_direct_convolutions_where_the_cpu_uses_winograd():
    # A 128-channel 3x3 layer runs by Winograd in the CPU's programs, and the ONNX rewrite picks
    # CPU branches; onnx.convertible_jaxpr traces under conv.xla_convolutions, so the graph
    # gets the plain convolution (an ONNX Conv node), not the tile transforms.
    from frcnn_jax.export import onnx
    from frcnn_jax.export.inference import OUTPUT_NAMES, input_specs
    from frcnn_jax.models import conv

    layer = conv.Conv(128, (3, 3), padding=((1, 1), (1, 1)))
    variables = layer.init(jax.random.key(0), jnp.zeros((1, 8, 8, 128)))

    def fn(images, scales):
        x = jnp.tile(images.astype(jnp.float32), (1, 1, 1, 43))[..., :128]
        y = layer.apply(variables, x).mean(axis=(1, 2))  # [B, 128]
        outputs = (y[:, :4], y[:, 4].astype(jnp.int32), y[:, 5], y[:, 6] > 0)
        return dict(zip(OUTPUT_NAMES, outputs, strict=True))

    specs = input_specs((8, 8), 1)
    cpu_branches = str(
        jax.make_jaxpr(rewrite.rewrite(fn, *specs, rules=rewrite.ONNX_RULES))(*specs)
    )
    assert "conv_general_dilated" not in cpu_branches  # what ONNX would get without it
    onnx_program = str(onnx.convertible_jaxpr(fn, *specs))
    assert "conv_general_dilated" in onnx_program and "platform_index" not in onnx_program
