"""Test-wide settings: compile fast (tiny models; XLA's optimisation passes dominate), and
compile each program once per run: one persistent compilation cache for the run's xdist
workers and every subprocess a test starts (train.py, multi-device and kill-and-resume jobs
build the same tiny programs again and again)."""

import os
import tempfile

# Subprocesses started by tests (multi-device, kill-and-resume) inherit these.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The process that starts the run (pytest, or xdist's controller) makes the cache folder; xdist
# workers and test subprocesses inherit it through the environment. A key is the program's HLO,
# the compile options and the jax version, so no entry is read for changed code. A folder set by
# the user is used as is and kept.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="frcnn_jax_test_cache_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update(
    "jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"
)


def pytest_sessionfinish(session):
    """The run's cache goes with the run (xdist's controller finishes after its workers)."""
    if not _OWN_CACHE or hasattr(session.config, "workerinput"):
        return
    import shutil

    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
