"""The training run behind ``train.py``: restore or initialise, stream batches, step, log,
checkpoint and evaluate. ``train_and_evaluate`` reads as the outline; each part is named below.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
from absl import logging
from clu import metric_writers

from frcnn_jax import data as data_lib
from frcnn_jax import distributed, preemption
from frcnn_jax import workdir as workdir_lib
from frcnn_jax.evaluation import run as eval_run
from frcnn_jax.models import build_model, init_variables
from frcnn_jax.training import anchor_setup, optim, sharding
from frcnn_jax.training import schedule as schedule_lib
from frcnn_jax.training.config_checks import validate_config
from frcnn_jax.training.monitor import MetricWindow
from frcnn_jax.training.step import (
    checkpoint_items,
    create_train_state,
    from_checkpoint_items,
)


class Preempted(Exception):
    """Training stopped at a preemption notice after a complete checkpoint at ``step``."""

    def __init__(self, step: int):
        super().__init__(f"preempted: checkpoint at step {step} saved; run again to continue")
        self.step = step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from the latest checkpoint in workdir); returns the last metrics.

    Raises ``Preempted`` after saving when a preemption notice (SIGTERM) arrives.
    """
    validate_config(config)
    if config.get("distributed", False):
        distributed.initialize()
    check_batch_layout(config)
    config = with_step_schedule(config)
    config = anchor_setup.setup_anchors(config)
    class_names = data_lib.get_class_names(config.data)
    if jax.process_index() == 0:
        workdir_lib.write_run_info(workdir, config, class_names)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() != 0)
    model = build_model(config.model, num_classes=len(class_names))
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    checkpointer = workdir_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
    state, schedule = restore_or_initialize(config, model, init_key, checkpointer)
    start_step = int(state.step)

    mesh = sharding.make_mesh()
    state = sharding.replicate(state, mesh)
    step_fn = sharding.jit_train_step(mesh)
    batches = device_batches(config, mesh, start_step=start_step)
    window = MetricWindow(total_steps=config.num_train_steps, batch_size=config.batch_size)
    compiled, pending, last = set(), None, {}
    with preemption.PreemptionWatch() as watch:
        for step in range(start_step, config.num_train_steps):
            batch = next(batches)
            shape, start = tuple(batch["images"].shape), time.perf_counter()
            state, metrics = step_fn(state, batch, jax.random.fold_in(train_key, step))
            first = shape not in compiled
            if first:  # compile time stays out of the images/s
                jax.block_until_ready(metrics)
                compiled.add(shape)
                logging.info(
                    "compiled the step for %s in %.1f s", shape, time.perf_counter() - start
                )
                window.restart_clock()
            # At most two steps in flight: a bounded host queue, and no rendezvous deadlocks
            # from many queued collectives on simulated CPU devices.
            if pending is not None:
                jax.block_until_ready(pending)
            pending = metrics
            window.add(metrics, timed=not first)
            done = step + 1
            last_step = done == config.num_train_steps
            if done % config.log_every_steps == 0 or last_step:
                check_finite(state, checkpointer)
                last = window.summary(done, float(schedule(step)))
                writer.write_scalars(done, {f"train/{k}": v for k, v in last.items()})
            if done % config.checkpoint_every_steps == 0 or last_step:
                check_finite(state, checkpointer)
                save(checkpointer, state)
            if watch.reached(done):  # every process gets True at the same step
                stop_preempted(checkpointer, state, writer)
            if config.eval_every_steps and (done % config.eval_every_steps == 0 or last_step):
                result = evaluate(model, state, config, class_names, writer, workdir, done)
                last.update({k: result[k] for k in ("voc07_map", "voc_map") if k in result})
    checkpointer.close()
    writer.flush()
    return last


def stop_preempted(checkpointer, state, writer) -> None:
    """Saves ``state`` (unless its step is saved already), waits until the checkpoint is
    complete on every process, and raises ``Preempted``."""
    step = int(jax.device_get(state.step))
    check_finite(state, checkpointer)
    if step not in checkpointer.all_steps():
        save(checkpointer, state)
    checkpointer.wait()
    checkpointer.close()
    writer.flush()
    logging.warning("preempted: checkpoint at step %d is complete; exiting", step)
    raise Preempted(step)


def with_step_schedule(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with its schedule in steps: when ``num_epochs`` (or ``warmup_epochs``) is set,
    a copy whose ``num_train_steps``, ``lr_decay_steps`` (and ``warmup_steps``) come from epochs,
    the dataset's size and the global batch size (``training.schedule``); logged either way."""
    num_epochs, warmup_epochs = config.get("num_epochs"), config.get("warmup_epochs")
    if num_epochs is None and warmup_epochs is None:
        logging.info(
            "schedule in steps: %d steps, %s, warmup %d steps, batch %d",
            config.num_train_steps,
            _decay_text(config),
            config.warmup_steps,
            config.batch_size,
        )
        return config
    start = time.perf_counter()
    num_examples = data_lib.count_training_examples(config.data)
    if num_examples < 1:
        raise ValueError(
            f"data.train_split={config.data.train_split!r} has no training image: a schedule in "
            "epochs (config.num_epochs) needs at least one"
        )
    steps = schedule_lib.steps_from_epochs(
        num_examples=num_examples,
        batch_size=config.batch_size,
        num_epochs=num_epochs if num_epochs is not None else 1.0,
        lr_decay_epochs=tuple(config.get("lr_decay_epochs") or ()) if num_epochs else (),
        warmup_epochs=warmup_epochs,
        warmup_steps=config.warmup_steps,
    )
    config = config.copy_and_resolve_references()
    if num_epochs is not None:
        config.num_train_steps = steps.num_train_steps
        config.lr_decay_steps = steps.lr_decay_steps
    config.warmup_steps = steps.warmup_steps
    logging.info(
        "schedule in epochs: %d training images in %r (counted in %.1f s) / global batch %d = "
        "%.2f steps per epoch; num_epochs %s, lr_decay_epochs %s, warmup_epochs %s -> %d steps, "
        "%s, warmup %d steps",
        num_examples,
        config.data.train_split,
        time.perf_counter() - start,
        config.batch_size,
        num_examples / config.batch_size,
        num_epochs,
        tuple(config.get("lr_decay_epochs") or ()),
        warmup_epochs,
        config.num_train_steps,
        _decay_text(config),
        config.warmup_steps,
    )
    return config


def _decay_text(config: ml_collections.ConfigDict) -> str:
    """How the learning rate decays, for the schedule's log line."""
    if config.get("lr_schedule", optim.DEFAULT_SCHEDULE) == "cosine":
        return f"lr cosine to ~0 at step {config.num_train_steps}"
    return f"lr x0.1 at steps {tuple(config.lr_decay_steps)}"


def check_batch_layout(config: ml_collections.ConfigDict) -> None:
    """The global batch must split over the devices."""
    if config.batch_size % jax.device_count():
        raise ValueError(
            f"config.batch_size={config.batch_size} is not divisible by the "
            f"{jax.device_count()} devices"
        )


def restore_or_initialize(config, model, init_key, checkpointer):
    """``(state, schedule)``: the latest checkpoint's state, else a fresh one (pretrained
    backbone weights loaded when ``config.model.pretrained`` names a file)."""
    variables = init_variables(model, init_key)
    if config.model.pretrained:
        from frcnn_jax.weights import load  # noqa: PLC0415 (only needed here)

        variables = load.load_pretrained(
            variables, config.model.pretrained, backbone=config.model.backbone
        )
    state, schedule = create_train_state(config, model, variables)
    step = checkpointer.latest_step()
    if step is not None:
        items = checkpointer.restore(step, **checkpoint_items(state))
        state = from_checkpoint_items(state, items)
        logging.info("resumed from checkpoint at step %d", step)
    check_finite(state, checkpointer)
    return state, schedule


def device_batches(config, mesh, *, start_step: int):
    """The train keys of each process's batches, two in flight on the devices: host-to-device
    copies overlap the step; each process's batch becomes its slice of the global array."""
    dataset = data_lib.create_dataset(
        config.data,
        split=config.data.train_split,
        training=True,
        batch_size=config.batch_size // jax.process_count(),
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        start_step=start_step,
    )
    if not dataset.indexed:
        check_stream_layout(config, dataset, start_step=start_step)
    return data_lib.prefetch_to_device(
        ({k: batch[k] for k in sharding.TRAIN_KEYS} for batch in dataset),
        size=2,
        sharding=sharding.data_sharding(mesh),
    )


def check_stream_layout(config, dataset, *, start_step: int) -> None:
    """A source without random access is a per-process stream: resuming replays the skipped
    batches, and multi-process training needs one padded shape (each process groups its own
    shard by bucket, so processes would feed different shapes to one step)."""
    buckets = dataset.info.bucket_shapes
    if jax.process_count() > 1 and len(buckets) > 1:
        raise ValueError(
            f"data.name={config.data.name!r} has no random access here, so multi-process "
            f"training needs one padded shape; data buckets are {buckets}: set "
            "--config.data.buckets='((H, W),)' holding every resized image"
        )
    if start_step:
        logging.info(
            "data.name=%r has no random access: replaying the first %d batches on the host",
            config.data.name,
            start_step,
        )


def check_finite(state, checkpointer) -> None:
    """Stops the run at the first non-finite step, naming it and the checkpoints left."""
    bad = int(jax.device_get(state.nonfinite_step))
    if bad >= 0:
        checkpointer.wait()
        raise FloatingPointError(
            f"non-finite loss at step {bad}: training stopped; parameters and checkpoints are "
            f"those before that step (checkpoints at steps {checkpointer.all_steps()} in "
            f"{checkpointer.directory}). Lower config.learning_rate or check the data."
        )


def save(checkpointer, state) -> None:
    """Starts an asynchronous save of ``state`` at its step (one process: from host copies;
    several: every process passes the global arrays, as Orbax's multi-process saving needs)."""
    if jax.process_count() == 1:
        state = jax.device_get(state)
    checkpointer.save(int(jax.device_get(state.step)), **checkpoint_items(state))


def evaluate(model, state, config, class_names, writer, workdir, step) -> dict:
    """Evaluates on every process, each on its share of the split (``run_evaluation`` gathers
    the detections); parameters come to the host once."""
    variables = jax.device_get({"params": state.params, "frozen": state.frozen})
    result = eval_run.run_evaluation(
        model,
        variables,
        config,
        class_names=class_names,
        step=step,
        output_dir=os.path.join(workdir, "eval"),
    )
    if jax.process_index() != 0:
        return result
    logging.info("step %d evaluation:\n%s", step, eval_run.ap_table(result))
    writer.write_scalars(step, eval_run.summary_scalars(result))
    return result
