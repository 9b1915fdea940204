"""Shared command line of train_bench.py and infer_bench.py: flags, batches, reports.

Shape shorthand: B batch, H, W image size, G max gt boxes.

How both sides are measured: bench_lib.py (timing rules, MFU). This module holds what
reads the flags; the flag-free pieces live in bench_lib.py (also used by gpu_suite.py).
"""

from __future__ import annotations

import os
import sys
from statistics import median

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run as a script from anywhere: the package and configs/ live in the repository root.
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from frcnn_jax import host_memory  # noqa: E402

# Before JAX starts its threads, with the default of the programs measured: train.py, eval.py
# and predict all tune on a CPU-only host (torchvision's subprocess gets the same settings).
# FRCNN_JAX_TUNE_MALLOC=0/1 overrides; see host_memory.py.
MALLOC_TUNED = host_memory.tune_malloc()

import bench_lib  # noqa: E402
from absl import app, flags  # noqa: E402
from bench_lib import device_description, gib, mfu, versions  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/voc.py.")
flags.DEFINE_integer("batch_size", None, "Images per step (default: config.batch_size).")
flags.DEFINE_string("image_size", None, "H,W or S (default: data.min_size,data.max_size).")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_integer("num_classes", 20, "Object classes (without background), VOC's 20.")
flags.DEFINE_integer("matmul_size", None, "Side of the reference matmul (default 8192, CPU 1024).")
flags.DEFINE_bool("torch", False, "Also run torchvision's Faster R-CNN (in a subprocess).")
flags.DEFINE_string(
    "torch_python",
    None,
    "Python that runs torchvision's side (default: this one). It needs only torch, torchvision "
    "and numpy, so a separate environment can hold a torchvision whose compiled ops load.",
)
flags.DEFINE_integer(
    "rounds",
    1,
    "Time in this many rounds. With --torch the sides take turns: each round runs "
    "torchvision's steps (a fresh subprocess) and then ours (compiled once), so both are timed "
    "at the same moments of a noisy machine; figures are medians over the rounds, and each "
    "round's ratio is printed. For CPU hosts: JAX holds its memory while torchvision runs.",
)
flags.mark_flag_as_required("config")


def train_config(argv) -> tuple:
    """(--config with --batch_size applied, image size) for a training benchmark's main.

    Raises app.UsageError for arguments that are not flags.
    """
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    if FLAGS.batch_size:
        config.batch_size = FLAGS.batch_size
    return config, image_size(config)


def image_size(config) -> tuple[int, int]:
    """(H, W) from --image_size, else the config's (min_size, max_size) landscape image."""
    if FLAGS.image_size:
        sides = [int(s) for s in FLAGS.image_size.split(",")]
        return (sides[0], sides[-1])
    return (config.data.min_size, config.data.max_size)


def synthetic_batches(config, *, batch_size: int, size: tuple[int, int]) -> list[dict]:
    """Two random batches of one shape (``bench_lib.synthetic_batches``) for this config."""
    return bench_lib.synthetic_batches(
        batch_size=batch_size,
        size=size,
        max_boxes=config.data.max_boxes,
        num_classes=FLAGS.num_classes,
    )


def run_torch(
    model, batches: list[dict], size, *, compute_dtype: str, training: bool, profile_steps: int = 0
) -> dict:
    """``bench_lib.run_torch`` with the flags' steps, matmul size, Python and our allocator."""
    return bench_lib.run_torch(
        model,
        batches,
        size,
        compute_dtype=compute_dtype,
        training=training,
        warmup=FLAGS.warmup,
        steps=FLAGS.steps,
        matmul_size=FLAGS.matmul_size,
        torch_python=FLAGS.torch_python,
        malloc_tuned=MALLOC_TUNED,
        profile_steps=profile_steps,
    )


def run_sides(
    run_ours, model, host_batches: list[dict], size, *, compute_dtype: str, training: bool
):
    """(ours, theirs) by the flags: ``theirs`` is None without --torch.

    ``run_ours(rounds=, before_round=)`` compiles and times our side (jax_detection's
    runners). One round: torchvision first, in its own process, while JAX holds no device
    memory yet. Several: torchvision's round runs before each of ours (after a failed one, no
    more are tried).
    """
    if FLAGS.rounds < 1:
        raise app.UsageError(f"--rounds must be >= 1, got {FLAGS.rounds}")
    if not FLAGS.torch:
        return run_ours(rounds=FLAGS.rounds, before_round=None), None
    theirs = []

    def torch_round(r: int) -> None:
        if not theirs or "error" not in theirs[0]:
            theirs.append(
                run_torch(model, host_batches, size, compute_dtype=compute_dtype, training=training)
            )

    if FLAGS.rounds == 1:
        torch_round(0)
        ours = run_ours(rounds=1, before_round=None)
    else:
        ours = run_ours(rounds=FLAGS.rounds, before_round=torch_round)
    return ours, theirs[0] if len(theirs) == 1 else bench_lib.combine_rounds(theirs)


def report(name: str, result: dict, batch_size: int) -> None:
    """Prints one implementation's figures (``result`` as returned by the runners)."""
    print(f"== {name} ==")
    if "error" in result:
        print(f"not runnable here: {result['error']}")
        return
    label = "compile time" if "compile_s" in result else "first step (eager, no compile)"
    print(f"{label}: {result.get('compile_s', result.get('first_step_s')):.2f} s")
    rounds = len(result.get("rounds", ())) or 1
    over = f"{FLAGS.steps} steps after {FLAGS.warmup} warm-up"
    if rounds > 1:
        over = f"median of {rounds} rounds' medians, each {over}"
    print(
        f"steady images/s: {batch_size / result['median_s']:.3f} "
        f"(median step {result['median_s'] * 1e3:.1f} ms; {over})"
    )
    print(
        f"pipelined images/s: {batch_size / result['pipelined_s']:.3f} "
        f"({FLAGS.steps} steps, one sync{'; median of the rounds' if rounds > 1 else ''})"
    )
    print(f"peak memory: {gib(result['peak_bytes'])} ({result['peak_what']})")
    flops, rate = result["flops"], result["matmul_flops_per_s"]
    if flops > 0:
        print(
            f"FLOPs per step: {flops:.3e} ({result['flops_what']}); achieved "
            f"{flops / result['median_s'] / 1e12:.3f} TFLOP/s"
        )
        print(
            f"MFU: {mfu(result)} of a measured {result['matmul_what']} "
            f"matmul rate of {rate / 1e12:.3f} TFLOP/s"
        )
    else:
        print("MFU: n/a (no FLOP count from this backend)")


def report_all(
    bench: str,
    config,
    batch_size: int,
    size: tuple[int, int],
    name: str,
    ours: dict,
    theirs: dict | None,
) -> None:
    """Our figures, torchvision's (None: not asked for) with the ratio, and RESULTS.md rows."""
    report(name, ours, batch_size)
    rows = [("ours", ours)]
    if theirs is not None:
        suffix = f" ({theirs['versions']})" if "versions" in theirs else ""
        report(f"torchvision FasterRCNN{suffix}", theirs, batch_size)
        report_ratio(ours, theirs, batch_size)
        rows.append(("torchvision", theirs))
    print_markdown_rows(bench, config, batch_size, size, rows)


def report_ratio(ours: dict, theirs: dict, batch_size: int) -> None:
    if "error" in theirs or "error" in ours:
        print("ratio ours/theirs (images/s): n/a (torchvision did not run)")
        return
    if "rounds" in ours and "rounds" in theirs:
        ratios = bench_lib.round_ratios(ours, theirs)
        for r, (o, t, ratio) in enumerate(zip(ours["rounds"], theirs["rounds"], ratios), 1):
            print(
                f"round {r}: ours {batch_size / o['median_s']:.3f}, torchvision "
                f"{batch_size / t['median_s']:.3f} images/s: {ratio:.2f}x"
            )
        print(f"ratio ours/theirs (images/s), median of the rounds' ratios: {median(ratios):.2f}x")
    print(
        f"ratio ours/theirs (images/s): steady {theirs['median_s'] / ours['median_s']:.2f}x, "
        f"pipelined {theirs['pipelined_s'] / ours['pipelined_s']:.2f}x"
    )


def print_header(bench: str, config, batch_size: int, size: tuple[int, int]) -> None:
    print(
        f"{bench} benchmark: backbone={config.model.backbone} dtype={config.model.dtype} "
        f"batch={batch_size} image={size[0]}x{size[1]} num_classes={FLAGS.num_classes}"
    )
    padded = bench_lib.padded_size(size)
    print(f"padded to {padded[0]}x{padded[1]} (the pipeline's buckets); torchvision pads itself")
    print(f"device: {device_description()}; {versions()}")
    print(f"host malloc tuned (frcnn_jax.host_memory): {MALLOC_TUNED}")
    print(f"command: {' '.join(sys.argv)}")


def print_markdown_rows(
    bench: str, config, batch_size: int, size: tuple[int, int], rows: list[tuple[str, dict]]
) -> None:
    """One RESULTS.md table row per implementation."""
    print(
        "markdown: | bench | impl | backbone | dtype | batch | image | compile/first s | "
        "images/s | pipelined images/s | peak memory | MFU |"
    )
    for name, r in rows:
        if "error" in r:
            continue
        first = r.get("compile_s", r.get("first_step_s"))
        print(
            f"markdown: | {bench} | {name} | {config.model.backbone} | {config.model.dtype} | "
            f"{batch_size} | {size[0]}x{size[1]} | {first:.1f} | "
            f"{batch_size / r['median_s']:.3g} | {batch_size / r['pipelined_s']:.3g} | "
            f"{gib(r['peak_bytes'])} | {mfu(r)} |"
        )
