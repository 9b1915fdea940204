"""Training length and learning-rate steps from epochs: the arithmetic, as pure functions.

A schedule in epochs (``config.num_epochs``, ``lr_decay_epochs``, ``warmup_epochs``) says the
same thing at any batch size and on any dataset: the training loop counts the images of one
epoch (``frcnn_jax.data.count_training_examples``) and turns epochs into steps here, so
changing ``batch_size`` or the data needs no step arithmetic. Precedence: when
``num_epochs`` is set, ``num_train_steps`` and ``lr_decay_steps`` are computed from epochs and
the step fields' values are ignored; ``warmup_epochs``, when set, likewise replaces
``warmup_steps`` (a warmup in steps stays a warmup in steps otherwise, as detectron2's
WARMUP_ITERS). Without ``num_epochs`` the step fields are used as they are.

One epoch is ``num_examples / batch_size`` steps (global batch; the stream repeats, so a
fraction of a step carries into the next epoch). Epoch boundaries round up: ``e`` epochs
take ``ceil(e * num_examples / batch_size)`` steps, so that every image is seen ``e`` times
(the seed's 14 epochs of VOC07's 5011 trainval images at batch 1 are 70154 steps, the decay
after 9 epochs at step 45099).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from fractions import Fraction


@dataclasses.dataclass(frozen=True)
class StepSchedule:
    """A run's length and learning-rate steps, in optimizer steps."""

    num_train_steps: int
    lr_decay_steps: tuple[int, ...]
    warmup_steps: int


def epochs_to_steps(epochs: float, *, num_examples: int, batch_size: int) -> int:
    """``ceil(epochs * num_examples / batch_size)`` in exact arithmetic (0.1 epoch is 1/10).

    Args:
      epochs: non-negative, may be fractional.
      num_examples: images of one epoch (after skipping images without a training box).
      batch_size: the global batch size.
    """
    if num_examples < 1 or batch_size < 1 or epochs < 0:
        raise ValueError(
            f"epochs_to_steps needs epochs >= 0, num_examples >= 1 and batch_size >= 1; got "
            f"{epochs}, {num_examples}, {batch_size}"
        )
    return math.ceil(Fraction(str(epochs)) * num_examples / batch_size)


def steps_from_epochs(
    *,
    num_examples: int,
    batch_size: int,
    num_epochs: float,
    lr_decay_epochs: Sequence[float] = (),
    warmup_epochs: float | None = None,
    warmup_steps: int = 0,
) -> StepSchedule:
    """The step schedule of a schedule in epochs (module docstring for rounding and precedence).

    Args:
      num_examples: images of one training epoch; batch_size: global batch size.
      num_epochs: > 0, the run's length.
      lr_decay_epochs: epochs after which the learning rate is multiplied by 0.1, each in
        (0, num_epochs].
      warmup_epochs: the warmup in epochs; None keeps ``warmup_steps``.
      warmup_steps: the warmup in steps when ``warmup_epochs`` is None.

    Returns:
      StepSchedule with num_train_steps >= 1.
    """
    if not num_epochs > 0:
        raise ValueError(f"config.num_epochs must be > 0, got {num_epochs}")
    for epoch in lr_decay_epochs:
        if not 0 < epoch <= num_epochs:
            raise ValueError(
                f"config.lr_decay_epochs={tuple(lr_decay_epochs)}: each must lie in "
                f"(0, num_epochs={num_epochs}]"
            )
    if warmup_epochs is not None and warmup_epochs < 0:
        raise ValueError(f"config.warmup_epochs must be >= 0, got {warmup_epochs}")
    steps = {"num_examples": num_examples, "batch_size": batch_size}
    return StepSchedule(
        num_train_steps=max(epochs_to_steps(num_epochs, **steps), 1),
        lr_decay_steps=tuple(epochs_to_steps(e, **steps) for e in lr_decay_epochs),
        warmup_steps=(
            int(warmup_steps) if warmup_epochs is None else epochs_to_steps(warmup_epochs, **steps)
        ),
    )
