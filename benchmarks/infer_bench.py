"""Inference speed: our jitted ``model.detect``, and torchvision's Faster R-CNN on the same sizes.

Run:
  python benchmarks/infer_bench.py --config=configs/voc.py --batch_size=8 \
    --image_size=608,1024 --steps=20 --config.model.dtype=bfloat16 --torch
  python benchmarks/infer_bench.py --config=configs/synthetic.py --batch_size=2 \
    --image_size=64 --steps=3 --warmup=1      # a CPU smoke run in seconds

Ours is ``inference.predict_fn.make_predict_fn`` (backbone, RPN, 6000 -> 300 proposals,
RoI head, per-class NMS, fixed-shape padded detections), compiled once ahead of
time, on one device, with random images already on the device. ``--torch``
runs torchvision's model in eval mode (inference_mode) in a subprocess first.
Printed figures as in train_bench.py.
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
    """Compiles and times the predict function; a bench_lib result dict."""
    return jax_detection.run_infer(
        config,
        model,
        host_batches,
        warmup=FLAGS.warmup,
        steps=FLAGS.steps,
        matmul_size=FLAGS.matmul_size,
        **rounds,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    batch_size = FLAGS.batch_size or config.eval_batch_size
    size = bench_util.image_size(config)
    model = bench_models.build_model(config, num_classes=FLAGS.num_classes)
    host_batches = bench_util.synthetic_batches(config, batch_size=batch_size, size=size)
    bench_util.print_header("inference", config, batch_size, size)
    ours, theirs = bench_util.run_sides(
        functools.partial(run_ours, config, model, host_batches),
        model,
        host_batches,
        size,
        compute_dtype=config.model.dtype,
        training=False,
    )
    bench_util.report_all(
        "inference", config, batch_size, size, "ours (frcnn_jax, make_predict_fn)", ours, theirs
    )


if __name__ == "__main__":
    app.run(main)
