"""``lax.gather`` and ``lax.scatter`` written as takes and sets of whole rows on axis 0.

Shape shorthand: N rows of the flattened operand, r... its "rest" dimensions (those a gather
keeps whole, e.g. channels), I the gather's output (the scatter's updates) without them.

Any gather, batching dimensions included (what ``jax.vmap`` makes of ``x[i]`` and
``dynamic_slice``), is the same elements read as: transpose the operand so its indexed
dimensions come first, flatten them into N rows, and take, for every output element, the row
start + offset, where start is the start index (clamped to ``[0, size - slice size]``, or
checked against it for FILL_OR_DROP, exactly as XLA does), the iota of the output's batch
position for a batching dimension, and offset the iota of its window dimension. A scatter
writes whole rows the same way; out-of-bounds windows (XLA skips them unless mode is CLIP) go
to one extra dummy row that is dropped afterwards. The results are bit-identical: the same
elements are read and written, no arithmetic touches the values.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax


def _dims(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


def _iota(size, axis: int, rank: int):
    shape = [1] * rank
    shape[axis] = size
    return lax.broadcasted_iota(jnp.int32, tuple(shape), axis)


def _drop_axes(values, axes):
    """``values`` without ``axes`` (index 0 along each: rows do not vary along them)."""
    for axis in axes:
        values = lax.slice_in_dim(values, 0, 1, axis=axis)
    return lax.squeeze(values, tuple(axes))


def _rows(
    operand_shape, indices, *, windowed, window_axes, window, batching, starts, rank, check_bounds
):
    """Flat rows of the elements of a gather output (scatter updates) of rank ``rank``.

    Args:
      windowed: operand dims with a window axis in the output, in operand order;
        window_axes: those axes. window: every operand dim's window size (1 if none).
      batching: {operand dim: indices batch dim}; starts: {operand dim: index vector entry}.
      check_bounds: return where each window lies in bounds (else starts are only clamped).

    Returns:
      (indexed dims, rest dims, their output axes, rows int32 broadcastable to the output,
      in_bounds bool broadcastable to it or None).
    """
    batch_axes = [a for a in range(rank) if a not in window_axes]
    window_axis = dict(zip(windowed, window_axes))
    rest = [d for d in windowed if d not in starts and window[d] == operand_shape[d]]
    indexed = [d for d in range(len(operand_shape)) if d not in rest]
    indices = indices.astype(jnp.int32)
    in_bounds = None
    rows = jnp.zeros((1,) * rank, jnp.int32)
    for d in indexed:
        coordinate = 0
        if d in batching:
            coordinate = _iota(operand_shape[d], batch_axes[batching[d]], rank)
        if d in starts:
            start = indices[..., starts[d]]
            limit = operand_shape[d] - window[d]
            if check_bounds:
                ok = (start >= 0) & (start <= limit)
                in_bounds = ok if in_bounds is None else in_bounds & ok
            start = jnp.clip(start, 0, limit)
            coordinate = coordinate + jnp.expand_dims(start, tuple(window_axes))
        if d in window_axis:
            coordinate = coordinate + _iota(window[d], window_axis[d], rank)
        stride = math.prod(operand_shape[e] for e in indexed if e > d)
        rows = rows + coordinate * stride
    if in_bounds is not None:
        in_bounds = jnp.expand_dims(in_bounds, tuple(window_axes))
    return indexed, rest, [window_axis[d] for d in rest], rows, in_bounds


def gather(eqn, operand, indices):
    """The ``gather`` equation ``eqn`` applied to (operand, indices), as one row take."""
    dims = eqn.params["dimension_numbers"]
    slice_sizes = eqn.params["slice_sizes"]
    mode = lax.GatherScatterMode.from_any(eqn.params["mode"])
    out_shape = eqn.outvars[0].aval.shape
    rank = len(out_shape)
    batching = dict(zip(_dims(dims.operand_batching_dims), _dims(dims.start_indices_batching_dims)))
    collapsed = set(_dims(dims.collapsed_slice_dims))
    indexed, rest, rest_axes, rows, in_bounds = _rows(
        operand.shape,
        indices,
        windowed=[d for d in range(operand.ndim) if d not in collapsed and d not in batching],
        window_axes=_dims(dims.offset_dims),
        window=dict(enumerate(slice_sizes)),
        batching=batching,
        starts={d: k for k, d in enumerate(_dims(dims.start_index_map))},
        rank=rank,
        check_bounds=mode == lax.GatherScatterMode.FILL_OR_DROP,
    )
    rows = _drop_axes(jnp.broadcast_to(rows, out_shape), rest_axes)  # [I]
    rest_shape = tuple(operand.shape[d] for d in rest)
    table = jnp.transpose(operand, indexed + rest).reshape((-1, *rest_shape))  # [N, *r]
    taken = take_rows(table, rows)  # [I, *r]
    current = [a for a in range(rank) if a not in rest_axes] + rest_axes
    out = jnp.transpose(taken, [current.index(a) for a in range(rank)])
    if in_bounds is not None:
        out = jnp.where(in_bounds, out, fill_value(eqn.params["fill_value"], out.dtype))
    return [out]


def take_rows(table, rows):
    """``table[rows]``: rows ``[N, *r]`` at int32 ``rows`` ``[I]`` (in bounds) -> ``[I, *r]``."""
    dims = lax.GatherDimensionNumbers(
        offset_dims=tuple(range(rows.ndim, rows.ndim + table.ndim - 1)),
        collapsed_slice_dims=(0,),
        start_index_map=(0,),
    )
    return lax.gather(
        table,
        rows[..., None],
        dims,
        slice_sizes=(1, *table.shape[1:]),
        mode=lax.GatherScatterMode.CLIP,
    )


def fill_value(value, dtype):
    """lax.gather's FILL_OR_DROP fill: ``value``, else NaN, the lowest signed, the highest
    unsigned integer, or True."""
    if value is not None:
        return jnp.asarray(value, dtype)
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.asarray(jnp.nan, dtype)
    if jnp.issubdtype(dtype, jnp.signedinteger):
        return jnp.asarray(jnp.iinfo(dtype).min, dtype)
    if jnp.issubdtype(dtype, jnp.unsignedinteger):
        return jnp.asarray(jnp.iinfo(dtype).max, dtype)
    return jnp.asarray(True, dtype)


def scatter(*, add: bool):
    """A rule for ``scatter`` (``add`` False: replace) or ``scatter-add`` as one row set."""

    def rule(eqn, operand, indices, updates):
        dims = eqn.params["dimension_numbers"]
        mode = lax.GatherScatterMode.from_any(eqn.params["mode"])
        batching = dict(
            zip(_dims(dims.operand_batching_dims), _dims(dims.scatter_indices_batching_dims))
        )
        inserted = set(_dims(dims.inserted_window_dims))
        windowed = [d for d in range(operand.ndim) if d not in inserted and d not in batching]
        window_axes = _dims(dims.update_window_dims)
        window = dict.fromkeys(range(operand.ndim), 1)
        window.update({d: updates.shape[a] for d, a in zip(windowed, window_axes)})
        indexed, rest, rest_axes, rows, in_bounds = _rows(
            operand.shape,
            indices,
            windowed=windowed,
            window_axes=window_axes,
            window=window,
            batching=batching,
            starts={d: k for k, d in enumerate(_dims(dims.scatter_dims_to_operand_dims))},
            rank=updates.ndim,
            check_bounds=mode != lax.GatherScatterMode.CLIP,  # XLA skips out-of-bounds windows
        )
        num_rows = math.prod(operand.shape[d] for d in indexed)
        if in_bounds is not None:
            rows = jnp.where(in_bounds, rows, num_rows)  # the dummy row
        rows = _drop_axes(jnp.broadcast_to(rows, updates.shape), rest_axes).reshape(-1)
        rest_shape = tuple(operand.shape[d] for d in rest)
        current = [a for a in range(updates.ndim) if a not in rest_axes] + rest_axes
        values = jnp.transpose(updates, current).reshape((-1, *rest_shape))
        table = jnp.transpose(operand, indexed + rest).reshape((-1, *rest_shape))
        table = jnp.concatenate([table, jnp.zeros((1, *rest_shape), table.dtype)])
        if add:
            table = table.at[rows].add(values, mode="promise_in_bounds")
        else:
            table = table.at[rows].set(values, mode="promise_in_bounds")
        order = indexed + rest
        table = table[:num_rows].reshape(tuple(operand.shape[d] for d in order))
        return [jnp.transpose(table, [order.index(d) for d in range(operand.ndim)])]

    return rule
