"""Sequential steps of NMS's two forms: how many iterations each of its while loops runs.

Run: ``python benchmarks/nms_steps.py`` (CPU, a minute).

The loops of ``frcnn_jax.nms`` depend on the data, so loop_table.py can only bound
them. Here the real implementation runs eagerly in both forms (CPU: 512-candidate
tiles, a loop over the kept blocks; accelerators: 2048-candidate tiles, one block)
with ``jax.lax.while_loop`` replaced by a Python loop that counts the iterations of
each loop, on boxes like the RPN's: candidates spread over a 600x1000 image
(``nms_bench.make_boxes``), and candidates crowded around 20 objects as a trained
RPN's are. On an accelerator each iteration costs at least a kernel launch and a
device-to-host copy of the loop condition.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from nms_bench import make_boxes  # noqa: E402

from frcnn_jax import nms as nms_lib  # noqa: E402

# Names of the loop bodies in frcnn_jax/nms.py -> what the loop walks.
LOOPS = {
    "body": "tiles",
    "cross_body": "kept-block checks",
    "_resolve_tile.<locals>.body": "fixed-point iterations",
}


@contextlib.contextmanager
def counted_loops():
    """Replaces ``jax.lax.while_loop`` by a Python loop; yields the counts by body name."""
    counts = collections.Counter()

    def while_loop(cond, body, init):
        name = body.__qualname__.rsplit(".<locals>.", 1)[-1]
        if body.__qualname__.startswith("_resolve_tile"):
            name = "_resolve_tile.<locals>.body"
        state = init
        while bool(cond(state)):
            counts[name] += 1
            state = body(state)
        return state

    with mock.patch.object(jax.lax, "while_loop", while_loop):
        yield counts


def crowded_boxes(rng: np.random.Generator, num_boxes: int, num_objects: int = 20):
    """float32 boxes ``[N, 4]`` jittered around ``num_objects`` objects, and scores ``[N]``."""
    objects, _ = make_boxes(rng, num_objects)
    which = rng.integers(0, num_objects, num_boxes)
    sides = np.tile(objects[which, 2:] - objects[which, :2], 2)  # [N, 4] (h, w, h, w)
    boxes = objects[which] + rng.normal(0, 0.15, (num_boxes, 4)) * sides
    boxes = np.concatenate([boxes[:, :2], np.maximum(boxes[:, 2:], boxes[:, :2] + 1)], axis=1)
    return boxes.astype(np.float32), rng.uniform(size=num_boxes).astype(np.float32)


def main() -> None:
    rng = np.random.default_rng(0)
    cases = {
        "12000 spread -> 2000 at 0.7": (*make_boxes(rng, 12000), None, 0.7, 2000),
        "12000 crowded -> 2000 at 0.7": (*crowded_boxes(rng, 12000), None, 0.7, 2000),
        "6000 crowded, 20 classes -> 100 at 0.3": (
            *crowded_boxes(rng, 6000),
            rng.integers(0, 20, 6000).astype(np.int32),
            0.3,
            100,
        ),
    }
    print("| candidates | form | tiles | kept-block checks | fixed-point iterations | total |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (boxes, scores, classes, threshold, max_output) in cases.items():
        results = []
        for form in ("cpu", "accelerator"):
            with counted_loops() as counts:
                kept = nms_lib._nms(
                    boxes,
                    scores,
                    classes,
                    None,
                    iou_threshold=threshold,
                    max_output=max_output,
                    tile_size=None,
                    form=form,
                )
            results.append([np.asarray(k) for k in kept])
            steps = [counts[loop] for loop in LOOPS]
            print(f"| {name} | {form} | {' | '.join(map(str, steps))} | {sum(steps)} |")
        if not all(np.array_equal(a, b) for a, b in zip(*results)):
            raise AssertionError(f"{name}: the two forms keep different boxes")


if __name__ == "__main__":
    main()
