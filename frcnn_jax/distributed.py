"""Starting JAX's multi-process runtime: explicit environment variables or cluster auto-detection.

One process per host (or per accelerator, if the launcher prefers) runs the same program; after
``initialize()`` every process sees all devices of the job in ``jax.devices()``, its own in
``jax.local_devices()``, and ``jax.process_index()`` / ``jax.process_count()`` tell it its share.

Where the job's shape comes from, first match wins:
  1. ``JAX_COORDINATOR_ADDRESS`` ("host:port" of process 0), ``JAX_NUM_PROCESSES`` and
     ``JAX_PROCESS_ID`` (0-based), all three set: used as given. The names are those of
     ``jax.distributed.initialize``'s arguments; this is the route for a laptop, plain ssh, or a
     launcher JAX does not know.
  2. otherwise JAX's cluster auto-detection fills in what is unset: SLURM (``srun``), Open MPI
     (``mpirun``), Cloud TPU pod slices, Kubernetes (indexed Jobs / JobSets), and mpi4py when
     ``JAX_CLUSTER_DETECTION_METHOD=mpi4py`` names it (opt-in in JAX).
CPU devices of different processes talk through gloo (TCP): ``jax_cpu_collectives_implementation``
is set to "gloo" unless the user chose another implementation ("mpi"). JAX 0.10 already defaults
to gloo; older versions default to none, and every cross-process computation on CPU then fails.
"""

from __future__ import annotations

import os
import pickle

import jax
import numpy as np
from absl import logging

_EXPLICIT = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class DistributedInitError(RuntimeError):
    """The distributed runtime could not start; the message says which setting to fix."""


def _explicit_arguments(environ) -> dict | None:
    """initialize() arguments from JAX_COORDINATOR_ADDRESS/NUM_PROCESSES/PROCESS_ID, or None."""
    values = {name: environ.get(name, "").strip() for name in _EXPLICIT}
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if not value]
    if missing:
        # The coordinator address alone is a legitimate hint to auto-detection (JAX reads it).
        if missing == list(_EXPLICIT[1:]):
            return None
        raise DistributedInitError(
            f"{', '.join(missing)} not set while {', '.join(sorted(set(_EXPLICIT) - set(missing)))}"
            " is: set all three of JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=N and "
            "JAX_PROCESS_ID=i (0 <= i < N), or none of them to let JAX detect the cluster."
        )
    try:
        num_processes = int(values["JAX_NUM_PROCESSES"])
        process_id = int(values["JAX_PROCESS_ID"])
    except ValueError:
        raise DistributedInitError(
            f"JAX_NUM_PROCESSES={values['JAX_NUM_PROCESSES']!r} and JAX_PROCESS_ID="
            f"{values['JAX_PROCESS_ID']!r} must be integers."
        ) from None
    if not 0 <= process_id < num_processes:
        raise DistributedInitError(
            f"JAX_PROCESS_ID={process_id} must lie in [0, JAX_NUM_PROCESSES={num_processes})."
        )
    if ":" not in values["JAX_COORDINATOR_ADDRESS"]:
        raise DistributedInitError(
            f"JAX_COORDINATOR_ADDRESS={values['JAX_COORDINATOR_ADDRESS']!r} needs a port: "
            "host:port of process 0, e.g. localhost:12355."
        )
    return {
        "coordinator_address": values["JAX_COORDINATOR_ADDRESS"],
        "num_processes": num_processes,
        "process_id": process_id,
    }


def is_initialized() -> bool:
    """Whether this process already joined a distributed runtime."""
    return jax.distributed.is_initialized()


def initialize(*, environ=None, initialization_timeout: int = 300) -> tuple[int, int]:
    """Joins the job's distributed runtime (module docstring); returns (process_index, count).

    Must run before anything touches a JAX device or backend (jax.devices(), an array, a jit).
    Calling it again in an initialised process does nothing. ``environ`` (default os.environ) is
    read for the explicit variables; ``initialization_timeout`` (s) bounds the wait for all
    processes to connect.

    Raises:
      DistributedInitError: half of the explicit variables set, or neither they nor a known
        cluster environment gave the job's shape, or connecting failed.
    """
    if is_initialized():
        return jax.process_index(), jax.process_count()
    environ = os.environ if environ is None else environ
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    arguments = _explicit_arguments(environ) or {}
    how = "JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID" if arguments else "auto"
    try:
        jax.distributed.initialize(**arguments, initialization_timeout=initialization_timeout)
    except (ValueError, RuntimeError) as error:
        message = str(error)
        if "should be defined" in message or "must be defined" in message:
            raise DistributedInitError(
                "config.distributed=True but no cluster was found: run under srun / mpirun / a "
                "Cloud TPU pod / Kubernetes, or set JAX_COORDINATOR_ADDRESS=host:port (of process "
                "0), JAX_NUM_PROCESSES and JAX_PROCESS_ID in every process."
            ) from error
        raise DistributedInitError(
            f"jax.distributed.initialize ({how}) failed: {type(error).__name__}: {error}"
        ) from error
    logging.info(
        "distributed runtime (%s): process %d of %d, %d local / %d global devices",
        how,
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return jax.process_index(), jax.process_count()


def allgather_objects(value) -> list:
    """``[value of process 0, value of process 1, ...]`` on every process (picklable values).

    A collective: every process must call it. Values are pickled to bytes and gathered as
    padded uint8 arrays through ``multihost_utils.process_allgather``; with one process it
    returns ``[value]`` without copying.
    """
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils  # noqa: PLC0415

    payload = np.frombuffer(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int64(payload.size))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: payload.size] = payload
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [pickle.loads(gathered[i, : int(n)].tobytes()) for i, n in enumerate(sizes)]
