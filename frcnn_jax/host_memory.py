"""Keeps freed host memory mapped on CPU-only hosts, so XLA:CPU inference stops page-faulting.

XLA:CPU takes each step's temporaries from malloc (hundreds of MiB for VGG16 at
600x1000). glibc serves blocks that large with fresh ``mmap`` pages and unmaps them
at ``free``, so every step faults its whole working set in again, zero-filled by the
kernel: measured 330k minor faults and 0.7-0.85 s of system time per VGG16 forward
at 608x1024 on 2 cores (3.28 s a forward). With one malloc arena, no ``mmap`` for
large blocks and no trimming of the heap, freed pages stay mapped and the next step
reuses them: 0 faults, 2.84 s; the whole detector's inference went from 3.80 to
3.35 s an image at the same peak RSS (benchmarks/RESULTS.md). Training gains too:
configs/custom.py's 26% (6.3 against 5.0 images/s; 19 s of system time in 1.5 epochs
against 69 s) for 25% more peak RSS (3.1 against 2.5 GiB). Full-size backbones' training
gains nothing and fragments the one heap when two steps' temporaries interleave: peak RSS
9.4 against 5.2 GiB (VGG16, 600x1000), 15.1 against 5.7 GiB (ResNet-50-FPN, 800x1333); turn
it off for them (``FRCNN_JAX_TUNE_MALLOC=0``, README "CPU notes").
train.py, eval.py, predict and the benchmarks (train_bench.py, infer_bench.py) tune by
default.

Nothing here imports JAX: call :func:`tune_malloc` first thing in a program, before
JAX or TensorFlow start their threads (eval.py, ``python -m frcnn_jax.predict`` and
the benchmarks do). Environment variable ``FRCNN_JAX_TUNE_MALLOC``: ``1`` always,
``0`` never; unset, the program's default applies, and only where no accelerator
plugin for JAX is installed (device hosts keep their tensors in device memory, and
their input threads would contend for the one arena).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

# mallopt(3) parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# mallopt(3): "-1 disables trimming completely". Not 2**31 - 1, mallopt's largest positive int:
# glibc still trims a free top chunk larger than that, and a VGG16 600x1000 train step frees
# ~3 GiB at once, so every step returned it and faulted 1.6 GB back in (412k faults, ~1.3 s of
# system time a step).
_NEVER_TRIM = -1

# JAX plugins whose presence means the host has an accelerator for JAX.
ACCELERATOR_PLUGINS = (
    "jax_cuda12_plugin",
    "jax_cuda13_plugin",
    "jax_rocm60_plugin",
    "jax_rocm7_plugin",
    "libtpu",
)

ENV_VAR = "FRCNN_JAX_TUNE_MALLOC"

# The same settings as glibc environment variables, for a child process (the benchmarks give
# torchvision's subprocess the allocator ours runs with).
GLIBC_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    # The environment's tunable is a size_t: its largest value.
    "MALLOC_TRIM_THRESHOLD_": str(2**64 - 1),
}


def _has_accelerator_plugin() -> bool:
    return any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS)


def tune_malloc(*, default: bool = True, force: bool | None = None) -> bool:
    """Sets glibc malloc to keep freed memory (one arena, no mmap, no trim); True if applied.

    ``default``: whether to tune on a CPU-only host when ``FRCNN_JAX_TUNE_MALLOC`` is
    unset. ``force`` True or False overrides
    the variable, ``default`` and the accelerator check. Does nothing (False) off Linux
    or without glibc's ``mallopt``.
    """
    if force is None:
        setting = os.environ.get(ENV_VAR, "").strip().lower()
        if setting not in ("", "0", "1", "false", "true"):
            raise ValueError(f"{ENV_VAR} must be 0 or 1, got {os.environ[ENV_VAR]!r}")
        force = {"": None, "0": False, "false": False, "1": True, "true": True}[setting]
    if force is False or (force is None and (not default or _has_accelerator_plugin())):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return False
    return all(
        mallopt(param, value) == 1
        for param, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _NEVER_TRIM))
    )
