"""frcnn_jax.logs: third-party INFO records are dropped, ours and every warning pass."""

import logging
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import logging as absl_logging

from frcnn_jax import logs


def _record(pathname, level):
    return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def _path(*parts):
    return os.sep + os.sep.join(parts)


@pytest.mark.parametrize(
    "pathname, level, kept",
    [
        (_path("site-packages", "orbax", "checkpoint", "a.py"), logging.INFO, False),
        (_path("site-packages", "clu", "metric_writers", "w.py"), logging.INFO, False),
        (_path("site-packages", "orbax", "checkpoint", "a.py"), logging.WARNING, True),
        (_path("work", "frcnn_jax", "train.py"), logging.INFO, True),
        (_path("work", "orbaxish", "b.py"), logging.INFO, True),
    ],
)
def test_filter(pathname, level, kept):
    assert logs.BelowWarningFrom(logs.QUIET_PACKAGES).filter(_record(pathname, level)) == kept


@pytest.fixture
def absl_info():
    before = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    yield
    absl_logging.set_verbosity(before)
    logs.quiet_third_party(verbose=True)


def _save_and_log(directory):
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True))
    manager.save(1, args=ocp.args.StandardSave({"w": np.arange(3.0)}))
    manager.wait_until_finished()
    manager.close()
    absl_logging.info("our line")


def _from_orbax(records):
    return [r for r in records if f"{os.sep}orbax{os.sep}" in r.pathname]


def test_an_orbax_save_logs_nothing_below_warning(tmp_path, caplog, absl_info):
    caplog.set_level(logging.INFO)
    logs.quiet_third_party()
    logs.quiet_third_party()  # idempotent
    _save_and_log(str(tmp_path / "quiet"))
    assert not _from_orbax(caplog.records)
    assert "our line" in caplog.text
    caplog.clear()
    logs.quiet_third_party(verbose=True)
    _save_and_log(str(tmp_path / "verbose"))
    assert len(_from_orbax(caplog.records)) > 10  # what --verbose brings back
