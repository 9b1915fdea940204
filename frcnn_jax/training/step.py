"""The train state and the pure train step.

Shape shorthand: B global batch, Hb, Wb padded image size, G max gt boxes.

``train_step`` is one pure function holding everything from anchors to the
optax update. It runs

* on one device: ``jax.jit(train_step)``;
* data-parallel over a ``Mesh``: ``sharding.jit_train_step(mesh)`` shards the batch
  on the ``"data"`` axis and replicates the state (XLA inserts the gradient
  all-reduce);
* under ``jax.pmap(functools.partial(train_step, axis_name="batch"))``
  (``sharding.pmap_train_step``), where gradients are averaged with ``lax.pmean``.

All three give the same update: each image's sampling key is
``fold_in(step_key, global image index)`` and losses are averaged per image, so
8 devices x 1 image equal 1 device x 8 images.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from frcnn_jax.models.faster_rcnn import FasterRCNN
from frcnn_jax.training import optim


class TrainState(train_state.TrainState):
    """flax TrainState plus the frozen batch-norm constants and a non-finite guard.

    ``nonfinite_step`` is -1 until a step produces a non-finite loss; that step
    (and every later one) leaves params and optimizer state unchanged, so the
    host can stop with a clear message without a corrupted state to save.
    """

    frozen: Any = None
    nonfinite_step: jnp.ndarray = None


def create_train_state(config: ml_collections.ConfigDict, model: FasterRCNN, variables: dict):
    """TrainState with the configured optimizer; returns (state, learning-rate schedule)."""
    base_lr = optim.scaled_learning_rate(
        config.learning_rate, config.batch_size, config.get("reference_batch_size", 1)
    )
    schedule = optim.learning_rate_schedule(
        base_lr=base_lr,
        warmup_steps=config.warmup_steps,
        decay_steps=config.lr_decay_steps,
        kind=config.get("lr_schedule", optim.DEFAULT_SCHEDULE),
        total_steps=config.num_train_steps,
    )
    tx = optim.make_optimizer(
        variables["params"],
        backbone=model.backbone,
        schedule=schedule,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        bias_lr_factor=config.get("bias_lr_factor", 1.0),
        backbone_options=model.backbone_options,
        optimizer=config.get("optimizer", "sgd"),
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
      batch: ``images`` uint8 [B, Hb, Wb, 3], ``image_sizes`` int32 [B, 2], ``scales``
        float32 [B, 2] (resize factors), ``gt_boxes`` float32 [B, G, 4], ``gt_classes``
        int32 [B, G], ``gt_mask`` bool [B, G] (per-device B under pmap).
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
            batch["gt_classes"],
            batch["gt_mask"],
            keys=keys,
            scales=batch["scales"],
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


def checkpoint_items(state: TrainState) -> dict:
    """The state as the workdir's checkpoint items: ``model`` (what inference restores) and
    ``train`` (what resuming needs on top)."""
    return {
        "model": {"params": state.params, "frozen": state.frozen},
        "train": {
            "step": state.step,
            "opt_state": state.opt_state,
            "nonfinite_step": state.nonfinite_step,
        },
    }


def from_checkpoint_items(state: TrainState, items: dict) -> TrainState:
    """``state`` with its data replaced by restored ``checkpoint_items``."""
    return state.replace(**items["model"], **items["train"])
