"""Times ``frcnn_jax.nms.nms`` against ``tf.image.non_max_suppression``.

Run: ``python benchmarks/nms_bench.py [--num_boxes 12000 --max_output 2000 --repeats 10]``

Boxes imitate RPN proposals of a ~600x1000 image (log-uniform sizes 16..400 px,
aspect ratios 1/e..e, uniform centres, uniform scores), the seed's training
setting: 12000 candidates -> at most 2000 kept at IoU 0.7. Figures are the
median wall time of ``--repeats`` runs after a warm-up (compile) run, each
waited on with ``block_until_ready``; both libraries get the same boxes, and
their kept indices are checked to agree.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from frcnn_jax.nms import DEFAULT_TILE_SIZE, nms


def make_boxes(rng: np.random.Generator, num_boxes: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 boxes ``[N, 4]`` (ymin, xmin, ymax, xmax) and scores ``[N]``."""
    cy = rng.uniform(0, 600, num_boxes)
    cx = rng.uniform(0, 1000, num_boxes)
    h = np.exp(rng.uniform(np.log(16), np.log(400), num_boxes))
    w = h * np.exp(rng.uniform(-1, 1, num_boxes))
    boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=1)
    return boxes.astype(np.float32), rng.uniform(size=num_boxes).astype(np.float32)


def median_time(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_boxes", type=int, default=12000)
    parser.add_argument("--max_output", type=int, default=2000)
    parser.add_argument("--iou_threshold", type=float, default=0.7)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tile_size", type=int, default=DEFAULT_TILE_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import tensorflow as tf  # Imported late: only the comparison needs it.

    rng = np.random.default_rng(args.seed)
    boxes, scores = make_boxes(rng, args.num_boxes)
    boxes2, scores2 = make_boxes(rng, args.num_boxes)
    options = dict(
        iou_threshold=args.iou_threshold, max_output=args.max_output, tile_size=args.tile_size
    )

    ours = jax.jit(lambda b, s: nms(b, s, **options))
    ours_batched = jax.jit(jax.vmap(lambda b, s: nms(b, s, **options)))
    boxes_dev, scores_dev = jax.device_put(boxes), jax.device_put(scores)
    batch_dev = jax.device_put((np.stack([boxes, boxes2]), np.stack([scores, scores2])))

    tf_boxes, tf_scores = tf.constant(boxes), tf.constant(scores)
    tf_nms = tf.function(
        lambda b, s: tf.image.non_max_suppression(
            b, s, max_output_size=args.max_output, iou_threshold=args.iou_threshold
        )
    )

    indices, valid = ours(boxes_dev, scores_dev)
    kept = np.asarray(indices)[np.asarray(valid)]
    tf_kept = tf_nms(tf_boxes, tf_scores).numpy()
    agree = np.array_equal(kept, tf_kept)

    t_ours = median_time(lambda: ours(boxes_dev, scores_dev), args.repeats)
    t_batch = median_time(lambda: ours_batched(*batch_dev), args.repeats)
    t_tf = median_time(lambda: tf_nms(tf_boxes, tf_scores).numpy(), args.repeats)

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()})")
    print(
        f"{args.num_boxes} boxes -> max {args.max_output} at IoU {args.iou_threshold}: "
        f"kept {kept.size} (TF kept {tf_kept.size}, identical: {agree})"
    )
    print(f"frcnn_jax nms (jit)            {t_ours * 1e3:9.2f} ms")
    print(f"tf.image.non_max_suppression   {t_tf * 1e3:9.2f} ms")
    print(f"ratio ours / tf                {t_ours / t_tf:9.2f}")
    print(
        f"frcnn_jax nms vmap batch of 2  {t_batch * 1e3:9.2f} ms "
        f"({t_batch / t_ours:.2f}x one image)"
    )


if __name__ == "__main__":
    main()
