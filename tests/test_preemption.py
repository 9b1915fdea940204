"""frcnn_jax.preemption: SIGTERM stops every process at one agreed step, with EXIT_PREEMPTED."""

import re
import signal

import multiprocess

from frcnn_jax import preemption

# Steps in lock-step (a cross-process sum per step) until the watch says stop.
WORKER = """
import os, sys, time
import numpy as np
from frcnn_jax import distributed, preemption
if os.environ["DISTRIBUTED"] == "1":
    distributed.initialize()
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
mesh = Mesh(np.array(jax.devices()), ("data",))
data = NamedSharding(mesh, P("data"))
ones = jax.make_array_from_process_local_data(data, np.ones(1, np.float32))
total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, P()))
with preemption.PreemptionWatch() as watch:
    for step in range(1, 3000):
        assert float(total(ones)) == jax.process_count()
        if step == 5:
            print("RUNNING", flush=True)
        time.sleep(0.01)
        if watch.reached(step):
            print(f"STOP {step}", flush=True)
            sys.exit(preemption.EXIT_PREEMPTED)
print("NEVER STOPPED", flush=True)
"""


def _stop_steps(results):
    return [int(re.search(r"STOP (\d+)", r.stdout).group(1)) for r in results]


def test_single_process_stops_at_the_next_step():
    with multiprocess.Job(["-c", WORKER], num_processes=1, env={"DISTRIBUTED": "0"}) as job:
        job.wait_for_output("RUNNING", timeout=60)
        job.send_signal(signal.SIGTERM)
        (result,) = job.wait(60, check=False)
    assert result.returncode == preemption.EXIT_PREEMPTED, result.stderr[-3000:]
    # The signal comes after step 5's "RUNNING"; step 5's own check can already see it when
    # the parent is quick or the worker slow (a loaded machine): 5 is the next check then.
    assert _stop_steps([result])[0] >= 5


def test_two_processes_agree_on_the_step_when_one_gets_sigterm():
    with multiprocess.Job(["-c", WORKER], num_processes=2, env={"DISTRIBUTED": "1"}) as job:
        job.wait_for_output("RUNNING", timeout=60)
        job.send_signal(signal.SIGTERM, [1])
        results = job.wait(60, check=False)
    assert [r.returncode for r in results] == [preemption.EXIT_PREEMPTED] * 2, results
    steps = _stop_steps(results)
    assert steps[0] == steps[1] >= 5
