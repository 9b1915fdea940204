"""A run killed with SIGKILL and restarted reaches the parameters of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from frcnn_jax import data as data_lib
from frcnn_jax import workdir as workdir_lib
from frcnn_jax.models import build_model
from tests.tiny import tiny_config

SCRIPT = os.path.join(os.path.dirname(__file__), "resume_check.py")
STEPS = 6


def _run(workdir, steps=STEPS, **kwargs):
    return subprocess.Popen(
        [sys.executable, SCRIPT, str(workdir), str(steps)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def _final_params(workdir):
    config = tiny_config()
    model = build_model(config.model, num_classes=len(data_lib.get_class_names(config.data)))
    variables, step = workdir_lib.restore_variables(str(workdir), model)
    assert step == STEPS
    return jax.device_get(variables["params"])


def _checkpoint_steps(workdir):
    path = os.path.join(workdir, "checkpoints")
    return sorted(int(p) for p in os.listdir(path) if p.isdigit()) if os.path.isdir(path) else []


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # Kill a run once it has saved step 2 and before it ends; the resumed run and the
    # uninterrupted one come after it, so they find its programs in the compilation cache.
    victim = _run(killed)
    deadline = time.time() + 600
    while time.time() < deadline and not [s for s in _checkpoint_steps(killed) if s >= 2]:
        assert victim.poll() is None, victim.stdout.read()[-3000:]
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    saved = _checkpoint_steps(killed)
    assert saved and max(saved) < STEPS, saved  # killed mid-run
    resumed = _run(killed)
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out[-3000:]
    assert "resumed from checkpoint at step" in out
    reference = _run(straight)
    ref_out = reference.communicate(timeout=600)[0]
    assert reference.returncode == 0, ref_out[-3000:]
    a, b = _final_params(straight), _final_params(killed)
    diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b))
    assert max(diffs) < 1e-6, max(diffs)
