"""Shared pieces of train_bench.py and infer_bench.py: flags, synthetic batches, timing, reports.

Shape shorthand: B batch, H, W image size, G max gt boxes.

Timing rules (both benchmarks, both libraries): every step is waited on
(``block_until_ready`` / ``torch.cuda.synchronize``); the figure is the median
step time after the warm-up steps. "Pipelined" figures run the timed steps
back to back and wait once at the end, as a training loop does. Model FLOPs
utilisation (MFU) is achieved FLOP/s over the rate of one large dense matmul
of the compute dtype, measured on the same device in the same run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Run as a script from anywhere: the package and configs/ live in the repository root.
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from frcnn_jax import host_memory  # noqa: E402

# Before JAX starts its threads, with the defaults of the programs measured: eval.py and predict
# tune (inference), train.py does not. FRCNN_JAX_TUNE_MALLOC=0/1 overrides; see host_memory.py.
MALLOC_TUNED = host_memory.tune_malloc(default=os.path.basename(sys.argv[0]) == "infer_bench.py")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from bench_timing import TORCH_MARKER, max_rss_bytes, time_steps  # noqa: E402, F401 (re-exported)
from ml_collections import config_flags  # noqa: E402

from frcnn_jax.models import options  # noqa: E402

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
flags.mark_flag_as_required("config")


def image_size(config) -> tuple[int, int]:
    """(H, W) from --image_size, else the config's (min_size, max_size) landscape image."""
    if FLAGS.image_size:
        sides = [int(s) for s in FLAGS.image_size.split(",")]
        return (sides[0], sides[-1])
    return (config.data.min_size, config.data.max_size)


# The data pipeline pads every batch to a bucket whose sides are multiples of 32.
PAD_MULTIPLE = 32


def synthetic_batch(
    seed: int, *, batch_size: int, height: int, width: int, max_boxes: int, num_classes: int
) -> dict[str, np.ndarray]:
    """A random training batch in the data contract's layout.

    Images of ``height`` x ``width`` zero-padded at the bottom and right to the
    next multiples of 32 (Hb, Wb), as the pipeline's buckets: ``images`` uint8
    [B, Hb, Wb, 3]; ``image_sizes`` int32 [B, 2] = (height, width); ``scales``
    float32 [B, 2] ones (the images are taken as unresized);
    ``gt_boxes`` float32 [B, G, 4] (ymin, xmin, ymax, xmax) pixels, 1..min(G, 6)
    real boxes of 10%..60% of the image side; ``gt_classes`` int32 [B, G];
    ``gt_mask`` bool [B, G].
    """
    rng = np.random.default_rng(seed)
    padded = [-(-side // PAD_MULTIPLE) * PAD_MULTIPLE for side in (height, width)]
    images = np.zeros((batch_size, *padded, 3), np.uint8)
    images[:, :height, :width] = rng.integers(0, 256, (batch_size, height, width, 3))
    sides = np.array([height, width, height, width], np.float32)
    sizes = rng.uniform(0.1, 0.6, (batch_size, max_boxes, 2))
    starts = rng.uniform(0.0, 1.0 - sizes)
    boxes = np.concatenate([starts, starts + sizes], axis=-1) * sides  # [B, G, 4]
    counts = rng.integers(1, min(max_boxes, 6) + 1, batch_size)
    mask = np.arange(max_boxes)[None, :] < counts[:, None]
    return {
        "images": images,
        "image_sizes": np.tile(np.array([[height, width]], np.int32), (batch_size, 1)),
        "scales": np.ones((batch_size, 2), np.float32),
        "gt_boxes": np.where(mask[..., None], boxes, 0.0).astype(np.float32),
        "gt_classes": np.where(mask, rng.integers(0, num_classes, mask.shape), 0).astype(np.int32),
        "gt_mask": mask,
    }


def synthetic_batches(
    config, *, batch_size: int, size: tuple[int, int]
) -> list[dict[str, np.ndarray]]:
    """Two :func:`synthetic_batch` batches of one shape (steps alternate them: no recompile)."""
    return [
        synthetic_batch(
            i,
            batch_size=batch_size,
            height=size[0],
            width=size[1],
            max_boxes=config.data.max_boxes,
            num_classes=FLAGS.num_classes,
        )
        for i in range(2)
    ]


def jax_peak_memory() -> tuple[int, str]:
    """(bytes, what was measured): device peak where the backend reports it, else process RSS."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"], "device peak_bytes_in_use"
    return max_rss_bytes(), "process max RSS"


def jax_matmul_rate(dtype, size: int | None = None) -> tuple[float, int]:
    """(FLOP/s, n) of an n x n x n matmul in ``dtype`` on the default device."""
    n = size or FLAGS.matmul_size or (1024 if jax.default_backend() == "cpu" else 8192)
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    matmul = jax.jit(jnp.matmul)
    seconds = time_steps(lambda i: matmul(a, b), jax.block_until_ready, warmup=2, steps=5)
    return 2 * n**3 / seconds["median_s"], n


def compiled_flops(compiled) -> float:
    """XLA's FLOP count of a compiled program (0 where the backend reports none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def jax_result(config, compiled, *, compile_s: float, timing: dict[str, float]) -> dict:
    """Our figures for :func:`report` from an ahead-of-time ``compiled`` step.

    Adds to ``timing`` (from :func:`time_steps`) and ``compile_s`` the peak memory, XLA's FLOP
    count of ``compiled`` and the measured matmul rate of config.model.dtype.
    """
    dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
    rate, n = jax_matmul_rate(dtype)
    peak, peak_what = jax_peak_memory()
    return {
        **timing,
        "compile_s": compile_s,
        "peak_bytes": peak,
        "peak_what": peak_what,
        "flops": compiled_flops(compiled),
        "flops_what": "XLA cost analysis",
        "matmul_flops_per_s": rate,
        "matmul_what": f"{config.model.dtype} {n}^3",
    }


def versions() -> str:
    import flax  # noqa: PLC0415

    return f"python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}"


def device_description() -> str:
    devices = jax.devices()
    return f"{jax.default_backend()} x{len(devices)} ({devices[0].device_kind}), {platform.node()}"


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f} GiB"


def report(name: str, result: dict, batch_size: int) -> None:
    """Prints one implementation's figures (``result`` as returned by the runners)."""
    print(f"== {name} ==")
    if "error" in result:
        print(f"not runnable here: {result['error']}")
        return
    label = "compile time" if "compile_s" in result else "first step (eager, no compile)"
    print(f"{label}: {result.get('compile_s', result.get('first_step_s')):.2f} s")
    print(
        f"steady images/s: {batch_size / result['median_s']:.3f} "
        f"(median step {result['median_s'] * 1e3:.1f} ms over {FLAGS.steps} steps after "
        f"{FLAGS.warmup} warm-up)"
    )
    print(
        f"pipelined images/s: {batch_size / result['pipelined_s']:.3f} "
        f"({FLAGS.steps} steps, one sync)"
    )
    print(f"peak memory: {_gib(result['peak_bytes'])} ({result['peak_what']})")
    flops, rate = result["flops"], result["matmul_flops_per_s"]
    if flops > 0:
        achieved = flops / result["median_s"]
        print(
            f"FLOPs per step: {flops:.3e} ({result['flops_what']}); achieved "
            f"{achieved / 1e12:.3f} TFLOP/s"
        )
        print(
            f"MFU: {100 * achieved / rate:.1f}% of a measured {result['matmul_what']} "
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
        report_ratio(ours, theirs)
        rows.append(("torchvision", theirs))
    print_markdown_rows(bench, config, batch_size, size, rows)


def report_ratio(ours: dict, theirs: dict) -> None:
    if "error" in theirs or "error" in ours:
        print("ratio ours/theirs (images/s): n/a (torchvision did not run)")
        return
    print(
        f"ratio ours/theirs (images/s): steady {theirs['median_s'] / ours['median_s']:.2f}x, "
        f"pipelined {theirs['pipelined_s'] / ours['pipelined_s']:.2f}x"
    )


def run_torch(
    model, batches: list[dict], size: tuple[int, int], *, compute_dtype: str, training: bool
) -> dict:
    """torchvision's figures on the same batches, from torch_detection.py in a subprocess.

    Returns its JSON result, or ``{"error": why}`` where torchvision cannot load
    or run. A separate process keeps torch's and JAX's device memory (JAX
    preallocates) and peak-RSS figures apart, lets ``--torch_python`` point at
    another environment, and a torchvision that cannot load (a CUDA build next
    to a CPU torch: its compiled nms/roi_align are missing) cannot crash us.
    """
    spec = {
        # Our FasterRCNN's settings, grouped as config.model groups them (tuples become lists).
        "model": {
            "num_classes": model.num_classes,
            "backbone": model.backbone,
            **{
                section: dataclasses.asdict(getattr(model, field))
                for section, (field, _) in options.SECTIONS.items()
            },
        },
        "image_size": list(size),
        "compute_dtype": compute_dtype,
        "training": training,
        "warmup": FLAGS.warmup,
        "steps": FLAGS.steps,
        "matmul_size": FLAGS.matmul_size,
    }
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, batches_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "batches.npz")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        arrays = {f"{i}/{k}": v for i, batch in enumerate(batches) for k, v in batch.items()}
        np.savez(batches_path, **arrays)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_detection.py")
        python = FLAGS.torch_python or sys.executable
        try:
            proc = subprocess.run(
                [python, script, spec_path, batches_path],
                capture_output=True,
                text=True,
                # Same hardware, same allocator: torch gets the malloc settings ours runs with.
                env={**os.environ, **(host_memory.GLIBC_ENV if MALLOC_TUNED else {})},
            )
        except OSError as e:
            return {"error": f"--torch_python={python!r} cannot run: {e}"}
    for line in proc.stdout.splitlines():
        if line.startswith(TORCH_MARKER):
            return json.loads(line[len(TORCH_MARKER) :])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    why = lines[-1] if lines else f"exit status {proc.returncode}, no output"
    return {"error": f"torchvision cannot run: {why}"}


def print_header(bench: str, config, batch_size: int, size: tuple[int, int]) -> None:
    print(
        f"{bench} benchmark: backbone={config.model.backbone} dtype={config.model.dtype} "
        f"batch={batch_size} image={size[0]}x{size[1]} num_classes={FLAGS.num_classes}"
    )
    padded = [-(-side // PAD_MULTIPLE) * PAD_MULTIPLE for side in size]
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
        mfu = (
            f"{100 * r['flops'] / r['median_s'] / r['matmul_flops_per_s']:.1f}%"
            if r["flops"] > 0
            else "n/a"
        )
        first = r.get("compile_s", r.get("first_step_s"))
        print(
            f"markdown: | {bench} | {name} | {config.model.backbone} | {config.model.dtype} | "
            f"{batch_size} | {size[0]}x{size[1]} | {first:.1f} | "
            f"{batch_size / r['median_s']:.3g} | {batch_size / r['pipelined_s']:.3g} | "
            f"{_gib(r['peak_bytes'])} | {mfu} |"
        )
