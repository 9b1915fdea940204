"""Optimizer: SGD momentum, no weight decay on biases, warmup + step decay, frozen layers masked.

As simple-faster-rcnn-pytorch: SGD momentum 0.9, weight decay 5e-4 except on
biases, lr 1e-3 at batch size 1, x0.1 after 9 of 14 epochs. Frozen parameters
go through ``optax.set_to_zero`` inside ``optax.multi_transform``: no update,
no weight decay, and no momentum buffer is allocated for them. Biases (and
normalisation scales and offsets) learn at ``bias_lr_factor`` x the learning
rate: 1 by default, 2 as the seed (a Caffe habit, detectron2's BIAS_LR_FACTOR).

``optimizer="adamw"`` swaps SGD for AdamW (decoupled weight decay, still not on biases or
frozen layers), the usual choice for short from-scratch schedules; ``momentum`` is then
AdamW's b1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax
import jax
import optax

from frcnn_jax.models import backbones


def scaled_learning_rate(learning_rate: float, batch_size: int, reference_batch_size: int) -> float:
    """Linear scaling rule (Goyal et al. 2017): lr grows with the global batch size."""
    return learning_rate * batch_size / reference_batch_size


SCHEDULES = ("step", "cosine")
DEFAULT_SCHEDULE = "step"  # config.lr_schedule of a config that does not set it


def learning_rate_schedule(
    *,
    base_lr: float,
    warmup_steps: int,
    decay_steps: Sequence[int],
    decay_factor: float = 0.1,
    warmup_factor: float = 1.0 / 3.0,
    kind: str = DEFAULT_SCHEDULE,
    total_steps: int | None = None,
) -> optax.Schedule:
    """Linear warmup from ``warmup_factor * base_lr``, then the decay ``kind``.

    ``"step"``: x``decay_factor`` at each of ``decay_steps`` (the seed, detectron2).
    ``"cosine"``: ``base_lr * (1 + cos(pi * t)) / 2`` with t going from 0 at the end of the
    warmup to 1 at ``total_steps`` (Loshchilov & Hutter 2017, without restarts), so the last
    step learns at ~0; ``decay_steps`` are not used.
    """
    if kind == "step":
        boundaries = {int(s): decay_factor for s in decay_steps}
        decay = optax.piecewise_constant_schedule(base_lr, boundaries)
    elif kind == "cosine":
        if total_steps is None or total_steps <= warmup_steps:
            raise ValueError(
                f"a cosine schedule needs total_steps > warmup_steps, got {total_steps} and "
                f"{warmup_steps}"
            )
        cosine = optax.cosine_decay_schedule(base_lr, decay_steps=total_steps - warmup_steps)

        def decay(step):
            return cosine(jax.numpy.maximum(step - warmup_steps, 0))
    else:
        raise ValueError(f"learning-rate schedule {kind!r}; choose one of {SCHEDULES}")
    if warmup_steps <= 0:
        return decay

    def schedule(step):
        warm = jax.numpy.minimum(step / warmup_steps, 1.0)
        return decay(step) * (warmup_factor + (1.0 - warmup_factor) * warm)

    return schedule


def param_labels(params, *, backbone: str, backbone_options: Mapping[str, Any] | None = None):
    """ "frozen" | "bias" | "weight" for every parameter leaf (path-based).

    "bias": biases, and the scale of normalisation layers (GroupNorm), which detectron2
    keeps out of weight decay too (WEIGHT_DECAY_NORM = 0).
    """
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
    labels = {}
    frozen = backbones.frozen_prefixes(backbone, backbone_options)
    for path, leaf in flat.items():
        if path.startswith("body/") and backbones.matches_prefix(path[len("body/") :], frozen):
            labels[path] = "frozen"
        elif path.endswith("/bias") or (path.endswith("/scale") and getattr(leaf, "ndim", 1) == 1):
            labels[path] = "bias"
        else:
            labels[path] = "weight"
    return flax.traverse_util.unflatten_dict(labels, sep="/")


OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(
    params,
    *,
    backbone: str,
    schedule: optax.Schedule,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    bias_lr_factor: float = 1.0,
    backbone_options: Mapping[str, Any] | None = None,
    optimizer: str = "sgd",
) -> optax.GradientTransformation:
    """SGD(momentum) or AdamW with decoupled masks: biases undecayed (learning at
    ``bias_lr_factor`` x the schedule), frozen layers (the backbone's ``frozen_prefixes``)
    untouched."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} unknown; expected one of {OPTIMIZERS}")
    bias_schedule = schedule
    if bias_lr_factor != 1.0:
        bias_schedule = lambda step: bias_lr_factor * schedule(step)  # noqa: E731
    if optimizer == "adamw":
        weight_tx = optax.adamw(schedule, b1=momentum, weight_decay=weight_decay)
        bias_tx = optax.adam(bias_schedule, b1=momentum)
    else:
        weight_tx = optax.chain(
            optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=momentum)
        )
        bias_tx = optax.sgd(bias_schedule, momentum=momentum)
    return optax.multi_transform(
        {"weight": weight_tx, "bias": bias_tx, "frozen": optax.set_to_zero()},
        param_labels(params, backbone=backbone, backbone_options=backbone_options),
    )
