"""frcnn_jax.distributed: 2 processes on localhost join one job and compute across it."""

import json

import multiprocess
import pytest

from frcnn_jax import distributed

# Each process: 1 CPU device, its own rows [2, 3] of a global [4, 3] array; a jitted
# data-parallel computation (mean over the batch axis, a cross-process all-reduce) and an
# explicit psum over the mesh axis.
WORKER = """
import json
import numpy as np
from frcnn_jax import distributed
index, count = distributed.initialize()
import jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
mesh = Mesh(np.array(jax.devices()), ("data",))
rows = np.arange(12, dtype=np.float32).reshape(4, 3)[2 * index : 2 * index + 2]
batch = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), rows)
mean = jax.jit(lambda x: jnp.mean(x * 2.0, axis=0), out_shardings=NamedSharding(mesh, P()))(batch)
total = jax.jit(jax.shard_map(lambda x: jax.lax.psum(jnp.sum(x), "data"), mesh=mesh,
                              in_specs=P("data"), out_specs=P()))(batch)
print("RESULT " + json.dumps({"index": index, "count": count, "devices": jax.device_count(),
      "local": jax.local_device_count(), "shape": list(batch.shape),
      "mean": np.asarray(mean).tolist(), "psum": float(total),
      "collectives": jax.config.jax_cpu_collectives_implementation}))
"""


def _result(stdout):
    line = next(line for line in stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def test_two_processes_run_a_data_parallel_step():
    results = multiprocess.run(["-c", WORKER], num_processes=2, timeout=60)
    outs = [_result(r.stdout) for r in results]
    assert [o["index"] for o in outs] == [0, 1]
    for out in outs:
        assert out["count"] == 2 and out["devices"] == 2 and out["local"] == 1
        assert out["shape"] == [4, 3] and out["collectives"] == "gloo"
        assert out["mean"] == [9.0, 11.0, 13.0]  # 2 * column means of arange(12).reshape(4, 3)
        assert out["psum"] == 66.0  # sum(arange(12))


def test_failed_process_kills_the_job_and_reports_its_output():
    # Process 1 dies before joining; process 0 would wait for it until the init timeout.
    worker = "import os, sys\nif os.environ['JAX_PROCESS_ID'] == '1': sys.exit('boom')\n" + WORKER
    with pytest.raises(multiprocess.JobError, match="(?s)process 1: exit 1.*boom"):
        multiprocess.run(["-c", worker], num_processes=2, timeout=60)


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES not set"),
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
         r"JAX_PROCESS_ID=2 must lie in \[0, JAX_NUM_PROCESSES=2\)"),
        ({"JAX_COORDINATOR_ADDRESS": "h", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
         "needs a port"),
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
         "must be integers"),
    ],
)  # fmt: skip
def test_bad_environment_is_named(environ, message):
    with pytest.raises(distributed.DistributedInitError, match=message):
        distributed._explicit_arguments(environ)


def test_environment_gives_the_arguments():
    environ = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed._explicit_arguments(environ) == {
        "coordinator_address": "h:1",
        "num_processes": 4,
        "process_id": 3,
    }
    assert distributed._explicit_arguments({}) is None
    assert distributed._explicit_arguments({"JAX_COORDINATOR_ADDRESS": "h:1"}) is None


def test_no_cluster_is_explained():
    code = "from frcnn_jax import distributed\ndistributed.initialize()"
    env = {"JAX_COORDINATOR_ADDRESS": None, "JAX_NUM_PROCESSES": None, "JAX_PROCESS_ID": None}
    with pytest.raises(multiprocess.JobError, match="no cluster was found"):
        multiprocess.run(["-c", code], num_processes=1, timeout=60, env=env)
