"""Stopping on a preemption notice (SIGTERM) at a step every process agrees on.

Schedulers announce an eviction with SIGTERM and kill some seconds later (Kubernetes 30 s by
default, SLURM ``--signal``/KillWait, spot VMs about 30 s, TPU maintenance events). The training
loop asks ``watch.reached(step)`` after every step, on every process; when it says True, all
processes save a checkpoint at that step, wait for it to be complete and exit with
``EXIT_PREEMPTED``.

- Distributed runtime (``jax.distributed.initialize``, any process count): JAX's preemption
  sync manager. TSL's SIGTERM notifier tells the coordination service, which picks a step past
  every process's current one; ``multihost_utils.reached_preemption_sync_point(step)`` turns
  True at that step on all processes, whichever of them got the signal. No Python SIGTERM
  handler may be installed then: it would replace the notifier and the notice would be lost.
- No distributed runtime (a plain single-process run): a Python SIGTERM handler sets a flag;
  the next step asked about is the sync point.
"""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry". The checkpoint at
# the preemption step is complete; starting the same command again continues from it.
EXIT_PREEMPTED = 75


class PreemptionWatch:
    """Answers "stop at this step?" (module docstring). Use as a context manager or close()."""

    def __init__(self):
        self._distributed = jax.distributed.is_initialized()
        self._notice = threading.Event()
        self._previous = None
        if not self._distributed:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        self._notice.set()

    def reached(self, step: int) -> bool:
        """Whether this process must save at ``step`` and stop; call it at every step."""
        if self._distributed:
            reached = multihost_utils.reached_preemption_sync_point(step)
        else:
            reached = self._notice.is_set()
        if reached:
            logging.warning("preemption notice: saving at step %d and stopping", step)
        return reached

    def close(self) -> None:
        """Restores the SIGTERM handler that was there before (single-process mode)."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def __enter__(self) -> PreemptionWatch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
