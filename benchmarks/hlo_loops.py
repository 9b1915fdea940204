"""The while loops of a lowered (StableHLO) or compiled (HLO) JAX program, with trip counts.

Every ``lax.scan``, ``lax.fori_loop``, ``lax.map`` and ``lax.while_loop`` becomes one
``stablehlo.while``; on an accelerator each iteration of one costs at least a kernel
launch and a host round trip for the loop condition, so loops of many iterations are
what a program must not have there. Used by loop_table.py.

A loop's trip count is static when its condition compares a counter that starts at a
constant with a constant (``scan``, ``fori_loop`` with Python bounds, ``map``);
otherwise it depends on the data (``while_loop``), and such a comparison among the
terms of its condition gives an upper bound. The source line is the innermost frame
of the op's location inside ``frcnn_jax/``.
"""

from __future__ import annotations

import dataclasses
import re

from jax._src.lib.mlir import ir

_FRAME = re.compile(r'"([^"]+)"\("([^"]+)":(\d+):\d+')
_NAME = re.compile(r'^loc\("([^"]+)"')
_CONSTANT = re.compile(r"dense<(-?\d+)>")


@dataclasses.dataclass
class Loop:
    """One while loop: where it comes from, how often it runs, inside which loops."""

    source: str  # "nms.py:193 (_nms)": innermost frcnn_jax frame, else the innermost frame
    op_name: str  # JAX's name stack, e.g. "jit(train_step)/vmap(...)/while"
    trip_count: int | None  # None: depends on the data
    parents: tuple[int, ...]  # indices (into the same list) of the enclosing loops, outermost first
    bound: int | None = None  # an upper bound on a data-dependent trip count, where one is seen

    @property
    def trips(self) -> str:
        if self.trip_count is not None:
            return str(self.trip_count)
        return "dynamic" if self.bound is None else f"dynamic, <= {self.bound}"


def _source(location: str) -> tuple[str, str]:
    """(source, op name) from an MLIR location's text."""
    name = _NAME.match(location)
    op_name = name.group(1) if name else "?"
    frames = _FRAME.findall(location)
    ours = [f for f in frames if "/frcnn_jax/" in f[1]] or frames
    if not ours:
        return "?", op_name
    function, path, line = ours[0]
    return f"{path.rsplit('/frcnn_jax/', 1)[-1]}:{line} ({function})", op_name


def _constant(value) -> int | None:
    """The integer of a splat constant, seen through broadcasts and conversions."""
    owner = value.owner
    while not isinstance(owner, ir.Block) and owner.name in (
        "stablehlo.broadcast_in_dim",
        "stablehlo.convert",
        "stablehlo.reshape",
    ):
        owner = owner.operands[0].owner
    if not isinstance(owner, ir.Block) and owner.name == "stablehlo.constant":
        match = _CONSTANT.search(str(owner.attributes["value"]))
        return int(match.group(1)) if match else None
    return None


def _argument(value) -> int | None:
    """The index of the block argument ``value`` is, else None."""
    if isinstance(value.owner, ir.Block):
        return ir.BlockArgument(value).arg_number
    return None


def _counts_up_by_one(while_op, index: int) -> bool:
    """Whether the body returns ``argument[index] + 1`` (or keeps it, as a vmapped loop does)."""
    returned = list(while_op.regions[1].blocks[0].operations)[-1].operands[index]
    update = returned.owner
    if not isinstance(update, ir.Block) and update.name == "stablehlo.select":
        # vmap of a loop with a batched condition: finished elements keep their value.
        if _argument(update.operands[2]) != index:
            return False
        update = update.operands[1].owner
    if isinstance(update, ir.Block) or update.name != "stablehlo.add":
        return False
    a, b = update.operands
    return (_argument(a) == index and _constant(b) == 1) or (
        _argument(b) == index and _constant(a) == 1
    )


def _trip_counts(while_op) -> tuple[int | None, int | None]:
    """(exact trip count, upper bound) of a while op; None where unknown.

    A counter that starts at a constant, goes up by one each iteration and is
    compared ``counter < limit`` with a constant bounds the loop by ``limit -
    start``; when that comparison is the whole condition it is the trip count
    (``scan``, ``fori_loop``), when it is one term of a conjunction (a
    ``while_loop`` that may stop early) it is an upper bound.
    """
    cond = list(while_op.regions[0].blocks[0].operations)
    root = cond[-1].operands[0].owner
    bounds = {}
    for op in cond:
        if op.name != "stablehlo.compare" or "LT" not in str(op.attributes["comparison_direction"]):
            continue
        counter, limit = op.operands
        index = _argument(counter)
        if index is None or not _counts_up_by_one(while_op, index):
            continue
        start, stop = _constant(while_op.operands[index]), _constant(limit)
        if start is not None and stop is not None:
            bounds[op] = max(stop - start, 0)
    if not bounds:
        return None, None
    if not isinstance(root, ir.Block) and root in bounds:
        return bounds[root], bounds[root]
    return None, min(bounds.values())


def stablehlo_loops(module) -> list[Loop]:
    """Every ``stablehlo.while`` reached from ``@main``, once per call path, outer loops first.

    ``module`` is ``jax.jit(f).trace(...).lower(...).compiler_ir("stablehlo")``. Calls are
    followed into the called functions, so a loop in a function called twice is listed twice,
    each time with its own enclosing loops.
    """
    functions = {str(op.attributes["sym_name"]).strip('"'): op for op in module.body.operations}
    loops: list[Loop] = []

    def walk(op, parents: tuple[int, ...]):
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    name = inner.operation.name
                    if name == "stablehlo.while":
                        source, op_name = _source(str(inner.location))
                        trips, bound = _trip_counts(inner)
                        loops.append(Loop(source, op_name, trips, parents, bound))
                        walk(inner, (*parents, len(loops) - 1))
                    elif name == "func.call":
                        walk(functions[str(inner.attributes["callee"]).lstrip("@")], parents)
                    else:
                        walk(inner, parents)

    walk(functions["main"], ())
    return loops


_HLO_WHILE = re.compile(r"^\s*(?:ROOT )?(\S+) = .*\bwhile\(.*condition=(\S+?),")
_HLO_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_HLO_OP_NAME = re.compile(r'op_name="([^"]+)"')


def compiled_loops(hlo_text: str) -> list[Loop]:
    """The while instructions of a compiled program's HLO text (``compiled.as_text()``).

    Trip counts are XLA's ``known_trip_count`` (its own analysis after optimisation);
    neither the source line nor the nesting is recovered (``source`` "-", ``parents``
    empty): the op name tells where a loop comes from. XLA adds loops of its own (e.g.
    XLA:CPU expands some scatters into loops over their updates), named after that op.
    """
    loops = []
    for line in hlo_text.splitlines():
        if not _HLO_WHILE.match(line):
            continue
        trips = _HLO_TRIPS.search(line)
        op_name = _HLO_OP_NAME.search(line)
        loops.append(
            Loop(
                "-",
                op_name.group(1) if op_name else "?",
                int(trips.group(1)) if trips else None,
                (),
            )
        )
    return loops


def sequential_iterations(loops: list[Loop], index: int) -> str:
    """Iterations of loop ``index`` per run: its trips times its parents' ("dynamic" if unknown)."""
    total, exact = 1, True
    for i in (*loops[index].parents, index):
        loop = loops[i]
        trips = loop.trip_count if loop.trip_count is not None else loop.bound
        if trips is None:
            return "dynamic"
        total *= trips
        exact &= loop.trip_count is not None
    return str(total) if exact else f"<= {total}"
