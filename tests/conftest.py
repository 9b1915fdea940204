"""Test-wide settings: compile fast (tiny models; XLA's optimisation passes dominate), and
compile each program once per run: one persistent compilation cache for the run's xdist
workers and every subprocess a test starts (train.py, multi-device and kill-and-resume jobs
build the same tiny programs again and again)."""

import getpass
import os
import tempfile

# Subprocesses started by tests (multi-device, kill-and-resume) inherit these.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# xdist gives the workers of one run the same id; a plain run uses its own process id. A key is
# the program's HLO, the compile options and the jax version, so a stale entry is never read
# for changed code.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"frcnn_jax_tests_{getpass.getuser()}", _RUN[:16]),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update(
    "jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"
)


def pytest_sessionfinish(session):
    """The run's cache goes with the run (xdist's controller finishes after its workers)."""
    if hasattr(session.config, "workerinput"):
        return
    import shutil

    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
