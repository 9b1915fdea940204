"""Placing the train step on devices: a data-parallel mesh (jit with shardings) or ``pmap``.

Shape shorthand: B global batch, D devices.
"""

from __future__ import annotations

import functools

import flax
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from frcnn_jax.models import conv
from frcnn_jax.training.step import train_step

# Keys of a data batch that the train step reads (the rest stays on the host).
TRAIN_KEYS = ("images", "image_sizes", "scales", "gt_boxes", "gt_classes", "gt_mask")
DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
    """A 1-D data-parallel mesh over all (or the given) devices."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Splits the leading (batch) axis over the mesh's data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def jit_train_step(mesh: Mesh):
    """``train_step`` jitted with the batch sharded over ``mesh`` and the state replicated.

    The state argument is donated: its buffers are reused for the new state.
    """
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        train_step,
        in_shardings=(replicated, data_sharding(mesh), replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
        compiler_options=conv.compiler_options(mesh.devices.flat[0].platform),
    )


def pmap_train_step(axis_name: str = "batch"):
    """``train_step`` under ``jax.pmap``: inputs carry a leading device axis."""
    return jax.pmap(
        functools.partial(train_step, axis_name=axis_name),
        axis_name=axis_name,
        in_axes=(0, 0, None),
        donate_argnums=0,
    )


def replicate_for_pmap(tree, num_devices: int | None = None):
    """Stacks a pytree ``num_devices`` times (default: all local devices) for ``pmap``."""
    n = jax.local_device_count() if num_devices is None else num_devices
    return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree)


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Puts the train keys of a (single-process) host batch on the mesh, split along the batch."""
    return {k: jax.device_put(batch[k], data_sharding(mesh)) for k in TRAIN_KEYS}


def replicate(tree, mesh: Mesh):
    """Places a pytree fully replicated on the mesh.

    Goes through host (NumPy) values: with several processes, ``jax.device_put`` of an array
    already on a local device onto a multi-process sharding gives (JAX 0.10) an array that fails
    later ("must have one shard each"); from host values every process supplies its replicas.
    """
    return jax.device_put(jax.device_get(tree), NamedSharding(mesh, P()))


def unreplicate_metrics(metrics) -> dict[str, float]:
    return {k: float(np.asarray(v).reshape(-1)[0]) for k, v in flax.core.unfreeze(metrics).items()}
