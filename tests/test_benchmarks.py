"""Smoke tests: both benchmarks run on CPU with a tiny config and print every figure.

Each runs as a subprocess, as users run it, with ``--torch``: where torchvision
cannot run (not installed, or a CUDA build next to a CPU torch) the benchmark
must say so and still report our figures.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tests/tiny.py's tiny_config as a config file (config_flags loads files, not functions).
TINY_CONFIG = f"""
import sys
sys.path.insert(0, {os.path.join(REPO_ROOT, "tests")!r})
from tiny import tiny_config


def get_config():
    return tiny_config()
"""


@pytest.mark.parametrize("script", ["train_bench.py", "infer_bench.py"])
def test_benchmark_prints_its_figures(script, tmp_path):
    config = tmp_path / "tiny_bench_config.py"
    config.write_text(TINY_CONFIG)
    # Compilation dominates at this size; skip XLA's optimisation passes.
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_PLATFORMS": "cpu"}
    command = [
        sys.executable, os.path.join(REPO_ROOT, "benchmarks", script), f"--config={config}",
        "--batch_size=2", "--image_size=64", "--steps=2", "--warmup=1", "--matmul_size=256",
        "--torch",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for field in (
        "benchmark: backbone=small dtype=float32 batch=2 image=64x64",
        "device: cpu",
        "compile time:",
        "steady images/s:",
        "pipelined images/s:",
        "peak memory:",
        "FLOPs per step:",
        "MFU:",
        "== torchvision FasterRCNN",
        "ratio ours/theirs (images/s):",
        "markdown: | ",
    ):
        assert field in out, f"{field!r} missing from:\n{out}"
    # The small backbone has no torchvision counterpart, and torchvision may be absent.
    assert "not runnable here: torchvision cannot run:" in out


def test_export_benchmark_prints_a_row_per_format(tmp_path):
    # ONNX's row is left out: its conversion (tested in test_export.py) would double the time.
    config = tmp_path / "tiny_bench_config.py"
    config.write_text(TINY_CONFIG)
    env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "JAX_PLATFORMS": "cpu"}
    command = [
        sys.executable, os.path.join(REPO_ROOT, "benchmarks", "export_bench.py"),
        f"--config={config}", "--batch_sizes=2", "--steps=1", "--warmup=0",
        "--formats=detector,stablehlo,saved_model",
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "markdown: | format | batch 2 |" in proc.stdout, proc.stdout
    for name in ("detector", "stablehlo", "saved_model"):
        assert f"markdown: | {name} | " in proc.stdout, proc.stdout
