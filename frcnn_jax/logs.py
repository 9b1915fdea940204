"""Keeping third-party INFO chatter out of the training log; warnings and errors still show.

Orbax logs about 40 absl INFO lines per checkpoint save (thread names, timings, renames) and
clu's LoggingWriter repeats every scalar we log ourselves. Both log through ``absl.logging``,
whose records all go to the one Python logger "absl", so a logger level cannot tell them from
ours; a filter on that logger drops INFO (and DEBUG) records whose source file lies in one of
the quiet packages. JAX and TensorFlow Datasets log through their own Python loggers ("jax...",
"tensorflow_datasets..."), whose level is raised to WARNING. ``verbose=True`` removes both.

C++ logs (XLA, TSL's "[Gloo] Rank 0 is connected ..." and TensorFlow's "I0000 ...") bypass
Python: TF_CPP_MIN_LOG_LEVEL=1 (set before TensorFlow is imported) hides TensorFlow's INFO.
"""

from __future__ import annotations

import logging
import os

# Packages whose INFO records are dropped; their warnings and errors pass.
QUIET_PACKAGES = ("orbax", "clu")
# Python loggers (not absl) raised to WARNING.
QUIET_LOGGERS = ("jax", "tensorflow_datasets", "absl.testing")


class BelowWarningFrom(logging.Filter):
    """Drops records below WARNING whose source file lies in one of ``packages``."""

    def __init__(self, packages):
        super().__init__()
        self._parts = tuple(f"{os.sep}{package}{os.sep}" for package in packages)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not any(part in record.pathname for part in self._parts)


_installed: list[tuple[logging.Logger, logging.Filter | None, int | None]] = []


def quiet_third_party(*, verbose: bool = False, packages=QUIET_PACKAGES) -> None:
    """Silences third-party INFO logs (module docstring); ``verbose`` restores them.

    Idempotent: a second call first undoes the first.
    """
    while _installed:
        logger, log_filter, level = _installed.pop()
        if log_filter is not None:
            logger.removeFilter(log_filter)
        if level is not None:
            logger.setLevel(level)
    if verbose:
        return
    absl_logger = logging.getLogger("absl")
    log_filter = BelowWarningFrom(packages)
    absl_logger.addFilter(log_filter)
    _installed.append((absl_logger, log_filter, None))
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        _installed.append((logger, None, logger.level))
        logger.setLevel(logging.WARNING)
