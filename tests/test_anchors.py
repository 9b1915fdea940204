"""Tests for frcnn_jax.anchors against the seeds' anchor code and printed tables."""

import functools

import jax
import numpy as np
import pytest

from frcnn_jax.anchors import (
    anchor_base,
    grid_anchors,
    pyramid_anchors,
    pyramid_feature_shapes,
    pyramid_level_counts,
)

# The seed's printed table (simple-faster-rcnn-pytorch generate_anchor_base()),
# 6 significant digits as printed.
SEED_ANCHOR_TABLE = np.array(
    [
        [-37.2548, -82.5097, 53.2548, 98.5097],
        [-82.5097, -173.019, 98.5097, 189.019],
        [-173.019, -354.039, 189.019, 370.039],
        [-56, -56, 72, 72],
        [-120, -120, 136, 136],
        [-248, -248, 264, 264],
        [-82.5097, -37.2548, 98.5097, 53.2548],
        [-173.019, -82.5097, 189.019, 98.5097],
        [-354.039, -173.019, 370.039, 189.019],
    ]
)
# The seed's printed (h, w) of the same 9 anchors.
SEED_ANCHOR_SHAPES = np.array(
    [
        [90.50967, 181.01933],
        [181.01933, 362.03867],
        [362.03867, 724.07733],
        [128.0, 128.0],
        [256.0, 256.0],
        [512.0, 512.0],
        [181.01933, 90.50967],
        [362.03867, 181.01933],
        [724.07733, 362.03867],
    ]
)


def seed_generate_anchor_base(base_size=16, ratios=(0.5, 1, 2), anchor_scales=(8, 16, 32)):
    """The seed's generate_anchor_base, verbatim apart from six.moves."""
    py = base_size / 2.0
    px = base_size / 2.0
    anchor_base = np.zeros((len(ratios) * len(anchor_scales), 4), dtype=np.float32)
    for i in range(len(ratios)):
        for j in range(len(anchor_scales)):
            h = base_size * anchor_scales[j] * np.sqrt(ratios[i])
            w = base_size * anchor_scales[j] * np.sqrt(1.0 / ratios[i])
            index = i * len(anchor_scales) + j
            anchor_base[index, 0] = py - h / 2.0
            anchor_base[index, 1] = px - w / 2.0
            anchor_base[index, 2] = py + h / 2.0
            anchor_base[index, 3] = px + w / 2.0
    return anchor_base


def seed_enumerate_shifted_anchor(anchor_base, feat_stride, height, width):
    """The seed's _enumerate_shifted_anchor (without its stray pre-definition line)."""
    shift_y = np.arange(0, height * feat_stride, feat_stride)
    shift_x = np.arange(0, width * feat_stride, feat_stride)
    shift_x, shift_y = np.meshgrid(shift_x, shift_y)
    shift = np.stack((shift_y.ravel(), shift_x.ravel(), shift_y.ravel(), shift_x.ravel()), axis=1)
    A = anchor_base.shape[0]
    K = shift.shape[0]
    anchor = anchor_base.reshape((1, A, 4)) + shift.reshape((1, K, 4)).transpose((1, 0, 2))
    return anchor.reshape((K * A, 4)).astype(np.float32)


def test_anchor_base_matches_seed_table():
    base = anchor_base()
    assert base.shape == (9, 4) and base.dtype == np.float32
    # Printed to 6 significant digits, hence the relative tolerance.
    np.testing.assert_allclose(base, SEED_ANCHOR_TABLE, rtol=5e-6)
    heights_widths = np.stack([base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]], axis=1)
    np.testing.assert_allclose(heights_widths, SEED_ANCHOR_SHAPES, atol=1e-4)
    np.testing.assert_allclose(base, seed_generate_anchor_base(), atol=1e-4)


def test_anchor_base_ratio_is_height_over_width():
    # ratio 2 -> twice as tall as wide, area (4 * 2) ** 2, centred on (2, 2).
    (box,) = anchor_base(base_size=4, ratios=(2.0,), scales=(2,))
    h, w = box[2] - box[0], box[3] - box[1]
    np.testing.assert_allclose([h / w, h * w], [2.0, 64.0], rtol=1e-6)
    np.testing.assert_allclose([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], [2.0, 2.0])


@pytest.mark.parametrize(
    "base_size,ratios,scales", [(16, (0.5, 1, 2), (8, 16, 32)), (8, (1,), (4,))]
)
def test_anchor_base_matches_seed_function(base_size, ratios, scales):
    np.testing.assert_allclose(
        anchor_base(base_size, ratios, scales),
        seed_generate_anchor_base(base_size, ratios, scales),
        atol=1e-4,
    )


@pytest.mark.parametrize("stride,height,width", [(16, 3, 5), (16, 1, 1), (8, 4, 2)])
def test_grid_anchors_matches_seed(stride, height, width):
    base = anchor_base()
    anchors = grid_anchors(base, stride, height, width)
    assert anchors.shape == (height * width * 9, 4) and anchors.dtype == np.float32
    expected = seed_enumerate_shifted_anchor(base, stride, height, width)
    np.testing.assert_array_equal(np.asarray(anchors), expected)


def test_grid_anchors_order_is_position_major():
    base = anchor_base()
    anchors = np.asarray(grid_anchors(base, 16, 3, 5))
    # Row (i * W + j) * A + a is base anchor a shifted to position (i, j).
    i, j, a = 2, 3, 7
    np.testing.assert_array_equal(
        anchors[(i * 5 + j) * 9 + a], base[a] + np.float32([32, 48, 32, 48])
    )


def test_grid_anchors_inside_jit():
    base = anchor_base()

    @jax.jit
    def count_inside(image_size):
        anchors = grid_anchors(base, 16, 38, 63)  # static sizes under jit
        inside = (anchors[:, :2] >= 0) & (anchors[:, 2:] <= image_size)
        return inside.all(axis=1).sum()

    image_size = np.array([600.0, 1000.0], np.float32)
    expected = seed_enumerate_shifted_anchor(base, 16, 38, 63)
    inside = (expected[:, :2] >= 0) & (expected[:, 2:] <= image_size)
    assert int(count_inside(image_size)) == inside.all(axis=1).sum() > 0


@functools.cache
def pyramid_1024():
    """The default P2..P6 anchors of a 1024x1024 image, the TF2 seed's example."""
    shapes = pyramid_feature_shapes((1024, 1024))
    return np.asarray(pyramid_anchors(shapes)), pyramid_level_counts(shapes)


def test_pyramid_counts_match_tf2_seed():
    # TF2 seed: a 1024x1024 image gives 256^2*3 + 128^2*3 + 64^2*3 + 32^2*3 + 16^2*3 anchors.
    assert pyramid_feature_shapes((1024, 1024)) == (
        (256, 256),
        (128, 128),
        (64, 64),
        (32, 32),
        (16, 16),
    )
    anchors, counts = pyramid_1024()
    assert counts == (196608, 49152, 12288, 3072, 768)
    assert anchors.shape == (261888, 4) and anchors.dtype == np.float32


def test_pyramid_anchors_match_tf2_seed_up_to_centring():
    anchors, _ = pyramid_1024()
    # The TF2 seed's printed first and last anchors. It centres anchors on the
    # cell corner and its ratio means w / h; ours centre on (stride/2, stride/2)
    # and mean h / w, so reverse the ratio order and remove the half stride.
    seed_first = np.array(
        [
            [-22.627417, -11.313708, 22.627417, 11.313708],
            [-16, -16, 16, 16],
            [-11.313708, -22.627417, 11.313708, 22.627417],
        ]
    )
    seed_last = np.array(
        [
            [597.9613, 778.98065, 1322.0387, 1141.0193],
            [704, 704, 1216, 1216],
            [778.98065, 597.9613, 1141.0193, 1322.0387],
        ]
    )
    np.testing.assert_allclose(anchors[:3][::-1] - 2.0, seed_first, atol=1e-4)  # P2, stride 4
    np.testing.assert_allclose(anchors[-3:][::-1] - 32.0, seed_last, atol=1e-3)  # P6, stride 64


def test_pyramid_levels_are_grid_anchors():
    shapes = ((5, 7), (3, 4))
    anchors = pyramid_anchors(shapes, strides=(8, 16), sizes=(32, 64), ratios=(1.0, 2.0))
    counts = pyramid_level_counts(shapes, ratios=(1.0, 2.0))
    assert counts == (5 * 7 * 2, 3 * 4 * 2)
    p3, p4 = np.split(np.asarray(anchors), np.cumsum(counts)[:-1])
    np.testing.assert_array_equal(p3, grid_anchors(anchor_base(8, (1.0, 2.0), (4.0,)), 8, 5, 7))
    np.testing.assert_array_equal(p4, grid_anchors(anchor_base(16, (1.0, 2.0), (4.0,)), 16, 3, 4))
    # Square anchor of level P3 at position (0, 0): side 32 centred on (4, 4).
    np.testing.assert_allclose(p3[0], [-12, -12, 20, 20])


def test_pyramid_feature_shapes_round_up():
    assert pyramid_feature_shapes((800, 1216), strides=(4, 64)) == ((200, 304), (13, 19))


def test_pyramid_anchors_rejects_mismatched_levels():
    with pytest.raises(ValueError, match="one feature shape, stride and size per level"):
        pyramid_anchors(((4, 4),), strides=(4, 8), sizes=(32, 64))
