"""host_memory.tune_malloc: the switch, and that freed memory really stays mapped.

Each case runs in a fresh interpreter: mallopt changes the whole process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates, touches and frees 256 MiB twice through malloc; prints the minor page faults of
# the second round. Without tuning glibc mmaps the block and unmaps it at free, so the second
# round faults all 65536 pages in again; tuned, it reuses the same mapped heap pages.
FAULTS = """
import ctypes, resource, sys
sys.path.insert(0, {root!r})
from frcnn_jax import host_memory
print("applied", host_memory.tune_malloc(force={force}))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
n = 256 * 2**20
for round_ in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(ctypes.c_void_p(p))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print("faults", faults)
"""


def _run(code: str, **env) -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_tuned_malloc_reuses_freed_pages():
    untuned = _run(FAULTS.format(root=REPO_ROOT, force=False))
    tuned = _run(FAULTS.format(root=REPO_ROOT, force=True))
    assert untuned["applied"] == "False" and tuned["applied"] == "True"
    pages = 256 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert int(untuned["faults"]) > pages // 2  # every round maps fresh pages
    assert int(tuned["faults"]) < pages // 100  # the second round reuses the first's


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_glibc_environment_has_the_same_effect():
    # What the benchmarks hand torchvision's subprocess instead of calling mallopt.
    from frcnn_jax import host_memory

    child = _run(FAULTS.format(root=REPO_ROOT, force=False), **host_memory.GLIBC_ENV)
    assert int(child["faults"]) < 256 * 2**20 // os.sysconf("SC_PAGE_SIZE") // 100


# A block larger than 2 GiB (a VGG16 600x1000 train step frees ~3 GiB at once): glibc trims a
# free top chunk above the trim threshold, so a threshold of 2**31 - 1 (mallopt's largest
# positive int) still handed the block back and the next step faulted it in again. Reads the
# program break (sbrk(0)) after malloc and after free; the pages are never touched, so this
# costs address space, not memory.
TRIM = """
import ctypes, sys
sys.path.insert(0, {root!r})
from frcnn_jax import host_memory
libc = ctypes.CDLL("libc.so.6")
{setup}
libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p
libc.malloc.argtypes, libc.sbrk.argtypes = [ctypes.c_size_t], [ctypes.c_ssize_t]
p = libc.malloc(5 * 2**29)
grown = libc.sbrk(0)
libc.free(ctypes.c_void_p(p))
print("returned", grown - libc.sbrk(0))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_tuned_malloc_keeps_blocks_larger_than_2_gib():
    from frcnn_jax import host_memory

    # The settings before the fix: no mmap, the largest positive trim threshold.
    old = (
        "libc.mallopt(host_memory.M_MMAP_MAX, 0); "
        "libc.mallopt(host_memory.M_TRIM_THRESHOLD, 2**31 - 1)"
    )
    before = _run(TRIM.format(root=REPO_ROOT, setup=old))
    tuned = _run(TRIM.format(root=REPO_ROOT, setup="host_memory.tune_malloc(force=True)"))
    child = _run(TRIM.format(root=REPO_ROOT, setup=""), **host_memory.GLIBC_ENV)
    assert int(before["returned"]) >= 2**31  # trimmed at free
    assert int(tuned["returned"]) == 0
    assert int(child["returned"]) == 0


SWITCH = """
import sys
sys.path.insert(0, {root!r})
from frcnn_jax import host_memory
host_memory._has_accelerator_plugin = lambda: {plugin}
print("applied", host_memory.tune_malloc(default={default}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
@pytest.mark.parametrize(
    "env_value, plugin, default, applied",
    [
        ("", False, True, "True"),  # CPU-only host, an inference program: tuned
        ("", False, False, "False"),  # CPU-only host, training: left alone
        ("", True, True, "False"),  # an accelerator plugin is installed: left alone
        ("1", True, False, "True"),  # forced on
        ("0", False, True, "False"),  # forced off
        ("false", False, True, "False"),
    ],
)
def test_environment_switch(env_value, plugin, default, applied):
    code = SWITCH.format(root=REPO_ROOT, plugin=plugin, default=default)
    assert _run(code, FRCNN_JAX_TUNE_MALLOC=env_value)["applied"] == applied


def test_bad_environment_value_is_an_error(monkeypatch):
    from frcnn_jax import host_memory

    monkeypatch.setenv("FRCNN_JAX_TUNE_MALLOC", "yes please")
    with pytest.raises(ValueError, match="FRCNN_JAX_TUNE_MALLOC must be 0 or 1"):
        host_memory.tune_malloc()
