"""Training speed: our jitted train step, and torchvision's Faster R-CNN on the same sizes.

Run:
  python benchmarks/train_bench.py --config=configs/voc.py --batch_size=8 \
    --image_size=608,1024 --steps=20 --config.model.dtype=bfloat16 --torch
  python benchmarks/train_bench.py --config=configs/synthetic.py --batch_size=2 \
    --image_size=64 --steps=3 --warmup=1      # a CPU smoke run in seconds

Ours is ``training.sharding.jit_train_step`` on the default mesh (all devices, batch
sharded, state donated) with the real config, compiled once ahead of time;
batches are random images and boxes already on the device (two alternating
batches of one shape, so nothing recompiles). Any config field can be
overridden (``--config.model.dtype=bfloat16``). ``--torch`` first runs
torchvision's model in a subprocess (see torch_detection.py) and prints the
ratio ours/theirs; with ``--rounds=R`` the two sides take turns R times (the
figures are medians over the rounds, each round's ratio is printed). Printed:
compile time, steady images/s (median of synchronised steps after warm-up),
pipelined images/s, peak memory, FLOPs and MFU (see bench_lib.py), and
RESULTS.md table rows.
"""

from __future__ import annotations

import functools

import bench_util  # first: it tunes malloc before JAX starts

# isort: split
import bench_models
import jax_detection
from absl import app

FLAGS = bench_util.FLAGS


def run_ours(config, model, host_batches: list[dict], **rounds) -> dict:
    """Compiles and times the data-parallel train step; a bench_lib result dict."""
    try:
        return jax_detection.run_train(
            config,
            model,
            host_batches,
            warmup=FLAGS.warmup,
            steps=FLAGS.steps,
            matmul_size=FLAGS.matmul_size,
            **rounds,
        )
    except ValueError as e:
        raise app.UsageError(f"--batch_size: {e}") from e


def main(argv):
    config, size = bench_util.train_config(argv)
    model = bench_models.build_model(config, num_classes=FLAGS.num_classes)
    host_batches = bench_util.synthetic_batches(config, batch_size=config.batch_size, size=size)
    bench_util.print_header("train", config, config.batch_size, size)
    ours, theirs = bench_util.run_sides(
        functools.partial(run_ours, config, model, host_batches),
        model,
        host_batches,
        size,
        compute_dtype=config.model.dtype,
        training=True,
    )
    bench_util.report_all(
        "train", config, config.batch_size, size, "ours (frcnn_jax, jit_train_step)", ours, theirs
    )


if __name__ == "__main__":
    app.run(main)
