"""Schedules in epochs: the epoch-to-step arithmetic and its use at the start of training."""

import numpy as np
import pytest

from frcnn_jax import data as data_lib
from frcnn_jax.data import synthetic
from frcnn_jax.training import loop
from frcnn_jax.training.schedule import StepSchedule, epochs_to_steps, steps_from_epochs
from tests.tiny import tiny_config


@pytest.mark.parametrize(
    "batch_size,expected",
    [
        # The seed: 14 epochs of VOC07's 5011 trainval images at batch 1, x0.1 after 9.
        (1, StepSchedule(70154, (45099,), 502)),
        # 70154 / 8 = 8769.25 -> 8770 (every image seen 14 times); 45099 / 8 = 5637.4 -> 5638.
        (8, StepSchedule(8770, (5638,), 63)),
        (16, StepSchedule(4385, (2819,), 32)),
    ],
)
def test_the_seed_voc_schedule_at_any_batch_size(batch_size, expected):
    got = steps_from_epochs(
        num_examples=5011,
        batch_size=batch_size,
        num_epochs=14,
        lr_decay_epochs=(9,),
        warmup_epochs=0.1,  # 501.1 images -> 502 steps at batch 1
    )
    assert got == expected


def test_epochs_to_steps_is_exact_and_rounds_up():
    assert epochs_to_steps(0.1, num_examples=10, batch_size=1) == 1  # not 1.0000000000000002 -> 2
    assert epochs_to_steps(0.3, num_examples=10, batch_size=3) == 1
    assert epochs_to_steps(1, num_examples=10, batch_size=4) == 3  # 2.5 steps: the last partial
    assert epochs_to_steps(2, num_examples=10, batch_size=4) == 5
    assert epochs_to_steps(0, num_examples=10, batch_size=4) == 0
    with pytest.raises(ValueError, match="num_examples >= 1"):
        epochs_to_steps(1, num_examples=0, batch_size=4)


def test_warmup_in_steps_stays_when_no_warmup_epochs():
    got = steps_from_epochs(num_examples=100, batch_size=10, num_epochs=3, warmup_steps=7)
    assert got == StepSchedule(30, (), 7)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_epochs": 0}, "config.num_epochs must be > 0"),
        ({"num_epochs": 2, "lr_decay_epochs": (3,)}, r"config.lr_decay_epochs=\(3,\)"),
        ({"num_epochs": 2, "warmup_epochs": -1}, "config.warmup_epochs"),
    ],
)
def test_bad_epochs_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        steps_from_epochs(num_examples=10, batch_size=2, **kwargs)


def test_training_turns_epochs_into_steps_from_the_data_and_batch_size():
    config = tiny_config(num_epochs=2.0, lr_decay_epochs=(1.5,), warmup_epochs=0.5, batch_size=4)
    options = synthetic.render_options(config.data)
    # The tiny split's images with at least one box (data.skip_empty drops the others).
    num_images = sum(
        len(synthetic.render_example(i, split="train", **options)["gt_classes"]) > 0
        for i in range(config.data.synthetic["num_train"])
    )
    assert data_lib.count_training_examples(config.data) == num_images
    resolved = loop.with_step_schedule(config)
    assert resolved.num_train_steps == int(np.ceil(2 * num_images / 4))
    assert tuple(resolved.lr_decay_steps) == (int(np.ceil(1.5 * num_images / 4)),)
    assert resolved.warmup_steps == int(np.ceil(0.5 * num_images / 4))
    assert config.num_train_steps == 4  # the caller's config is left as it was
    # Without num_epochs the step fields are used as they are.
    plain = tiny_config()
    assert loop.with_step_schedule(plain) is plain
