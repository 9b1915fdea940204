"""Pictures of anchors, sampled anchors, proposals and detections (inference/visualize.py)."""

import jax
import numpy as np
import pytest
from PIL import Image

from frcnn_jax import anchors as anchors_lib
from frcnn_jax.inference import visualize


def _image(height=40, width=60):
    return np.full((height, width, 3), 30, np.uint8)  # dark grey


def _pixel(picture, y, x):
    return picture.getpixel((x, y))


def test_draw_detections_colours_boxes_by_class_and_keeps_input():
    image = _image(120, 200)
    picture = visualize.draw_detections(
        image,
        [[60, 20, 100, 120], [40, 130, 110, 190]],
        [0, 1],
        [0.9, 0.4],
        class_names=["cat", "dog"],
        min_display_size=0,
    )
    assert isinstance(picture, Image.Image) and picture.size == (200, 120)
    # Bottom edge of box 0 (row ymax - 1 = 99) in class 0's colour; its inside untouched.
    assert _pixel(picture, 99, 70) == visualize.class_color(0)
    assert _pixel(picture, 80, 70) == (30, 30, 30)
    assert _pixel(picture, 109, 160) == visualize.class_color(1)  # bottom edge of box 1
    # The label sits on a filled background just above box 0 (top 60).
    assert _pixel(picture, 58, 21) == visualize.class_color(0)
    assert (image == 30).all()  # the input array is not drawn on


def test_draw_detections_upscales_small_images_for_readable_labels():
    picture = visualize.draw_detections(
        _image(), [[10, 10, 30, 50]], [2], [0.5], class_names=["a", "b", "c"]
    )
    assert picture.size == (540, 360)  # integer factor ceil(512 / 60) = 9
    assert _pixel(picture, 30 * 9 - 1, 270) == visualize.class_color(2)  # scaled bottom edge


def test_draw_detections_accepts_grayscale_pil_and_no_detections():
    picture = visualize.draw_detections(
        Image.new("L", (20, 10), 7), np.zeros((0, 4)), np.zeros(0, int), min_display_size=0
    )
    assert picture.mode == "RGB" and _pixel(picture, 5, 5) == (7, 7, 7)


def test_class_colors_are_distinct():
    colors = [visualize.class_color(i) for i in range(40)]
    assert len(set(colors)) == 40


def test_draw_anchors_grows_the_canvas_for_anchors_outside_the_image():
    base = anchors_lib.anchor_base(base_size=16, ratios=(1.0,), scales=(4.0,))  # one 64 px square
    # Position (0, 0): the anchor spans -24..40 around the centre (8, 8), 24 px outside.
    picture = visualize.draw_anchors(_image(), base, stride=16, position=(0, 0), min_display_size=0)
    assert picture.size == (60 + 28, 40 + 28)  # 24 + 4 px margin on the left and top
    assert _pixel(picture, 28 + 20, 28 + 30) == (30, 30, 30)  # the image sits at the offset
    assert _pixel(picture, 4, 10) == visualize.class_color(0)  # top edge at -24


def test_draw_sampled_anchors_marks_the_positive_anchor_on_the_gt():
    anchors = np.array([[10, 10, 30, 30], [0, 40, 8, 58]], np.float32)
    # Anchor 0 is the gt box itself (IoU 1, positive); anchor 1 has IoU 0 (negative).
    picture = visualize.draw_sampled_anchors(
        _image(), anchors, [[10, 10, 30, 30]], key=jax.random.key(0), min_display_size=0
    )
    assert _pixel(picture, 20, 10) in (visualize.POSITIVE_COLOR, visualize.GT_COLOR)
    red = _pixel(picture, 4, 40)  # left edge of the negative, half transparent red on grey
    assert red[0] > red[1] and red[0] > 60


def test_draw_proposals_draws_the_best_on_top_and_respects_valid():
    proposals = np.array([[5, 5, 25, 25], [5, 5, 25, 25], [30, 30, 38, 58]], np.float32)
    picture = visualize.draw_proposals(
        _image(), proposals, valid=[True, True, False], min_display_size=0
    )
    assert _pixel(picture, 5, 15) == (255, 225, 25)  # best proposal: yellow, drawn last
    assert _pixel(picture, 37, 45) == (30, 30, 30)  # invalid proposal not drawn


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_non_uint8_images_are_rejected(dtype):
    with pytest.raises(TypeError, match="uint8"):
        visualize.draw_detections(np.zeros((4, 4, 3), dtype), [], [])
