"""Test-wide settings: compile fast (tiny models; XLA's optimisation passes dominate)."""

import os

# Subprocesses started by tests (multi-device, kill-and-resume) inherit this.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update(
    "jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"
)
