"""Checks a training config before anything is compiled, naming the field that is wrong."""

from __future__ import annotations

import ml_collections

from frcnn_jax.models.build import check_model_config
from frcnn_jax.training.optim import DEFAULT_SCHEDULE, SCHEDULES

_DATA_SOURCES = ("synthetic", "tfds", "voc_dir", "coco_json")
_POSITIVE_INTS = (
    "num_train_steps",
    "batch_size",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_batch_size",
)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad field of ``config``."""
    for name in _POSITIVE_INTS:
        value = config.get(name)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"config.{name} must be a positive integer, got {value!r}")
    if config.eval_every_steps < 0:
        raise ValueError(f"config.eval_every_steps must be >= 0, got {config.eval_every_steps}")
    if not config.learning_rate > 0:
        raise ValueError(f"config.learning_rate must be > 0, got {config.learning_rate}")
    for name in ("num_epochs", "warmup_epochs", "bias_lr_factor"):
        value = config.get(name)
        if value is not None and not (value > 0 or (name == "warmup_epochs" and value == 0)):
            raise ValueError(f"config.{name} must be > 0, got {value!r}")
    if any(float(e) <= 0 for e in config.get("lr_decay_epochs") or ()):
        raise ValueError(f"config.lr_decay_epochs must be positive, got {config.lr_decay_epochs}")
    if config.get("lr_schedule", DEFAULT_SCHEDULE) not in SCHEDULES:
        raise ValueError(f"config.lr_schedule={config.lr_schedule!r}; choose one of {SCHEDULES}")
    check_model_config(config.model)
    if config.data.name not in _DATA_SOURCES:
        raise ValueError(f"config.data.name={config.data.name!r}; choose one of {_DATA_SOURCES}")
    if config.data.min_size <= 0 or config.data.max_size < config.data.min_size:
        raise ValueError(
            f"config.data.min_size={config.data.min_size} and max_size={config.data.max_size} "
            "must satisfy 0 < min_size <= max_size"
        )
    if config.data.max_boxes <= 0:
        raise ValueError(f"config.data.max_boxes must be > 0, got {config.data.max_boxes}")
    if any(int(s) <= 0 for s in config.lr_decay_steps):
        raise ValueError(
            f"config.lr_decay_steps must be positive steps, got {config.lr_decay_steps}"
        )
