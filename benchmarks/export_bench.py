"""Inference throughput by batch size: the Detector's function and each exported format.

Run (CPU; the table in RESULTS.md):
  python benchmarks/export_bench.py --config=configs/synthetic.py --num_classes=5 \
    --batch_sizes=1,4,8 --steps=10 --warmup=2

For each batch size B: images/s = B / median time of one call on B random images of the
exported size (the config's largest padded shape unless --image_size; scales of ones, as for
images that needed no resizing), every call waited on
(outputs on the host for TensorFlow and onnxruntime), after --warmup calls. Rows:
- detector: ``inference.predict_fn.make_predict_fn`` (what ``Detector`` and eval.py run),
  compiled ahead of time for B;
- stablehlo: ``model.stablehlo`` (symbolic batch) deserialised and jitted for B;
- saved_model: ``saved_model/`` (symbolic batch), its ``serving_default`` signature;
- stablehlo_fixed, saved_model_fixed: the same exported for B (``--batch_size=B``), whose RoI ops
  can run image by image on CPU as the Detector's do;
- onnx: ``model.onnx`` exported for B (ONNX models have a fixed batch), onnxruntime with its
  default threads.
The model is the config's with random weights (speed does not depend on them; the detections
do: an untrained head keeps up to max_detections boxes per image, the work of a busy image).
"""

from __future__ import annotations

import os
import tempfile
import time

import bench_timing
import bench_util
import jax
import numpy as np
from absl import app, flags

from frcnn_jax.export import inference, onnx, saved_model, stablehlo
from frcnn_jax.inference.predict_fn import make_predict_fn
from frcnn_jax.models import build_model, init_variables

FLAGS = bench_util.FLAGS
flags.DEFINE_string("batch_sizes", "1,4,8", "Comma-separated batch sizes.")
flags.DEFINE_string(
    "formats",
    "detector,stablehlo,saved_model,stablehlo_fixed,saved_model_fixed,onnx",
    "Rows to measure (*_fixed: exported per batch size, --batch_size=B).",
)


def _time(call, sync, images) -> float:
    """Median seconds of one synchronised ``call(images, scales)``, scales all ones
    (bench_timing.time_steps)."""
    scales = np.ones((images[0].shape[0], 2), np.float32)
    timing = bench_timing.time_steps(
        lambda i: call(images[i % len(images)], scales),
        sync,
        warmup=FLAGS.warmup,
        steps=FLAGS.steps,
    )
    return timing["median_s"]


def run_detector(model, variables, images, size):
    predict = make_predict_fn(model)
    batch = images[0].shape[0]
    sizes = np.tile(np.array(size, np.int32), (batch, 1))
    scales = np.ones((batch, 2), np.float32)
    compiled = predict.lower(variables, images[0], sizes, scales).compile()
    return _time(lambda x, s: compiled(variables, x, sizes, s), jax.block_until_ready, images)


def run_stablehlo(directory, images):
    call = jax.jit(stablehlo.load(os.path.join(directory, "model.stablehlo")).call)
    return _time(call, jax.block_until_ready, images)


def run_saved_model(directory, images):
    import tensorflow as tf  # noqa: PLC0415

    loaded = tf.saved_model.load(os.path.join(directory, "saved_model"))
    detect = loaded.signatures["serving_default"]
    return _time(
        lambda x, s: detect(images=tf.constant(x), scales=tf.constant(s)),
        lambda out: {k: v.numpy() for k, v in out.items()},
        images,
    )


def run_onnx(path, images):
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options)
    return _time(
        lambda x, s: session.run(None, {"images": x, "scales": s}), lambda out: out, images
    )


RUNS = {"stablehlo": run_stablehlo, "saved_model": run_saved_model}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    size = (
        bench_util.image_size(config)
        if FLAGS.image_size
        else inference.default_image_size(config.data)
    )
    batch_sizes = [int(b) for b in FLAGS.batch_sizes.split(",")]
    formats = FLAGS.formats.split(",")
    model = build_model(config.model, num_classes=FLAGS.num_classes)
    variables = init_variables(model, jax.random.key(config.seed))
    fn = inference.make_inference_fn(model, variables)
    rng = np.random.default_rng(0)
    print(f"benchmark: export backbone={config.model.backbone} image={size[0]}x{size[1]}")
    print(f"device: {bench_util.device_description()}; {bench_util.versions()}")
    results: dict[str, dict[int, float]] = {f: {} for f in formats}
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        if "stablehlo" in formats:
            stablehlo.save(
                fn, os.path.join(directory, "model.stablehlo"), image_size=size, batch_size=None
            )
        if "saved_model" in formats:
            saved_model.save(
                inference.make_apply_fn(model),
                variables,
                os.path.join(directory, "saved_model"),
                image_size=size,
                batch_size=None,
            )
        print(f"export (stablehlo, saved_model): {time.perf_counter() - start:.1f} s")
        for batch in batch_sizes:
            images = [rng.integers(1, 256, (batch, *size, 3), np.uint8) for _ in range(2)]
            onnx_path = os.path.join(directory, f"model_{batch}.onnx")
            fixed = os.path.join(directory, f"fixed_{batch}")
            if "stablehlo_fixed" in formats or "saved_model_fixed" in formats:
                start = time.perf_counter()
                if "stablehlo_fixed" in formats:
                    path = os.path.join(fixed, "model.stablehlo")
                    os.makedirs(fixed, exist_ok=True)
                    stablehlo.save(fn, path, image_size=size, batch_size=batch)
                if "saved_model_fixed" in formats:
                    apply_fn = inference.make_apply_fn(model)
                    path = os.path.join(fixed, "saved_model")
                    saved_model.save(apply_fn, variables, path, image_size=size, batch_size=batch)
                print(f"export (fixed batch {batch}): {time.perf_counter() - start:.1f} s")
            if "onnx" in formats:
                start = time.perf_counter()
                onnx.save(fn, onnx_path, image_size=size, batch_size=batch)
                print(f"export (onnx, batch {batch}): {time.perf_counter() - start:.1f} s")
            for name in formats:
                if name == "detector":
                    seconds = run_detector(model, variables, images, size)
                elif name == "onnx":
                    seconds = run_onnx(onnx_path, images)
                elif name.endswith("_fixed"):
                    seconds = RUNS[name[: -len("_fixed")]](fixed, images)
                else:
                    seconds = RUNS[name](directory, images)
                results[name][batch] = batch / seconds
                print(f"{name} batch={batch}: {seconds * 1e3:.1f} ms/call, {batch / seconds:.1f}/s")
    header = " | ".join(f"batch {b}" for b in batch_sizes)
    print(f"markdown: | format | {header} |")
    for name in formats:
        row = " | ".join(f"{results[name][b]:.1f}" for b in batch_sizes)
        print(f"markdown: | {name} | {row} |")


if __name__ == "__main__":
    app.run(main)
