"""Anchors at the start of training: fitted to the data (``model.anchors.auto``), recall warning."""

import numpy as np
import pytest
from absl import logging

from frcnn_jax import data as data_lib
from frcnn_jax.data import auto_anchors, stats
from frcnn_jax.models import build_model
from frcnn_jax.training import anchor_setup
from tests.tiny import tiny_config


def _warnings(config, caplog):
    caplog.clear()
    with caplog.at_level(logging.INFO):
        resolved = anchor_setup.setup_anchors(config)
    return resolved, [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_auto_anchors_are_fitted_deterministically_and_replace_the_flag(caplog):
    config = tiny_config(**{"model.anchors.auto": True})
    resolved, _ = _warnings(config, caplog)
    again = anchor_setup.setup_anchors(config)
    assert not resolved.model.anchors.auto and config.model.anchors.auto  # a copy
    assert tuple(resolved.model.anchors.sizes) == tuple(again.model.anchors.sizes)
    # The same fit written out: the tiny training split at its input scale, from the
    # single-level defaults, under the RPN's border rule.
    data = config.data
    buckets = data_lib.bucket_shapes(min_size=data.min_size, max_size=data.max_size)
    split = stats.scale_records(
        data_lib.records(data, data.train_split), min_size=data.min_size, max_size=data.max_size
    )
    geometry = stats.trained_geometry(split, buckets=buckets, exclude_difficult=True)
    (stride,) = build_model(config.model, num_classes=1)._strides()
    start = stats.AnchorSet((stride,), sizes=((128.0, 256.0, 512.0),), ratios=(0.5, 1.0, 2.0))
    fitted = auto_anchors.auto_anchor_set(start, *geometry, rule="inside")
    np.testing.assert_allclose(resolved.model.anchors.sizes, fitted.sizes[0], atol=0.006)
    np.testing.assert_allclose(resolved.model.anchors.ratios, fitted.ratios, atol=6e-5)
    # Boxes of 16-48 px: fitted anchors are within that range, not the defaults' 128-512.
    assert max(resolved.model.anchors.sizes) < 128


def test_low_recall_warns_and_good_recall_does_not(caplog):
    _, warned = _warnings(tiny_config(**{"model.anchors.sizes": (256.0, 384.0, 512.0)}), caplog)
    assert len(warned) == 1 and "anchor recall at IoU 0.5" in warned[0], warned
    # The tiny 64 px images at 128 px input: boxes of 32-96 px, all within reach (100% at 0.5).
    good = {"model.anchors.sizes": (32.0, 48.0, 64.0, 96.0), "data.min_size": 128}
    _, warned = _warnings(tiny_config(**good, **{"data.max_size": 128}), caplog)
    assert not warned


def test_auto_needs_a_source_that_lists_its_boxes():
    config = tiny_config(**{"data.name": "tfds", "model.anchors.auto": True})
    with pytest.raises(ValueError, match="model.anchors.auto=True needs a source"):
        anchor_setup.setup_anchors(config)
