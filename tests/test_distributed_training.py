"""Training and evaluation across processes: topology-independent batches, preemption, resume.

Each case starts real processes (``multiprocess.Job``, CPU devices, gloo) running
``train_job.py`` on a VOC-layout folder whose images fall into two padded shapes.
"""

import json
import os
import re
import signal

import jax
import multiprocess
import numpy as np
import pytest

from frcnn_jax import preemption
from frcnn_jax import workdir as workdir_lib
from frcnn_jax.models import build_model
from tests import train_job
from tests.fake_voc import FakeExample, FakeObject, write_voc_layout

SCRIPT = os.path.join(os.path.dirname(__file__), "train_job.py")
STEPS = 12
# Checkpoints at the end only: a preempted run holds exactly its preemption checkpoint.
SCHEDULE = dict(num_train_steps=STEPS, checkpoint_every_steps=1000, log_every_steps=1)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """12 trainval and 6 test images, landscape and portrait, 1-2 objects each."""
    rng = np.random.default_rng(0)
    examples, ids = [], {"trainval": [], "test": []}
    for i in range(18):
        height, width = (48, 72) if i % 3 else (72, 48)
        objects = []
        for _ in range(1 + i % 2):
            h, w = rng.integers(12, 30, size=2)
            y, x = rng.integers(1, height - h), rng.integers(1, width - w)
            objects.append(FakeObject(train_job.CLASSES[i % 2], x, y, x + w, y + h))
        examples.append(FakeExample(f"img{i:02d}", height, width, tuple(objects)))
        ids["trainval" if i < 12 else "test"].append(f"img{i:02d}")
    return str(write_voc_layout(tmp_path_factory.mktemp("voc"), examples, ids,
                                classes=train_job.CLASSES))  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent compilation cache for the module's jobs: a topology's programs compile
    once, not once per process and job (the suite runs on 2 cores)."""
    global _CACHE
    _CACHE = str(tmp_path_factory.mktemp("jax_cache"))


_CACHE = None


def _job(mode, workdir, root, *, processes=1, devices=1, env=None, **overrides):
    args = [SCRIPT, mode, str(workdir), root, json.dumps(overrides)]
    env = {
        "JAX_COMPILATION_CACHE_DIR": _CACHE,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        **(env or {}),
    }
    return multiprocess.Job(args, num_processes=processes, devices_per_process=devices, env=env)


def _train(workdir, root, *, processes=1, devices=1, timeout=240, **overrides):
    with _job("train", workdir, root, processes=processes, devices=devices, **overrides) as job:
        return job.wait(timeout)


def _params(workdir, root, step=STEPS):
    config = train_job.config_for(root)
    model = build_model(config.model, num_classes=len(train_job.CLASSES))
    variables, restored = workdir_lib.restore_variables(str(workdir), model, step=step)
    assert restored == step
    return jax.device_get(variables["params"])


def _assert_same_params(a, b, **tolerance):
    flat_a, flat_b = jax.tree.leaves_with_path(a), jax.tree.leaves(b)
    for (path, x), y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_allclose(x, y, err_msg=jax.tree_util.keystr(path), **tolerance)


@pytest.fixture(scope="module")
def runs(data_root, tmp_path_factory):
    """Workdirs of the same training (global batch 2, two padded shapes) on two topologies.

    1 process x 2 devices is left out: one process reads the same global batches whatever its
    device count, and test_multidevice checks that the sharded step equals the single-device
    step (8 devices, mesh and pmap).
    """
    topologies = {
        "one_device": dict(processes=1, devices=1),
        "two_processes": dict(processes=2, devices=1),
    }
    workdirs = {}
    for name, topology in topologies.items():
        workdirs[name] = tmp_path_factory.mktemp(name)
        results = _train(workdirs[name], data_root, **topology, **SCHEDULE)
        assert all("DONE" in r.stdout for r in results), name
    return workdirs


def test_same_parameters_on_any_topology(data_root, runs):
    """1 process x 1 device and 2 processes x 1 device reach the same parameters: the same
    images, flips and padded shapes in every global batch."""
    reference = _params(runs["one_device"], data_root)
    # Only the order of the gradient sum over devices differs.
    _assert_same_params(_params(runs["two_processes"], data_root), reference, rtol=1e-4, atol=1e-6)


def test_sigterm_saves_and_the_restart_continues_exactly(data_root, runs, tmp_path):
    """SIGTERM to one of 2 processes: both save at one agreed step and exit 75; the restarted
    job (resuming without replaying data) ends with the uninterrupted job's parameters."""
    workdir = tmp_path / "preempted"
    # A pause at every step: with warm compilation caches the tiny job ran its last 9 steps
    # before the notice reached the other process (saved at step 12, or no notice at all).
    slow = {"TRAIN_JOB_SECONDS_PER_STEP": "0.5"}
    with _job("train", workdir, data_root, processes=2, env=slow, **SCHEDULE) as job:
        job.wait_for_output(f"step 3/{STEPS}", timeout=240, process_ids=[0], stream="stderr")
        job.send_signal(signal.SIGTERM, [1])
        results = job.wait(120, check=False)
    assert [r.returncode for r in results] == [preemption.EXIT_PREEMPTED] * 2, results
    saved = workdir_lib.Checkpointer(str(workdir)).all_steps()
    assert len(saved) == 1 and 3 <= saved[0] < STEPS, saved
    log = results[0].stderr
    assert re.search(rf"preempted: checkpoint at step {saved[0]}", log), log[-2000:]

    results = _train(workdir, data_root, processes=2, **SCHEDULE)
    assert f"resumed from checkpoint at step {saved[0]}" in results[0].stderr
    assert "replaying" not in results[0].stderr
    _assert_same_params(
        _params(workdir, data_root), _params(runs["two_processes"], data_root), rtol=1e-6, atol=1e-7
    )


def test_two_process_evaluation_equals_one_process(data_root, runs):
    """eval.py's evaluation split over 2 processes gives the single-process metrics."""
    metrics = []
    for processes in (1, 2):
        with _job("eval", runs["one_device"], data_root, processes=processes) as job:
            results = job.wait(240)
        line = next(x for x in results[0].stdout.splitlines() if x.startswith("METRICS "))
        metrics.append(json.loads(line[len("METRICS ") :]))
    one, two = metrics
    assert one["images"] == two["images"] == 6
    for key in ("voc07_map", "voc_map"):
        assert two[key] == pytest.approx(one[key], abs=1e-6)
    assert two["per_class"] == pytest.approx(one["per_class"], abs=1e-6)
    assert two["coco"] == pytest.approx(one["coco"], abs=1e-6)
