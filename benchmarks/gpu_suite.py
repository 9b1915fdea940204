"""One-shot GPU benchmark: ours and torchvision's Faster R-CNN side by side, in under 8 minutes.

Run (one NVIDIA GPU; jax[cuda], flax, optax, orbax, torch, torchvision; no TensorFlow):
  benchmarks/gpu_suite.sh                       # writes gpu_suite.md
  python benchmarks/gpu_suite.py --output=gpu_suite.md [--budget_s=450] [--batch_sizes=8,16,1]
  python benchmarks/gpu_suite.py --tiny --output=/tmp/tiny.md    # CPU smoke run, ~1 minute

Items: {VGG16 at 600x1000 (configs/voc.py, 20 classes), ResNet-50-FPN at 800x1333
(configs/coco_resnet50_fpn.py, 80 classes)} x {train step, inference} x batch sizes x
{ours, torchvision}, all at bfloat16 compute (ours: ``model.dtype=bfloat16``; torchvision:
float32 weights under ``torch.autocast``). Per item: compile time (torchvision: its first
step), steady and pipelined images/s, peak device memory (``peak_bytes_in_use`` /
``torch.cuda.max_memory_allocated``) and MFU against a bf16 matmul rate measured in the same
process (bench_lib.py has the timing rules). Batches are random images and boxes made in
NumPy: nothing imports TensorFlow (an import of it fails here, as on a machine without it).

Every item runs in a subprocess of its own (exact peak memory, and a crash or a hang loses
that item only) with a timeout; the items run in priority order (batch sizes as given,
ours then torchvision for each setting) until ``--budget_s`` is spent, and the Markdown
table is rewritten after each one, so whatever finished is in ``--output``.
``--tiny``: the small backbone at 64x64, batches 1 and 2, few steps (torchvision has no
counterpart of it and is reported as not runnable), for a CPU test of the whole path.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import gpu_suite_items as items_lib


def run_ours(spec: dict, timeout_s: float) -> dict:
    """One of our items in a subprocess (``gpu_suite_items.py``); its result or an error."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_suite_items.py")
    try:
        proc = subprocess.run(
            [sys.executable, script, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.3g} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(items_lib.MARKER):
            return json.loads(line[len(items_lib.MARKER) :])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return {"error": lines[-1] if lines else f"exit status {proc.returncode}, no output"}


def run_torch(spec: dict, timeout_s: float) -> dict:
    """torchvision's counterpart of an item (``bench_lib.run_torch``, its own subprocess)."""
    try:
        return items_lib.run_torch_item(spec, timeout_s=timeout_s)
    except Exception as e:  # noqa: BLE001 (one item's failure must not end the suite)
        return {"error": f"{type(e).__name__}: {e}"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="Markdown file, rewritten after each item")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run with tiny sizes")
    parser.add_argument("--batch_sizes", default=None, help="priority order (default 8,16,1)")
    parser.add_argument("--models", default="vgg16,resnet50_fpn")
    parser.add_argument("--modes", default="train,infer")
    parser.add_argument("--impls", default="ours,torchvision")
    parser.add_argument("--budget_s", type=float, default=None, help="default 450 (tiny: 120)")
    parser.add_argument("--item_timeout_s", type=float, default=150.0)
    parser.add_argument("--min_item_s", type=float, default=20.0, help="skip below this left")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 2)")
    parser.add_argument("--torch_python", default=None, help="Python for torchvision's side")
    args = parser.parse_args(argv)
    items_lib.forbid_tensorflow()
    # A TERM (e.g. `timeout`) ends the run like Ctrl-C: subprocess.run kills the running item.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    start = time.perf_counter()
    budget = args.budget_s or (120.0 if args.tiny else 450.0)
    plan = items_lib.plan(
        tiny=args.tiny,
        batch_sizes=args.batch_sizes,
        models=args.models.split(","),
        modes=args.modes.split(","),
        impls=args.impls.split(","),
        steps=args.steps,
        warmup=args.warmup,
        torch_python=args.torch_python,
    )
    # Every planned item has its row from the start: a run stopped early still lists them.
    results = [(spec, {"error": "not run"}) for spec in plan]
    command = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])

    def write():
        items_lib.write_table(
            args.output, results, command=command, elapsed_s=time.perf_counter() - start
        )

    write()
    for index, spec in enumerate(plan):
        left = budget - (time.perf_counter() - start)
        if left < args.min_item_s:
            result = {"error": f"skipped: {max(left, 0):.0f} s of the budget left"}
        else:
            run = run_ours if spec["impl"] == "ours" else run_torch
            item_start = time.perf_counter()
            try:
                result = run(spec, min(args.item_timeout_s, left))
            except KeyboardInterrupt:
                results[index] = (spec, {"error": "interrupted (the suite was stopped)"})
                write()
                print(f"interrupted; the finished items are in {args.output}", file=sys.stderr)
                return 130
            result["wall_s"] = time.perf_counter() - item_start
        results[index] = (spec, result)
        print(items_lib.describe(spec, result), flush=True)
        write()
    print(f"table: {args.output} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
