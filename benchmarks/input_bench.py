r"""Images/s of the input pipeline (source + preprocessing + batching) for a config.

  python -m benchmarks.input_bench --config=configs/synthetic.py
  python -m benchmarks.input_bench --config=configs/voc.py --config.data.name=voc_dir \
    --config.data.root=/data/VOCdevkit/VOC2007 --batch_size=2

Prints the median and spread of images/s over --windows windows of --window_batches batches
each, after --warmup_batches (which fill the shuffle buffer). --source_only times the raw
source alone (decode / synthetic drawing), the pipeline's upper bound. Compare with the
images/s the train step consumes (--train_steps=N times it on the same batches, printed
next to the pipeline's rate): the input must be faster. --start_step=K times resuming at step K
(the first batch): index-planned sources load nothing before it, so it should not grow with K.
"""

import os
import statistics
import sys
import time

import jax
import tensorflow as tf
from absl import app, flags
from ml_collections import config_flags

# `python benchmarks/input_bench.py --config=configs/...`: the configs import `configs`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from frcnn_jax import data  # noqa: E402
from frcnn_jax.models import build_model, init_variables  # noqa: E402
from frcnn_jax.training import sharding  # noqa: E402
from frcnn_jax.training.step import create_train_state  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.")
_SPLIT = flags.DEFINE_string("split", None, "Split to read; default config.data.train_split.")
_TRAINING = flags.DEFINE_bool("training", True, "Training pipeline (shuffle, flip, repeat).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Per-process batch; default the config's.")
_WARMUP = flags.DEFINE_integer("warmup_batches", 10, "Untimed batches first.")
_WINDOWS = flags.DEFINE_integer("windows", 5, "Timed windows.")
_WINDOW_BATCHES = flags.DEFINE_integer("window_batches", 20, "Batches per window.")
_DEVICE = flags.DEFINE_bool("device_prefetch", False, "Include prefetch_to_device.")
_SOURCE_ONLY = flags.DEFINE_bool("source_only", False, "Time the raw source alone.")
_START_STEP = flags.DEFINE_integer(
    "start_step", 0, "Resume the training stream at this step; prints the time to its first batch."
)
_TRAIN_STEP = flags.DEFINE_integer(
    "train_steps", 0, "Also time this many train steps of the config's model on the same batches."
)


def _train_step_rate(config, batches, batch_size, steps):
    """Images/s the jitted train step consumes on pipeline batches (after one compiling step)."""
    model = build_model(config.model, num_classes=len(data.get_class_names(config.data)))
    state, _ = create_train_state(config, model, init_variables(model, jax.random.key(0)))
    mesh = sharding.make_mesh()
    step_fn = sharding.jit_train_step(mesh)
    state = sharding.replicate(state, mesh)
    rates, compiled = [], set()
    for i in range(steps + 1):
        batch = sharding.shard_batch(next(batches), mesh)
        shape = batch["images"].shape
        start = time.perf_counter()
        state, metrics = step_fn(state, batch, jax.random.key(i))
        jax.block_until_ready(metrics)
        if shape in compiled:
            rates.append(batch_size / (time.perf_counter() - start))
        compiled.add(shape)
    return statistics.median(rates) if rates else float("nan")


def _source_batches(config, split, batch_size):
    """Endless lists of ``batch_size`` raw source examples (NumPy)."""
    raw, _ = data.create_source(config.data, split=split, training=True, seed=0)
    examples = data.NumpyIterator(raw.repeat().prefetch(tf.data.AUTOTUNE))
    while True:
        yield [next(examples) for _ in range(batch_size)]


def main(argv):
    del argv
    config = _CONFIG.value
    split = _SPLIT.value or config.data.train_split
    batch_size = _BATCH_SIZE.value or config.batch_size // jax.process_count()
    if _SOURCE_ONLY.value:
        batches = _source_batches(config, split, batch_size)
    else:
        start = time.perf_counter()
        dataset = data.create_dataset(
            config.data,
            split=split,
            training=_TRAINING.value,
            batch_size=batch_size,
            seed=0,
            start_step=_START_STEP.value,
        )
        batches = iter(dataset)
        next(batches)
        print(
            f"first batch (start_step {_START_STEP.value}) after "
            f"{time.perf_counter() - start:.2f} s (index, tracing, first images)"
        )
        if _DEVICE.value:
            batches = data.prefetch_to_device(batches, size=2)
        print(f"buckets {dataset.info.bucket_shapes}, {dataset.info.num_classes} classes")

    for _ in range(_WARMUP.value):
        next(batches)
    rates = []
    for _ in range(_WINDOWS.value):
        start = time.perf_counter()
        for _ in range(_WINDOW_BATCHES.value):
            batch = next(batches)
        if _DEVICE.value and not _SOURCE_ONLY.value:
            jax.block_until_ready(batch["images"])
        rates.append(_WINDOW_BATCHES.value * batch_size / (time.perf_counter() - start))
    what = "source" if _SOURCE_ONLY.value else "pipeline"
    print(
        f"{config.data.name} {split} {what}, batch {batch_size}: median "
        f"{statistics.median(rates):.1f} images/s (min {min(rates):.1f}, max {max(rates):.1f}) "
        f"over {_WINDOWS.value} windows of {_WINDOW_BATCHES.value} batches"
    )
    if _TRAIN_STEP.value and not _SOURCE_ONLY.value and not _DEVICE.value:
        consumed = _train_step_rate(config, batches, batch_size, _TRAIN_STEP.value)
        print(
            f"train step ({config.model.backbone}, {jax.devices()[0].platform}) consumes "
            f"{consumed:.1f} images/s; input / step = {statistics.median(rates) / consumed:.1f}x"
        )


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
