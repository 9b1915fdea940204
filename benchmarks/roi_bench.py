"""Times ``frcnn_jax.roi_ops`` at the detector's sizes, jitted and vmapped over a batch.

Run: ``python benchmarks/roi_bench.py [--batch 2 --repeats 5 --cases vgg_train,vgg_test,fpn]``

Cases (rois imitate sampled proposals: log-uniform sides 16..512 px inside the image):
  vgg_train  stride-16 VGG16 map 38 x 63 x 512 of a 600 x 1000 image, R=128 rois per image
             (the seed's ProposalTargetCreator sample): roi_pool and roi_align (S=2),
             forward and forward+backward (gradient w.r.t. features, as in training);
  vgg_test   the same map, R=300 test proposals: forward only;
  fpn        P2..P5 of an 800 x 1333 image (200 x 334 ... 25 x 42, C=256), R=512:
             multilevel_roi_align forward and forward+backward.
Figures are the median wall time over ``--repeats`` calls after a warm-up (compile)
call, each waited on with ``block_until_ready``.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

# Run as a script from anywhere: the package lives in the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from frcnn_jax import roi_ops  # noqa: E402


def make_rois(rng, batch: int, num_rois: int, height: int, width: int) -> np.ndarray:
    """float32 ``[B, R, 4]`` (ymin, xmin, ymax, xmax) inside a ``height x width`` image."""
    sides = np.exp(rng.uniform(np.log(16), np.log(512), (2, batch, num_rois)))
    sides = np.minimum(sides, np.array([height, width])[:, None, None])
    ymin = rng.uniform(0, height - sides[0])
    xmin = rng.uniform(0, width - sides[1])
    return np.stack([ymin, xmin, ymin + sides[0], xmin + sides[1]], -1).astype(np.float32)


def median_ms(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def timed(op, features, rois, repeats: int, backward: bool = True) -> str:
    """'fwd X ms  fwd+bwd Y ms' of ``vmap(op)`` over the batch."""
    forward = jax.jit(jax.vmap(op))

    def loss(features, rois):
        return jnp.sum(jnp.sin(jax.vmap(op)(features, rois)))

    text = f"fwd {median_ms(forward, (features, rois), repeats):8.1f} ms"
    if backward:
        grad = jax.jit(jax.grad(loss))
        text += f"   fwd+bwd {median_ms(grad, (features, rois), repeats):8.1f} ms"
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default="vgg_train,vgg_test,fpn")
    args = parser.parse_args()
    cases = args.cases.split(",")
    rng = np.random.default_rng(0)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, batch {args.batch}")

    pool = functools.partial(roi_ops.roi_pool, output_size=7, spatial_scale=1 / 16)
    align = functools.partial(roi_ops.roi_align, output_size=7, spatial_scale=1 / 16)
    vgg = jnp.asarray(rng.normal(size=(args.batch, 38, 63, 512)).astype(np.float32))
    for case, num_rois in (("vgg_train", 128), ("vgg_test", 300)):
        if case in cases:
            rois = jnp.asarray(make_rois(rng, args.batch, num_rois, 600, 1000))
            backward = case == "vgg_train"
            for name, op in (("roi_pool", pool), ("roi_align", align)):
                result = timed(op, vgg, rois, args.repeats, backward)
                print(f"{case:9s} {name:20s} R={num_rois:3d}  {result}")
    if "fpn" in cases:
        shapes = [(200, 334), (100, 167), (50, 84), (25, 42)]
        pyramid = tuple(
            jnp.asarray(rng.normal(size=(args.batch, h, w, 256)).astype(np.float32))
            for h, w in shapes
        )
        rois = jnp.asarray(make_rois(rng, args.batch, 512, 800, 1333))
        result = timed(roi_ops.multilevel_roi_align, pyramid, rois, args.repeats)
        print(f"{'fpn':9s} {'multilevel_roi_align':20s} R=512  {result}")


if __name__ == "__main__":
    main()
