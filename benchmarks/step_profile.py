"""Where the time of our compiled train step (or predict function) goes: a per-op profile.

Run:
  python benchmarks/step_profile.py --config=configs/voc.py --image_size=600,1000 --steps=3
  python benchmarks/step_profile.py --config=configs/voc_resnet50_fpn.py --steps=2 --program=infer
  python benchmarks/step_profile.py --config=configs/synthetic.py --image_size=64 --steps=2 \
    --warmup=1                                      # a smoke run in seconds

The program is compiled as train_bench.py / infer_bench.py compile it (one device, the same
compiler options), run ``--warmup`` times, then ``--steps`` times under ``jax.profiler``. XLA
records when each HLO instruction (a "thunk" on CPU) starts and when it completes; each is
matched to its instruction in the compiled module, whose metadata (the JAX operation's name,
with ``transpose(jvp(...))`` for the backward pass, and the Python stack that made it) puts it
in a category (``profile_lib.CATEGORIES``): convolutions forward / input gradient / kernel
gradient, matmuls, RoI ops, NMS and proposals, target assignment and sampling, the optimizer
update, and the rest. The step's wall time is shared out over the timeline
(``profile_lib.wall_attribution``): a moment goes to the instructions running then, in equal
parts (XLA:CPU runs independent instructions concurrently), a loop instruction counts only
while nothing else runs, and moments with nothing running are the host's. Printed: each
category's milliseconds per step and share of the step's median wall time, the costliest
instructions with the source line that made them, and Markdown rows for RESULTS.md.
Tracing slows the step a little; compare profiles with each other, and speeds with
train_bench.py.

``--torch`` (``--torch_python`` as train_bench.py's) then profiles torchvision's counterpart
on the same batch in a subprocess (torch_profile.py: ``torch.profiler``, each operator's self
time in a category) and prints both sides by category as far as they compare (torch computes
a convolution's input and kernel gradients in one operator), ms per step, with torchvision's
costliest operators and their input shapes.
"""

from __future__ import annotations

import bench_util  # first: it tunes malloc before JAX starts

# isort: split
import glob
import statistics
import sys
import tempfile
import time

import bench_lib
import bench_models
import jax
import profile_lib
import torch_profile
from absl import app, flags

FLAGS = bench_util.FLAGS
flags.DEFINE_enum("program", "train", ["train", "infer"], "The train step or model.detect.")
flags.DEFINE_integer("top", 15, "How many of the costliest instructions to list.")


def compiled_program(config, model, host_batch: dict):
    """``(compiled, run)``: the compiled program and a function that runs it once, waited on."""
    key = jax.random.key(config.seed)
    variables = bench_models.init_variables(model, key)
    if FLAGS.program == "train":
        state = bench_models.create_train_state(config, model, variables)
        step = bench_models.jit_train_step()
        batch = jax.device_put(host_batch)
        compiled = step.lower(state, batch, key).compile()
        holder = {"state": state}

        def run(i):
            holder["state"], metrics = compiled(holder["state"], batch, jax.random.fold_in(key, i))
            jax.block_until_ready(metrics)

    else:
        predict = bench_models.predict_fn(model)
        args = jax.device_put((host_batch["images"], host_batch["image_sizes"]))
        compiled = predict.lower(variables, *args).compile()

        def run(i):
            jax.block_until_ready(compiled(variables, *args))

    return compiled, run


def main(argv):
    config, size = bench_util.train_config(argv)
    model = bench_models.build_model(config, num_classes=FLAGS.num_classes)
    host_batch = bench_util.synthetic_batches(config, batch_size=config.batch_size, size=size)[0]
    print(
        f"profile of the {FLAGS.program} program: backbone={config.model.backbone} "
        f"dtype={config.model.dtype} batch={config.batch_size} image={size[0]}x{size[1]} "
        f"(padded {bench_lib.padded_size(size)})"
    )
    print(f"device: {bench_lib.device_description()}; {bench_lib.versions()}")
    print(f"command: {' '.join(sys.argv)}")

    compiled, run = compiled_program(config, model, host_batch)
    instructions = profile_lib.parse_instructions(compiled.as_text())
    for i in range(FLAGS.warmup):
        run(i)
    walls = []
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for i in range(FLAGS.steps):
            start = time.perf_counter()
            run(FLAGS.warmup + i)
            walls.append(time.perf_counter() - start)
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
        events = profile_lib.trace_events(path, instructions)
    profile = profile_lib.summarize(events, instructions, steps=FLAGS.steps)
    wall_ms = statistics.median(walls) * 1e3
    profile_lib.print_profile(profile, wall_ms=wall_ms, top=FLAGS.top)
    if FLAGS.torch:
        theirs = bench_util.run_torch(
            model,
            [host_batch],
            size,
            compute_dtype=config.model.dtype,
            training=FLAGS.program == "train",
            profile_steps=FLAGS.steps,
        )
        print_side_by_side(profile, wall_ms, theirs)


def print_side_by_side(profile, wall_ms: float, theirs: dict) -> None:
    """Our categories next to torchvision's profile (``bench_lib.run_torch``'s result)."""
    if "error" in theirs:
        print(f"torchvision: {theirs['error']}")
        return
    ours = dict.fromkeys(torch_profile.COMMON, 0.0)
    for category, ms in profile.by_category.items():
        ours[torch_profile.OURS_TO_COMMON.get(category, "everything else")] += ms
    ours["everything else"] += max(wall_ms - profile.covered_ms, 0.0)  # host, dispatch
    their = theirs["profile"]["by_category"]
    their_wall = theirs["profile"]["step_ms"]
    print(f"torchvision ({theirs['versions']}), profiled: median step {their_wall:.1f} ms")
    print("markdown: | category | ours ms | torchvision ms | ours / torchvision |")
    print("markdown: | --- | --- | --- | --- |")
    rows = [(c, ours[c], their[c]) for c in torch_profile.COMMON]
    for category, a, b in [*rows, ("step (median wall time)", wall_ms, their_wall)]:
        ratio = f"{a / b:.2f}" if b > 0 else "-"
        print(f"markdown: | {category} | {a:.1f} | {b:.1f} | {ratio} |")
    print("torchvision's costliest operators (ms per step, self time; input shapes):")
    for ms, name, shapes in theirs["profile"]["top"]:
        print(f"  {ms:9.1f}  {name:40s} {shapes[:120]}")


if __name__ == "__main__":
    app.run(main)
