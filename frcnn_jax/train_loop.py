"""The training loop behind ``train.py``: data, state, checkpoints, logging, periodic evaluation."""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

from frcnn_jax import checkpoint as checkpoint_lib
from frcnn_jax import data as data_lib
from frcnn_jax import evaluate_run, train_lib
from frcnn_jax.config_lib import validate_config


def _eval(model, state, config, class_names, writer, workdir, step) -> dict:
    """Evaluates on the first process only, on its local devices (the metrics need every
    image in one place); other processes go on. Parameters come to the host once."""
    if jax.process_index() != 0:
        return {}
    variables = jax.device_get({"params": state.params, "frozen": state.frozen})
    result = evaluate_run.run_evaluation(
        model,
        variables,
        config,
        class_names=class_names,
        step=step,
        output_dir=os.path.join(workdir, "eval"),
    )
    logging.info("step %d evaluation:\n%s", step, evaluate_run.ap_table(result))
    writer.write_scalars(step, evaluate_run.summary_scalars(result))
    return result


def write_run_info(workdir: str, config: ml_collections.ConfigDict, class_names) -> None:
    """config.json and class_names.json: what eval.py and Detector need to rebuild the model."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    with open(os.path.join(workdir, "class_names.json"), "w") as f:
        json.dump(list(class_names), f)


def _check_finite(state, checkpointer) -> None:
    bad = int(jax.device_get(state.nonfinite_step))
    if bad >= 0:
        checkpointer.wait()
        raise FloatingPointError(
            f"non-finite loss at step {bad}: training stopped; parameters and checkpoints are "
            f"those before that step (checkpoints at steps {checkpointer.all_steps()} in "
            f"{checkpointer.directory}). Lower config.learning_rate or check the data."
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from the latest checkpoint in workdir); returns the last metrics."""
    validate_config(config)
    if config.get("distributed", False):
        jax.distributed.initialize()
    num_devices = jax.device_count()
    if config.batch_size % num_devices:
        raise ValueError(
            f"config.batch_size={config.batch_size} is not divisible by the {num_devices} devices"
        )
    local_batch = config.batch_size // jax.process_count()
    buckets = data_lib.bucket_shapes(
        min_size=config.data.min_size,
        max_size=config.data.max_size,
        buckets=config.data.get("buckets") or None,
    )
    if jax.process_count() > 1 and len(buckets) > 1:
        # Each host groups its own shard by bucket; hosts would feed different shapes to
        # the same global step.
        raise ValueError(
            f"multi-host training needs one padded shape; data buckets are {buckets}: set "
            "--config.data.buckets='((H, W),)' holding every resized image"
        )
    class_names = data_lib.get_class_names(config.data)
    if jax.process_index() == 0:
        write_run_info(workdir, config, class_names)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() != 0)

    model = train_lib.build_model(config.model, num_classes=len(class_names))
    root_key = jax.random.key(config.seed)
    init_key, train_key = jax.random.split(root_key)
    variables = train_lib.init_variables(model, init_key)
    if config.model.pretrained:
        from frcnn_jax import pretrained  # noqa: PLC0415 (torch-free, but only needed here)

        variables = pretrained.load_pretrained(
            variables, config.model.pretrained, backbone=config.model.backbone
        )
    state, schedule = train_lib.create_train_state(config, model, variables)
    checkpointer = checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints
    )
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state)
        logging.info("resumed from checkpoint at step %d", int(state.step))
    _check_finite(state, checkpointer)
    start_step = int(state.step)
    if start_step:
        logging.info(
            "replaying the first %d training batches on the host to resume the "
            "data stream exactly...",
            start_step,
        )

    mesh = train_lib.make_mesh()
    state = train_lib.replicate(state, mesh)
    step_fn = train_lib.jit_train_step(mesh)
    dataset = iter(
        data_lib.create_dataset(
            config.data,
            split=config.data.train_split,
            training=True,
            batch_size=local_batch,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            start_step=start_step,
        )
    )
    # Two batches in flight on the devices: host-to-device copies overlap the step; each
    # process's batch becomes its slice of the global array (multi-host too).
    batches = data_lib.prefetch_to_device(
        ({k: batch[k] for k in train_lib.TRAIN_KEYS} for batch in dataset),
        size=2,
        sharding=train_lib.data_sharding(mesh),
    )

    compiled_shapes: set[tuple[int, ...]] = set()
    pending, last, window_sums, window_steps = None, {}, None, 0
    window_start, window_images = time.perf_counter(), 0
    for step in range(start_step, config.num_train_steps):
        batch = next(batches)
        shape = tuple(batch["images"].shape)
        first = shape not in compiled_shapes
        if first:
            logging.info("compiling the train step for images of shape %s...", shape)
            compile_start = time.perf_counter()
        state, metrics = step_fn(state, batch, jax.random.fold_in(train_key, step))
        if first:
            jax.block_until_ready(metrics)
            compiled_shapes.add(shape)
            logging.info(
                "compiled (and ran one step) in %.1f s", time.perf_counter() - compile_start
            )
            window_start, window_images = time.perf_counter(), 0
        else:
            window_images += config.batch_size
        # Keep at most two steps in flight: bounded host queue, and no rendezvous
        # deadlocks from many queued collectives on simulated CPU devices.
        if pending is not None:
            jax.block_until_ready(pending)
        pending = metrics
        # Logged losses are means over the logging window, summed on the device.
        window_sums = (
            metrics if window_sums is None else jax.tree.map(jax.numpy.add, window_sums, metrics)
        )
        window_steps += 1

        done = step + 1
        if done % config.log_every_steps == 0 or done == config.num_train_steps:
            _check_finite(state, checkpointer)
            last = {
                k: v / window_steps for k, v in train_lib.unreplicate_metrics(window_sums).items()
            }
            window_sums, window_steps = None, 0
            last["learning_rate"] = float(schedule(step))
            elapsed = time.perf_counter() - window_start
            rate = window_images / elapsed if window_images else float("nan")
            last["images_per_second"] = rate
            eta = (config.num_train_steps - done) * config.batch_size / rate if rate > 0 else 0
            logging.info(
                "step %d/%d  loss %.4f (rpn %.4f/%.4f roi %.4f/%.4f)  lr %.2e  %.1f img/s  ETA %s",
                done,
                config.num_train_steps,
                last["total"],
                last["rpn_cls"],
                last["rpn_box"],
                last["roi_cls"],
                last["roi_box"],
                last["learning_rate"],
                rate,
                time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "?",
            )
            writer.write_scalars(done, {f"train/{k}": v for k, v in last.items()})
            window_start, window_images = time.perf_counter(), 0
        if done % config.checkpoint_every_steps == 0 or done == config.num_train_steps:
            _check_finite(state, checkpointer)
            checkpointer.save(jax.device_get(state))
        if config.eval_every_steps and (
            done % config.eval_every_steps == 0 or done == config.num_train_steps
        ):
            result = _eval(model, state, config, class_names, writer, workdir, done)
            last.update({k: result[k] for k in ("voc07_map", "voc_map") if k in result})
    checkpointer.close()
    writer.flush()
    return last
