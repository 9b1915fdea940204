"""Re-traces a function with some primitives replaced by equivalent forms an exporter takes.

``rewrite(fn, *specs, rules=...)`` traces ``fn`` to a jaxpr and returns a function that
evaluates that jaxpr, primitive by primitive, applying ``rules`` (by primitive name) and
re-binding every other primitive unchanged. Control flow (``while``, ``cond``, ``scan``) is
rebuilt around rewritten bodies; calls (``jit``, custom derivatives) are inlined. Every rule
gives bit-identical results (tests/test_export_rewrite.py):

- ``ONNX_RULES``: jax2onnx 0.17 cannot convert the gathers and scatters ``jax.vmap`` makes of
  per-image indexing, which have *batching dimensions* ("Unhandled internal op in Gather:
  ... 'mode': 'batched'"): ``gather_rows`` writes them as takes and sets of whole rows.
  onnxruntime has no boolean ``Where``: boolean selects become logic; it has no 4-d
  ``MaxPool``, which jax2onnx makes of NHWC max pools: they become maxima of slices.
- ``TENSORFLOW_RULES``: jax lowers ``lax.top_k`` to ``chlo.top_k``, serialised as a
  ``stablehlo.composite`` whose body TensorFlow 2.21's ``XlaCallModule`` cannot specialise to
  the batch size of a call ("'stablehlo.sort' op has dynamic shapes"); top-k becomes the
  stable sort that is its definition.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jax_core

from frcnn_jax.export import gather_rows


def rewrite(fn, *specs, rules: dict):
    """``fn`` re-expressed with ``rules``, traced for inputs ``specs`` (pytrees of
    ShapeDtypeStructs); the result takes arguments of the same structure."""
    closed, out_shapes = jax.make_jaxpr(fn, return_shape=True)(*specs)
    out_tree = jax.tree.structure(out_shapes)

    def rewritten(*args):
        return jax.tree.unflatten(out_tree, evaluate(closed, *jax.tree.leaves(args), rules=rules))

    return rewritten


def evaluate(closed_jaxpr: jax_core.ClosedJaxpr, *args, rules: dict) -> list:
    """Evaluates (traces) ``closed_jaxpr`` on ``args``, applying ``rules``."""
    env = {}
    jaxpr = closed_jaxpr.jaxpr

    def read(v):
        return v.val if isinstance(v, jax_core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, closed_jaxpr.consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        inputs = [read(v) for v in eqn.invars]
        rule = rules.get(eqn.primitive.name)
        if rule is not None:
            outputs = rule(eqn, *inputs, rules=rules)
        elif any(True for _ in jax_core.jaxprs_in_params(eqn.params)):
            raise NotImplementedError(
                f"cannot rewrite primitive {eqn.primitive.name!r}: it holds a sub-program that "
                "frcnn_jax.export.rewrite does not know how to rebuild"
            )
        else:
            outputs = eqn.primitive.bind(*inputs, **eqn.params)
            if not eqn.primitive.multiple_results:
                outputs = [outputs]
        for var, value in zip(eqn.outvars, outputs):
            if not isinstance(var, jax_core.DropVar):
                env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _inline(key):
    return lambda eqn, *args, rules: evaluate(eqn.params[key], *args, rules=rules)


def _leaf(rule):
    """A rule without sub-programs (it ignores ``rules``)."""
    return lambda eqn, *args, rules: rule(eqn, *args)


def _while(eqn, *args, rules):
    """``lax.while_loop`` around rewritten bodies.

    A vmapped loop whose condition depends on the batch has a batched predicate ``[B]``; as in
    XLA's lowering of it, the loop runs while any element's predicate holds and the body's
    update is kept only for the elements whose predicate holds.
    """
    num_cond, num_body = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
    cond_consts, body_consts = args[:num_cond], args[num_cond : num_cond + num_body]
    init = tuple(args[num_cond + num_body :])
    batched = bool(eqn.params["cond_jaxpr"].out_avals[0].shape)

    def predicate(carry):
        return evaluate(eqn.params["cond_jaxpr"], *cond_consts, *carry, rules=rules)[0]

    def cond(carry):
        return jnp.any(predicate(carry)) if batched else predicate(carry)

    def body(carry):
        updated = evaluate(eqn.params["body_jaxpr"], *body_consts, *carry, rules=rules)
        if batched:
            active = predicate(carry)
            updated = [
                select(lax.expand_dims(active, range(active.ndim, new.ndim)), new, old, rules)
                for new, old in zip(updated, carry)
            ]
        return tuple(updated)

    return list(lax.while_loop(cond, body, init))


def _cond(eqn, index, *operands, rules):
    branches = [
        (lambda *ops, branch=branch: tuple(evaluate(branch, *ops, rules=rules)))
        for branch in eqn.params["branches"]
    ]
    if isinstance(index, _PlatformChoice):  # a platform_dependent choice made at export
        return list(branches[index.branch](*operands))
    return list(lax.switch(index, branches, *operands))


class _PlatformChoice:
    """The branch index ``platform_index`` stands for, known when exporting for one platform."""

    def __init__(self, branch: int):
        self.branch = branch


def _cpu_platform(eqn, *, rules):
    """``lax.platform_dependent`` (conv.py, nms.py, roi_ops/pool.py) picks its CPU form:
    onnxruntime runs where the CPU forms are the tested, exact ones, and ONNX has no
    platform switch. The CPU forms equal the accelerator forms (tests/test_nms.py,
    tests/test_roi_ops.py)."""
    platforms = eqn.params["platforms"]
    for branch, names in enumerate(platforms):
        if names is not None and "cpu" in names:
            return [_PlatformChoice(branch)]
    return [_PlatformChoice(platforms.index(None))]


def _scan(eqn, *args, rules):
    num_consts, num_carry = eqn.params["num_consts"], eqn.params["num_carry"]
    consts = args[:num_consts]
    init, xs = tuple(args[num_consts : num_consts + num_carry]), args[num_consts + num_carry :]

    def step(carry, x):
        outputs = evaluate(eqn.params["jaxpr"], *consts, *carry, *x, rules=rules)
        return tuple(outputs[:num_carry]), tuple(outputs[num_carry:])

    carry, ys = lax.scan(
        step,
        init,
        tuple(xs),
        length=eqn.params["length"],
        reverse=eqn.params["reverse"],
        unroll=eqn.params["unroll"],
    )
    return [*carry, *ys]


def select(pred, on_true, on_false, rules):
    """``where(pred, on_true, on_false)`` (pred broadcastable), through ``rules``' select_n."""
    pred = jnp.broadcast_to(pred, on_true.shape)
    rule = rules.get("select_n")
    if rule is None:
        return lax.select_n(pred, on_false, on_true)
    (out,) = rule(None, pred, on_false, on_true, rules=rules)
    return out


def _boolean_select_as_logic(eqn, which, *cases, rules):
    """onnxruntime's ``Where`` has no boolean kernel: (which & b) | (~which & a) instead."""
    if cases[0].dtype == jnp.bool_ and which.dtype == jnp.bool_ and len(cases) == 2:
        return [(which & cases[1]) | (~which & cases[0])]
    return [lax.select_n(which, *cases)]


def _max_pool_as_slices(eqn, operand, *, rules):
    """``reduce_window_max`` as the maximum of its window's strided slices.

    jax2onnx 0.17 turns a max pool over NHWC into an ONNX ``MaxPool`` with a 4-d kernel, which
    onnxruntime rejects ("Unsupported pooling size"). The maximum of the same elements, taken
    slice by slice over the padded operand (padding -inf, as the primitive's), is the same.
    """
    params = eqn.params
    if any(d != 1 for d in params["base_dilation"]):
        return [eqn.primitive.bind(operand, **params)]
    low = jnp.asarray(
        -jnp.inf if jnp.issubdtype(operand.dtype, jnp.floating) else jnp.iinfo(operand.dtype).min,
        operand.dtype,
    )
    padded = lax.pad(operand, low, [(lo, hi, 0) for lo, hi in params["padding"]])
    windows, strides = params["window_dimensions"], params["window_strides"]
    dilations = params["window_dilation"]
    out_shape = eqn.outvars[0].aval.shape
    result = None
    for offsets in itertools.product(*(range(w) for w in windows)):
        starts = [o * d for o, d in zip(offsets, dilations)]
        limits = [b + (n - 1) * s + 1 for b, n, s in zip(starts, out_shape, strides)]
        part = lax.slice(padded, starts, limits, strides)
        result = part if result is None else lax.max(result, part)
    return [result]


def _top_k_by_sort(eqn, operand, *, rules):
    """``lax.top_k`` on float32 as its definition (chlo.top_k's decomposition): a stable sort,
    descending in IEEE total order, then the first k.

    The sort key maps float32 bits to int32 ascending in total order (-NaN < -inf < -0 < 0 <
    inf < NaN: negative floats get their magnitude bits flipped), then ``~`` reverses it
    exactly; ties keep the lower index first, as ``lax.top_k`` does.
    """
    axis = eqn.params.get("axis", operand.ndim - 1)
    if operand.dtype != jnp.float32:
        return eqn.primitive.bind(operand, **eqn.params)
    bits = lax.bitcast_convert_type(operand, jnp.int32)
    ascending = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    positions = lax.broadcasted_iota(jnp.int32, operand.shape, axis)
    _, values, indices = lax.sort(
        (~ascending, operand, positions), dimension=axis, is_stable=True, num_keys=1
    )
    k = eqn.params["k"]
    return [lax.slice_in_dim(values, 0, k, axis=axis), lax.slice_in_dim(indices, 0, k, axis=axis)]


_CALLS_AND_CONTROL_FLOW = {
    "jit": _inline("jaxpr"),
    "custom_jvp_call": _inline("call_jaxpr"),
    "custom_vjp_call": _inline("call_jaxpr"),
    "while": _while,
    "cond": _cond,
    "scan": _scan,
}
ONNX_RULES = {
    **_CALLS_AND_CONTROL_FLOW,
    "select_n": _boolean_select_as_logic,
    "reduce_window_max": _max_pool_as_slices,
    "gather": _leaf(gather_rows.gather),
    "scatter": _leaf(gather_rows.scatter(add=False)),
    "scatter-add": _leaf(gather_rows.scatter(add=True)),
    "platform_index": _cpu_platform,
}
TENSORFLOW_RULES = {**_CALLS_AND_CONTROL_FLOW, "top_k": _top_k_by_sort}
