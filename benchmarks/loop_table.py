"""Every while/scan/fori loop of the train step and the inference function, with trip counts.

Run (lowering only: no data, no device work, a few seconds a program):
  python benchmarks/loop_table.py                       # VOC and COCO, lowered for cpu and cuda
  python benchmarks/loop_table.py --programs=voc_train --platforms=cuda
  python benchmarks/loop_table.py --programs=voc_infer --compiled   # + this backend's HLO

Programs, batch 1 (``--batch_size``), in the data contract's padded buckets:
``voc_*`` VGG16 (configs/voc.py) at 600x1000 -> 608x1024 with 20 classes, ``coco_*``
ResNet-50-FPN (configs/coco_resnet50_fpn.py) at 800x1333 -> 800x1344 with 80 classes;
``*_train`` is ``train_step`` (forward, backward, optimizer), ``*_infer`` is
``model.detect`` (the predict function). Inputs are ``jax.ShapeDtypeStruct``s.

Each program is lowered to StableHLO for every platform of ``--platforms``: lowering for
"cuda" needs no GPU, and resolves ``lax.platform_dependent`` to the branch a GPU runs.
Printed per loop: the source line (innermost ``frcnn_jax`` frame), JAX's op name, the
trip count ("dynamic": a ``while_loop`` whose count depends on the data, with a bound
where its condition shows one), the enclosing loops and the iterations per program run
(trip counts multiplied along the nesting); identical rows are counted once.
``--compiled`` also compiles for the local backend and lists the while instructions
of XLA's optimised HLO with XLA's ``known_trip_count`` (XLA adds loops of its own).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import time

import bench_lib
import bench_models
import hlo_loops
import jax

PROGRAMS = {
    "voc_train": ("configs.voc", (600, 1000), 20, "train"),
    "voc_infer": ("configs.voc", (600, 1000), 20, "infer"),
    "coco_train": ("configs.coco_resnet50_fpn", (800, 1333), 80, "train"),
    "coco_infer": ("configs.coco_resnet50_fpn", (800, 1333), 80, "infer"),
}


def trace(name: str, *, batch_size: int, dtype: str):
    """``jax.jit(...).trace(...)`` of one program of :data:`PROGRAMS` on abstract inputs."""
    module, size, num_classes, kind = PROGRAMS[name]
    config = importlib.import_module(module).get_config()
    config.model.dtype = dtype
    config.batch_size = batch_size
    model = bench_models.build_model(config, num_classes=num_classes)
    height, width = bench_lib.padded_size(size)
    batch = bench_models.abstract_batch(
        batch_size=batch_size, height=height, width=width, max_boxes=config.data.max_boxes
    )
    state = bench_models.abstract_train_state(config, model)
    if kind == "train":
        key = jax.eval_shape(lambda: jax.random.key(0))
        return bench_models.jit_train_step().trace(state, batch, key)
    variables = {"params": state.params, "frozen": state.frozen}
    return bench_models.predict_fn(model).trace(variables, batch["images"], batch["image_sizes"])


_METHOD = re.compile(r"FasterRCNN\.\w+")


def print_table(title: str, loops: list[hlo_loops.Loop], *, nested: bool = True) -> None:
    """Markdown table, one row per distinct loop (source, trips, enclosing loops) with a count."""
    rows: dict[tuple, list] = {}
    for i, loop in enumerate(loops):
        inside = " < ".join(loops[p].source for p in reversed(loop.parents)) or "-"
        total = hlo_loops.sequential_iterations(loops, i) if nested else loop.trips
        # The model method it runs in: tells the proposals' NMS from the post-processing's.
        site = (_METHOD.findall(loop.op_name) or [""])[-1]
        key = (loop.source, loop.trips, inside, total, site)
        rows.setdefault(key, [loop.op_name, 0])[1] += 1
    print(f"\n### {title}: {len(loops)} loops\n")
    print("| source | op name (first) | trips | inside | iterations per run | count |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (source, trips, inside, total, _), (op_name, count) in rows.items():
        op_name = op_name if len(op_name) <= 80 else "..." + op_name[-77:]
        print(f"| {source} | `{op_name}` | {trips} | {inside} | {total} | {count} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", default=",".join(PROGRAMS), help="comma-separated")
    parser.add_argument("--platforms", default="cpu,cuda", help="lowering platforms")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--compiled", action="store_true", help="also compile for the local backend"
    )
    args = parser.parse_args(argv)
    print(f"loop table: {bench_lib.versions()}; command: {' '.join(sys.argv)}")
    for name in args.programs.split(","):
        if name not in PROGRAMS:
            raise SystemExit(f"--programs: unknown {name!r}; choose from {sorted(PROGRAMS)}")
        start = time.perf_counter()
        traced = trace(name, batch_size=args.batch_size, dtype=args.dtype)
        for platform in args.platforms.split(","):
            lowered = traced.lower(lowering_platforms=(platform,))
            loops = hlo_loops.stablehlo_loops(lowered.compiler_ir("stablehlo"))
            print_table(f"{name}, batch {args.batch_size}, {args.dtype}, {platform}", loops)
        if args.compiled:
            compiled = traced.lower().compile()
            print_table(
                f"{name}, compiled for {jax.default_backend()} (XLA's optimised HLO)",
                hlo_loops.compiled_loops(compiled.as_text()),
                nested=False,
            )
        print(f"\n({name}: {time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
