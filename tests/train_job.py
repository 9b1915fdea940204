"""Runs the tiny config in one process of a test job: ``train_job.py MODE WORKDIR DATA_ROOT JSON``.

MODE "train": ``loop.train_and_evaluate`` (exit 75 when preempted, as train.py); "eval":
``run.evaluate_checkpoint``. DATA_ROOT: a VOC-layout folder (images of several aspect ratios,
so batches fall into two padded shapes). JSON: config overrides ({"a.b": value}).
``config.distributed`` is True whenever the job has more than one process.
``TRAIN_JOB_SECONDS_PER_STEP`` (environment): a pause at every step, so that a test's signal
lands while the job still has steps to run (the tiny steps take milliseconds).
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import logging  # noqa: E402

from frcnn_jax import logs, preemption  # noqa: E402
from frcnn_jax.evaluation import run  # noqa: E402
from frcnn_jax.training import loop  # noqa: E402
from tests.tiny import tiny_config  # noqa: E402

CLASSES = ("circle", "square")


def cache_from_every_process() -> None:
    """Lets every process write the persistent compilation cache, not only process 0.

    On CPU a program's cache key includes its process's devices, so process 1's keys never
    equal process 0's and, as JAX writes only from process 0, process 1 compiled every program
    again in every job (~40 s of each 2-process job on 2 cores). Test harness only: it wraps a
    private JAX function and does nothing when that is gone (the jobs are then slower).
    """
    try:
        from jax._src import compiler, distributed
    except ImportError:
        return
    write = getattr(compiler, "_cache_write", None)
    if write is None or not hasattr(distributed.global_state, "process_id"):
        return

    def write_as_process_0(*args, **kwargs):
        process_id = distributed.global_state.process_id
        distributed.global_state.process_id = 0
        try:
            return write(*args, **kwargs)
        finally:
            distributed.global_state.process_id = process_id

    compiler._cache_write = write_as_process_0


def config_for(data_root: str, **overrides):
    """The tiny model on the voc_dir folder: min_size 64, max_size 96 -> buckets 64x96, 96x64."""
    defaults = {
        "data.name": "voc_dir",
        "data.root": data_root,
        "data.train_split": "trainval",
        "data.eval_split": "test",
        "data.min_size": 64,
        "data.max_size": 96,
        "distributed": int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1,
    }
    return tiny_config(**{**defaults, **overrides})


def pause_every_step(seconds: float) -> None:
    """Sleeps ``seconds`` before every step's preemption check (``PreemptionWatch.reached``)."""
    reached = preemption.PreemptionWatch.reached

    def slow_reached(self, step):
        time.sleep(seconds)
        return reached(self, step)

    preemption.PreemptionWatch.reached = slow_reached


if __name__ == "__main__":
    mode, workdir, root, overrides = sys.argv[1:5]
    cache_from_every_process()
    if os.environ.get("TRAIN_JOB_SECONDS_PER_STEP"):
        pause_every_step(float(os.environ["TRAIN_JOB_SECONDS_PER_STEP"]))
    logging.set_verbosity(logging.INFO)
    logs.quiet_third_party()
    config = config_for(root, **json.loads(overrides))
    if mode == "eval":
        metrics = run.evaluate_checkpoint(config, workdir, progress=False)
        print("METRICS " + json.dumps(metrics), flush=True)
        sys.exit(0)
    try:
        loop.train_and_evaluate(config, workdir)
    except loop.Preempted:
        sys.exit(preemption.EXIT_PREEMPTED)
    print("DONE", flush=True)
