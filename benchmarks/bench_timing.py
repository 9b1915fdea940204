"""Step timing and figures shared by both sides of the benchmarks; needs neither JAX nor torch.

torch_detection.py runs in a Python that may hold only torch, torchvision and
numpy (``--torch_python``), so what both sides measure with lives here.
"""

from __future__ import annotations

import resource
import statistics
import time

# torch_detection.py prints its result as JSON on one line after this marker.
TORCH_MARKER = "TORCH_RESULT "


def time_steps(run_step, sync, *, warmup: int, steps: int) -> dict[str, float]:
    """Median synchronised step time and pipelined time per step, in seconds.

    ``run_step(i)`` launches step i; ``sync(out)`` waits for its result.
    """
    for i in range(warmup):
        sync(run_step(i))
    times = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        sync(run_step(i))
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    out = None
    for i in range(warmup + steps, warmup + 2 * steps):
        out = run_step(i)
    sync(out)
    return {
        "median_s": statistics.median(times),
        "pipelined_s": (time.perf_counter() - start) / steps,
    }


def max_rss_bytes() -> int:
    """This process's peak resident memory since it started its program.

    Linux: ``VmHWM`` of /proc/self/status. ``getrusage``'s ``ru_maxrss`` (the fallback) carries
    the parent's peak over fork and exec, so torchvision's subprocess, started while our side
    holds its memory (``--rounds``), would report ours.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f} GiB"


def mfu(result: dict) -> str:
    """Model FLOPs utilisation of a result dict as "12.3%" ("n/a" without a FLOP count)."""
    if result["flops"] <= 0:
        return "n/a"
    return f"{100 * result['flops'] / result['median_s'] / result['matmul_flops_per_s']:.1f}%"
