"""The Orbax recipe the training loop relies on, proven with 2 processes on CPU (gloo).

Every process calls save and restore with global arrays (sharded and replicated); SIGTERM to
one process makes both save at the agreed step, wait for the save, and exit EXIT_PREEMPTED;
the restarted job continues from that step. Global arrays are made from host (NumPy) values:
``jax.device_put`` of an array already on a local device onto a multi-process sharding gives,
in JAX 0.10, an array that fails later ("must have one shard each").
"""

import re
import signal

import multiprocess

from frcnn_jax import preemption

WORKER = """
import os, sys, time
import numpy as np
from frcnn_jax import distributed, logs, preemption
distributed.initialize()
logs.quiet_third_party()
import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
mesh = Mesh(np.array(jax.devices()), ("data",))
replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
state = {
    "step": jax.device_put(np.int32(0), replicated),
    "w": jax.device_put(np.zeros(3, np.float32), replicated),
    "rows": jax.make_array_from_process_local_data(split, np.zeros((1, 2), np.float32)),
}
update = jax.jit(
    lambda s: {"step": s["step"] + 1, "w": s["w"] + 1.0, "rows": s["rows"] + 2.0},
    out_shardings={"step": replicated, "w": replicated, "rows": split},
)
manager = ocp.CheckpointManager(
    sys.argv[1], options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
)
if manager.latest_step() is not None:
    abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    target = jax.tree.map(abstract, state)
    state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(target))
step = int(state["step"].addressable_data(0))
print(f"START {step}", flush=True)
with preemption.PreemptionWatch() as watch:
    while step < int(sys.argv[2]):
        state = update(state)
        step += 1
        if step % 20 == 0:
            manager.save(step, args=ocp.args.StandardSave(state))
        if step == 5:
            print("RUNNING", flush=True)
        time.sleep(0.01)
        if watch.reached(step):
            manager.save(step, args=ocp.args.StandardSave(state), force=True)
            manager.wait_until_finished()
            print(f"PREEMPTED {step}", flush=True)
            sys.exit(preemption.EXIT_PREEMPTED)
manager.wait_until_finished()
rows = np.asarray(jax.experimental.multihost_utils.process_allgather(state["rows"], tiled=True))
print(f"DONE {step} w={float(state['w'].addressable_data(0)[0])} rows={rows.tolist()}", flush=True)
"""


def _number(pattern, text):
    return int(re.search(pattern, text).group(1))


def test_preempted_job_saves_on_every_process_and_resumes(tmp_path):
    directory = str(tmp_path / "checkpoints")
    with multiprocess.Job(["-c", WORKER, directory, "100000"], num_processes=2) as job:
        job.wait_for_output("RUNNING", timeout=60)
        job.send_signal(signal.SIGTERM, [0])
        first = job.wait(60, check=False)
    assert [r.returncode for r in first] == [preemption.EXIT_PREEMPTED] * 2, first
    stops = {_number(r"PREEMPTED (\d+)", r.stdout) for r in first}
    assert len(stops) == 1
    (stop,) = stops
    assert "orbax" not in "".join(r.stderr for r in first)  # logs.quiet_third_party()

    results = multiprocess.run(
        ["-c", WORKER, directory, str(stop + 7)], num_processes=2, timeout=60
    )
    for result in results:
        assert _number(r"START (\d+)", result.stdout) == stop
        done = re.search(r"DONE (\d+) w=([\d.]+) rows=(.*)", result.stdout)
        assert int(done.group(1)) == stop + 7 and float(done.group(2)) == stop + 7
        assert done.group(3) == str([[2.0 * (stop + 7)] * 2] * 2)
