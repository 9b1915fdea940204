"""The logging window of a training run: mean losses, images/s and ETA every N steps."""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import logging

from frcnn_jax.training.sharding import unreplicate_metrics


class MetricWindow:
    """Sums step metrics on the device and turns them into one log line per window.

    Steps that compiled a program are left out of the rate (``restart_clock``).
    """

    def __init__(self, *, total_steps: int, batch_size: int):
        self.total_steps, self.batch_size = total_steps, batch_size
        self._sums, self._steps, self._images = None, 0, 0
        self._start = time.perf_counter()

    def restart_clock(self) -> None:
        self._start, self._images = time.perf_counter(), 0

    def add(self, metrics, *, timed: bool = True) -> None:
        """Adds one step's device metrics (no host transfer)."""
        self._sums = (
            metrics if self._sums is None else jax.tree.map(jax.numpy.add, self._sums, metrics)
        )
        self._steps += 1
        self._images += self.batch_size if timed else 0

    def summary(self, step: int, learning_rate: float) -> dict[str, float]:
        """Means over the window plus ``learning_rate`` and ``images_per_second``; logs them."""
        means = {k: v / self._steps for k, v in unreplicate_metrics(self._sums).items()}
        elapsed = time.perf_counter() - self._start
        rate = self._images / elapsed if self._images else float("nan")
        means.update(learning_rate=learning_rate, images_per_second=rate)
        eta = (self.total_steps - step) * self.batch_size / rate if rate > 0 else float("nan")
        logging.info(
            "step %d/%d  loss %.4f (rpn %.4f/%.4f roi %.4f/%.4f)  lr %.2e  %.1f img/s  ETA %s",
            step,
            self.total_steps,
            means["total"],
            means["rpn_cls"],
            means["rpn_box"],
            means["roi_cls"],
            means["roi_box"],
            learning_rate,
            rate,
            time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "?",
        )
        self._sums, self._steps = None, 0
        self.restart_clock()
        return means
