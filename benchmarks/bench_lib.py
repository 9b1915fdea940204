"""Flag-free pieces of the benchmarks: synthetic batches, JAX-side measurements, torchvision's run.

Shape shorthand: B batch, H, W image size, Hb, Wb padded size, G max gt boxes.

Timing rules (every benchmark, both libraries): every step is waited on
(``block_until_ready`` / ``torch.cuda.synchronize``); the figure is the median
step time after the warm-up steps. "Pipelined" figures run the timed steps
back to back and wait once at the end, as a training loop does. Model FLOPs
utilisation (MFU) is achieved FLOP/s over the rate of one large dense matmul
of the compute dtype, measured on the same device in the same run.

Importing this module starts JAX: a program that tunes malloc
(``frcnn_jax.host_memory``) does so first. It never imports TensorFlow.
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_timing import (  # noqa: E402, F401 (re-exported)
    TORCH_MARKER,
    gib,
    max_rss_bytes,
    mfu,
    time_steps,
)

from frcnn_jax import host_memory  # noqa: E402
from frcnn_jax.models import options  # noqa: E402

# The data pipeline pads every batch to a bucket whose sides are multiples of 32.
PAD_MULTIPLE = 32


def padded_size(size: tuple[int, int]) -> tuple[int, int]:
    """(Hb, Wb): (H, W) rounded up to the pipeline's bucket multiple."""
    return tuple(-(-side // PAD_MULTIPLE) * PAD_MULTIPLE for side in size)


def synthetic_batch(
    seed: int, *, batch_size: int, height: int, width: int, max_boxes: int, num_classes: int
) -> dict[str, np.ndarray]:
    """A random training batch in the data contract's layout.

    Images of ``height`` x ``width`` zero-padded at the bottom and right to the
    next multiples of 32 (Hb, Wb), as the pipeline's buckets: ``images`` uint8
    [B, Hb, Wb, 3]; ``image_sizes`` int32 [B, 2] = (height, width);
    ``gt_boxes`` float32 [B, G, 4] (ymin, xmin, ymax, xmax) pixels, 1..min(G, 6)
    real boxes of 10%..60% of the image side; ``gt_classes`` int32 [B, G];
    ``gt_mask`` bool [B, G].
    """
    rng = np.random.default_rng(seed)
    images = np.zeros((batch_size, *padded_size((height, width)), 3), np.uint8)
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
        "gt_boxes": np.where(mask[..., None], boxes, 0.0).astype(np.float32),
        "gt_classes": np.where(mask, rng.integers(0, num_classes, mask.shape), 0).astype(np.int32),
        "gt_mask": mask,
        "scales": np.ones((batch_size, 2), np.float32),  # the images are taken as unresized
    }


def synthetic_batches(
    *, batch_size: int, size: tuple[int, int], max_boxes: int, num_classes: int
) -> list[dict[str, np.ndarray]]:
    """Two :func:`synthetic_batch` batches of one shape (steps alternate them: no recompile)."""
    return [
        synthetic_batch(
            i,
            batch_size=batch_size,
            height=size[0],
            width=size[1],
            max_boxes=max_boxes,
            num_classes=num_classes,
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
    """(FLOP/s, n) of an n x n x n matmul in ``dtype`` on the default device.

    n defaults to 8192 on accelerators, 1024 on CPU.
    """
    n = size or (1024 if jax.default_backend() == "cpu" else 8192)
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


def loop_free_flops(traced) -> float:
    """XLA's FLOP count of a traced program as lowered for CUDA, without compiling it.

    XLA's cost analysis counts a loop's body once, whatever its trip count. On CPU the
    convolution kernel gradients run as scans over blocks of output rows (models/conv.py), so
    the compiled CPU train step's count misses most of their FLOPs (VGG16 600x1000: 7.4e11
    counted against 1.01e12 done). Lowered for CUDA the same step has XLA's plain kernel
    gradients, and RoIPool and NMS in their GPU forms (loop-free or few steps; their FLOPs are
    a rounding error next to the convolutions'). CUDA lowering needs no GPU.
    """
    cost = traced.lower(lowering_platforms=("cuda",)).cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def jax_result(
    config,
    compiled,
    *,
    compile_s: float,
    timing: dict[str, float],
    matmul_size: int | None = None,
    flops: tuple[float, str] | None = None,
) -> dict:
    """Our figures for a report from an ahead-of-time ``compiled`` step.

    Adds to ``timing`` (from :func:`time_steps`) and ``compile_s`` the peak memory, XLA's FLOP
    count of ``compiled`` (or ``flops``: (count, how it was counted)) and the measured matmul
    rate of config.model.dtype.
    """
    dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
    peak, peak_what = jax_peak_memory()  # before the matmul's buffers
    rate, n = jax_matmul_rate(dtype, matmul_size)
    return {
        **timing,
        "compile_s": compile_s,
        "peak_bytes": peak,
        "peak_what": peak_what,
        "flops": flops[0] if flops else compiled_flops(compiled),
        "flops_what": flops[1] if flops else "XLA cost analysis",
        "matmul_flops_per_s": rate,
        "matmul_what": f"{config.model.dtype} {n}^3",
    }


def versions() -> str:
    import flax  # noqa: PLC0415

    return f"python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}"


def device_description() -> str:
    devices = jax.devices()
    return f"{jax.default_backend()} x{len(devices)} ({devices[0].device_kind}), {platform.node()}"


def run_torch(
    model,
    batches: list[dict],
    size: tuple[int, int],
    *,
    compute_dtype: str,
    training: bool,
    warmup: int,
    steps: int,
    matmul_size: int | None = None,
    torch_python: str | None = None,
    malloc_tuned: bool = False,
    timeout_s: float | None = None,
    profile_steps: int = 0,
) -> dict:
    """torchvision's figures on the same batches, from torch_detection.py in a subprocess.

    Returns its JSON result, or ``{"error": why}`` where torchvision cannot load,
    run or finish within ``timeout_s``. A separate process keeps torch's and JAX's
    device memory (JAX preallocates) and peak-RSS figures apart, lets
    ``torch_python`` point at another environment, and a torchvision that cannot
    load (a CUDA build next to a CPU torch: its compiled nms/roi_align are
    missing) cannot crash us. ``malloc_tuned``: give torch the glibc settings ours
    runs with (same hardware, same allocator). ``profile_steps``: also profile that many
    steps by op (the result's ``"profile"``, see torch_profile.py).
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
        "warmup": warmup,
        "steps": steps,
        "matmul_size": matmul_size,
        "profile_steps": profile_steps,
    }
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, batches_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "batches.npz")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        arrays = {f"{i}/{k}": v for i, batch in enumerate(batches) for k, v in batch.items()}
        np.savez(batches_path, **arrays)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_detection.py")
        python = torch_python or sys.executable
        try:
            proc = subprocess.run(
                [python, script, spec_path, batches_path],
                capture_output=True,
                text=True,
                env={**os.environ, **(host_memory.GLIBC_ENV if malloc_tuned else {})},
                timeout=timeout_s,
            )
        except OSError as e:
            return {"error": f"torch_python={python!r} cannot run: {e}"}
        except subprocess.TimeoutExpired:
            return {"error": f"torchvision timed out after {timeout_s:.3g} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(TORCH_MARKER):
            return json.loads(line[len(TORCH_MARKER) :])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    why = lines[-1] if lines else f"exit status {proc.returncode}, no output"
    return {"error": f"torchvision cannot run: {why}"}


def combine_rounds(results: list[dict]) -> dict:
    """One result from several rounds of the same side (an interleaved side by side).

    Step times are the medians of the rounds' medians; the peak memory (where given) is the
    largest; the other figures (FLOPs, matmul rate, versions) come from the first round.
    ``"rounds"`` keeps each round's result. A failed round fails the side (its error).
    """
    if not results:
        raise ValueError("no rounds to combine")
    for r in results:
        if "error" in r:
            return r
    combined = dict(results[0])
    for key in ("median_s", "pipelined_s"):
        combined[key] = float(np.median([r[key] for r in results]))
    if "peak_bytes" in combined:
        combined["peak_bytes"] = max(r["peak_bytes"] for r in results)
    combined["rounds"] = results
    return combined


def round_ratios(ours: dict, theirs: dict) -> list[float]:
    """Each round's steady images/s ratio ours/theirs (theirs' step time over ours')."""
    pairs = zip(ours.get("rounds", ()), theirs.get("rounds", ()), strict=True)
    return [t["median_s"] / o["median_s"] for o, t in pairs]
