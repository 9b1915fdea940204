"""Training glue: model and state construction, the jitted train step, device placement.

Shape shorthand: B global batch, Hb, Wb padded image size, G max gt boxes.

``train_step`` is one pure function holding everything from anchors to the
optax update. It runs

* on one device: ``jax.jit(train_step)``;
* data-parallel over a ``Mesh``: ``jit_train_step(mesh)`` shards the batch on
  the ``"data"`` axis and replicates the state (XLA inserts the gradient
  all-reduce);
* under ``jax.pmap(functools.partial(train_step, axis_name="batch"))``, where
  gradients are averaged with ``lax.pmean``.

All three give the same update: each image's sampling key is
``fold_in(step_key, global image index)`` and losses are averaged per image, so
8 devices x 1 image equal 1 device x 8 images.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from frcnn_jax import optim
from frcnn_jax.models import conv
from frcnn_jax.models.faster_rcnn import FasterRCNN

# Keys of a data batch that the train step reads (the rest stays on the host).
TRAIN_KEYS = ("images", "image_sizes", "gt_boxes", "gt_labels", "gt_mask")
DATA_AXIS = "data"


class TrainState(train_state.TrainState):
    """flax TrainState plus the frozen batch-norm constants and a non-finite guard.

    ``nonfinite_step`` is -1 until a step produces a non-finite loss; that step
    (and every later one) leaves params and optimizer state unchanged, so the
    host can stop with a clear message without a corrupted state to save.
    """

    frozen: Any = None
    nonfinite_step: jnp.ndarray = None


def build_model(model_config: ml_collections.ConfigDict, *, num_classes: int) -> FasterRCNN:
    """FasterRCNN from ``config.model`` (every field that is set overrides the default)."""
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if model_config.dtype not in dtypes:
        raise ValueError(f"model.dtype={model_config.dtype!r}; choose one of {sorted(dtypes)}")
    fields = {f for f in FasterRCNN.__dataclass_fields__ if f not in ("parent", "name")}
    skip = {"pretrained", "dtype", "num_classes"}
    kwargs = {k: v for k, v in model_config.items() if k in fields and k not in skip}
    unknown = sorted(set(model_config.keys()) - fields - skip)
    if unknown:
        raise ValueError(f"unknown config.model fields {unknown}; known: {sorted(fields)}")
    for k, v in kwargs.items():
        if isinstance(v, list):
            kwargs[k] = tuple(v)
    return FasterRCNN(num_classes=num_classes, dtype=dtypes[model_config.dtype], **kwargs)


def init_variables(model: FasterRCNN, key: jax.Array) -> dict:
    """Initial ``{"params", "frozen"}``; shapes do not depend on the image size."""
    images = jnp.zeros((1, 64, 64, 3), jnp.uint8)
    sizes = jnp.array([[64, 64]], jnp.int32)
    variables = jax.jit(functools.partial(model.init, method=model.initialize))(key, images, sizes)
    return {"params": variables["params"], "frozen": variables.get("frozen", {})}


def create_train_state(config: ml_collections.ConfigDict, model: FasterRCNN, variables: dict):
    """TrainState with the configured optimizer; returns (state, learning-rate schedule)."""
    base_lr = optim.scaled_learning_rate(
        config.learning_rate, config.batch_size, config.get("reference_batch_size", 1)
    )
    schedule = optim.learning_rate_schedule(
        base_lr=base_lr, warmup_steps=config.warmup_steps, decay_steps=config.lr_decay_steps
    )
    tx = optim.make_optimizer(
        variables["params"],
        backbone=model.backbone,
        schedule=schedule,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        frozen=variables["frozen"],
        nonfinite_step=jnp.array(-1, jnp.int32),
    )
    return state.replace(step=jnp.array(0, jnp.int32)), schedule


def image_keys(key: jax.Array, batch_size: int, axis_name: str | None = None) -> jax.Array:
    """One key per image: fold_in(key, global image index), the same on any device layout."""
    offset = jax.lax.axis_index(axis_name) * batch_size if axis_name else 0
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(batch_size) + offset)


def train_step(state: TrainState, batch: dict, key: jax.Array, *, axis_name: str | None = None):
    """One SGD step on a batch.

    Args:
      state: TrainState.
      batch: ``images`` uint8 [B, Hb, Wb, 3], ``image_sizes`` int32 [B, 2],
        ``gt_boxes`` float32 [B, G, 4], ``gt_labels`` int32 [B, G], ``gt_mask``
        bool [B, G] (per-device B under pmap).
      key: the step key, ``fold_in(seed_key, step)``.
      axis_name: pmap axis to average gradients and metrics over.

    Returns:
      ``(new_state, metrics)``: metrics are float32 scalars (losses, learning
      rate is added by the caller from the schedule).
    """
    batch_size = batch["images"].shape[0]
    keys = image_keys(key, batch_size, axis_name)

    def loss_fn(params):
        losses, aux = state.apply_fn(
            {"params": params, "frozen": state.frozen},
            batch["images"],
            batch["image_sizes"],
            batch["gt_boxes"],
            batch["gt_labels"],
            batch["gt_mask"],
            keys=keys,
        )
        return losses["total"], (losses, aux)

    grads, (losses, aux) = jax.grad(loss_fn, has_aux=True)(state.params)
    metrics = {**losses, **aux}
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        metrics = jax.lax.pmean(metrics, axis_name)
    metrics["grad_norm"] = optax.tree.norm(grads)
    # A finite loss can still come with inf/NaN gradients (e.g. bfloat16 overflow).
    step_ok = jnp.isfinite(metrics["total"]) & jnp.isfinite(metrics["grad_norm"])
    finite = step_ok & (state.nonfinite_step < 0)
    updated = state.apply_gradients(grads=grads)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    first_bad = jnp.where((state.nonfinite_step < 0) & ~step_ok, state.step, state.nonfinite_step)
    new_state = new_state.replace(step=state.step + 1, nonfinite_step=first_bad)
    return new_state, metrics


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
    """Places a pytree fully replicated on the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def unreplicate_metrics(metrics) -> dict[str, float]:
    return {k: float(np.asarray(v).reshape(-1)[0]) for k, v in flax.core.unfreeze(metrics).items()}
