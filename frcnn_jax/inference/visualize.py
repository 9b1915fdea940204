"""Pictures of what the detector sees: anchors, sampled anchors, proposals, detections.

Shape shorthand: A anchors, G gt boxes, P proposals, n detections.

Every function takes an image (uint8 NumPy ``[H, W, 3]`` / ``[H, W]`` or a PIL image) and boxes
``(ymin, xmin, ymax, xmax)`` in that image's pixels, and returns a new RGB PIL image; the input
is never modified. These are the seeds' ``visualize.draw_boxes`` / ``display_instances``
pictures, drawn with PIL so that they work headless and without matplotlib.
"""

from __future__ import annotations

import colorsys
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from frcnn_jax import targets

# Sasha Trubetskoy's "20 simple, distinct colours", most distinct first; then golden-ratio hues.
_PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
    (255, 225, 25),
)
POSITIVE_COLOR = (60, 220, 75)
NEGATIVE_COLOR = (230, 25, 75)
GT_COLOR = (255, 225, 25)


def class_color(class_id: int) -> tuple[int, int, int]:
    """A distinct RGB colour per class id, stable across images."""
    if class_id < len(_PALETTE):
        return _PALETTE[class_id]
    hue = (class_id * 0.618033988749895) % 1.0
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.95))


def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array).convert("RGB")


def _upscaled(image: Image.Image, min_display_size: int) -> tuple[Image.Image, int]:
    """Integer nearest-neighbour upscale so that small images get readable labels."""
    factor = max(1, math.ceil(min_display_size / max(image.size)))
    if factor == 1:
        return image, 1
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST), factor


def _font(image: Image.Image) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(12, round(max(image.size) / 32)))


def _line_width(image: Image.Image) -> int:
    return max(2, round(max(image.size) / 200))


def _text_color(background) -> tuple[int, int, int]:
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _rectangle(draw, box, color, width):
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    draw.rectangle(
        [xmin, ymin, max(xmax - 1, xmin), max(ymax - 1, ymin)], outline=color, width=width
    )


def _label(draw, box, text, color, font, image_width):
    """Text on a filled background at the box's top-left, above the box when there is room."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left + 6, bottom - top + 4
    x = min(max(float(box[1]), 0.0), max(image_width - width, 0))
    y = float(box[0]) - height if float(box[0]) >= height else max(float(box[0]), 0.0)
    draw.rectangle([x, y, x + width, y + height], fill=color)
    draw.text((x + 3 - left, y + 2 - top), text, fill=_text_color(color), font=font)


def draw_detections(
    image,
    boxes,
    classes,
    scores=None,
    *,
    class_names: Sequence[str] | None = None,
    min_display_size: int = 512,
) -> Image.Image:
    """Boxes with "class score" labels in one colour per class (the seed's display_instances).

    Args:
      image: uint8 ``[H, W, 3]`` or PIL image.
      boxes: float ``[n, 4]`` (ymin, xmin, ymax, xmax) pixels of ``image``.
      classes: int ``[n]`` 0-based; scores: float ``[n]`` or None.
      class_names: names indexed by class id (default: the ids).
      min_display_size: images whose longer side is smaller are upscaled by an integer factor
        (nearest neighbour) so labels stay readable; the picture is then larger than ``image``.
    """
    canvas, factor = _upscaled(_to_pil(image), min_display_size)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * factor
    classes = np.asarray(classes, np.int64).reshape(-1)
    scores = None if scores is None else np.asarray(scores, np.float32).reshape(-1)
    draw, font, width = ImageDraw.Draw(canvas), _font(canvas), _line_width(canvas)
    # Lowest score first, so the most confident boxes and labels end up on top.
    order = np.argsort(scores, kind="stable") if scores is not None else range(len(boxes))
    for i in order:
        color = class_color(int(classes[i]))
        name = class_names[classes[i]] if class_names is not None else str(classes[i])
        _rectangle(draw, boxes[i], color, width)
        text = name if scores is None else f"{name} {scores[i]:.2f}"
        _label(draw, boxes[i], text, color, font, canvas.width)
    return canvas


def _with_margin(image: Image.Image, boxes: np.ndarray, factor: int):
    """A canvas grown (grey border) to hold every box, and the pixel offset of the image."""

    def margin(outside: float) -> int:
        return math.ceil(outside) + 4 if outside > 0 else 0

    top = margin(-boxes[:, 0].min(initial=0.0) * factor)
    left = margin(-boxes[:, 1].min(initial=0.0) * factor)
    bottom = margin(boxes[:, 2].max(initial=0.0) * factor - image.height)
    right = margin(boxes[:, 3].max(initial=0.0) * factor - image.width)
    canvas = Image.new(
        "RGB", (image.width + left + right, image.height + top + bottom), (96, 96, 96)
    )
    canvas.paste(image, (left, top))
    return canvas, np.array([top, left, top, left], np.float32)


def draw_anchors(
    image,
    base_anchors,
    *,
    stride: int,
    position: tuple[int, int],
    min_display_size: int = 512,
) -> Image.Image:
    """The anchors of one feature-map position, on a canvas grown to show those reaching outside.

    Args:
      image: uint8 ``[H, W, 3]`` or PIL image (the resized network input).
      base_anchors: float ``[A, 4]`` anchors of cell (0, 0), e.g. ``anchors.anchor_base()``
        or ``anchor_base(base_size=stride, scales=model.anchor_scales)``.
      stride: feature stride in pixels; position (i, j) shifts the base by (i, j) * stride, as
        ``anchors.grid_anchors`` does.
      position: feature-map cell (row, column).
    """
    shift = np.array([position[0], position[1]] * 2, np.float32) * stride
    boxes = np.asarray(base_anchors, np.float32).reshape(-1, 4) + shift
    image, factor = _upscaled(_to_pil(image), min_display_size)
    canvas, offset = _with_margin(image, boxes, factor)
    boxes = boxes * factor + offset
    draw, width = ImageDraw.Draw(canvas), _line_width(canvas)
    for a, box in enumerate(boxes):
        _rectangle(draw, box, class_color(a), width)
    cy, cx = (boxes[0, 0] + boxes[0, 2]) / 2, (boxes[0, 1] + boxes[0, 3]) / 2
    radius = 2 * width
    draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=GT_COLOR)
    return canvas


def draw_sampled_anchors(
    image,
    anchors,
    gt_boxes,
    *,
    key: jax.Array,
    gt_mask=None,
    num_samples: int = 256,
    positive_fraction: float = 0.5,
    positive_iou: float = 0.7,
    negative_iou: float = 0.3,
    min_display_size: int = 512,
) -> Image.Image:
    """The anchors ``targets.anchor_targets`` samples: positives green, negatives red, gt yellow.

    Args:
      image: uint8 ``[H, W, 3]`` or PIL image (the resized network input; its size is the
        ``image_size`` the targets use).
      anchors: float ``[A, 4]`` (ymin, xmin, ymax, xmax), e.g. ``model.anchors(H, W)``.
      gt_boxes: float ``[G, 4]``; gt_mask: bool ``[G]`` (default all True).
      key: PRNG key of the subsampling; the sampling options are ``anchor_targets``'s.
    """
    image = _to_pil(image)
    gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
    gt_mask = np.ones(len(gt_boxes), bool) if gt_mask is None else np.asarray(gt_mask, bool)
    # One jitted program compiles faster than op-by-op dispatch of the eager function.
    sample = jax.jit(
        functools.partial(
            targets.anchor_targets,
            num_samples=num_samples,
            positive_fraction=positive_fraction,
            positive_iou=positive_iou,
            negative_iou=negative_iou,
        )
    )
    labels, _ = sample(
        key,
        np.asarray(anchors, np.float32),
        gt_boxes,
        gt_mask,
        np.array([image.height, image.width], np.int32),
    )
    labels = np.asarray(labels)
    anchors = np.asarray(anchors, np.float32)
    canvas, factor = _upscaled(image, min_display_size)
    width = _line_width(canvas)
    # Negatives are many: half-transparent and thin so that the positives stay visible.
    overlay = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    overlay_draw = ImageDraw.Draw(overlay)
    for box in anchors[labels == 0] * factor:
        _rectangle(overlay_draw, box, (*NEGATIVE_COLOR, 110), 1)
    canvas = Image.alpha_composite(canvas.convert("RGBA"), overlay).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    for box in anchors[labels == 1] * factor:
        _rectangle(draw, box, POSITIVE_COLOR, width)
    for box in gt_boxes[gt_mask] * factor:
        _rectangle(draw, box, GT_COLOR, width + 1)
    return canvas


def rpn_proposals(model, variables, images, image_sizes, scales=None):
    """The RPN's test-time proposals of a batch, best first (what the RoI head sees).

    Args:
      model: a ``FasterRCNN``; variables: its ``{"params", "frozen"}``.
      images: uint8 ``[B, Hb, Wb, 3]`` padded; image_sizes: int32 ``[B, 2]``; scales: float32
        ``[B, 2]`` resize factors (None: 1), as in a batch of the data pipeline or
        ``Detector.preprocess``.

    Returns:
      ``(rois float32 [B, P, 4] resized-image pixels, roi_mask bool [B, P])`` with
      P = ``model.test_options.post_nms_top_n``, for ``draw_proposals``.
    """

    rois, roi_mask = jax.jit(functools.partial(model.apply, method=model.proposals))(
        variables, jnp.asarray(images), jnp.asarray(image_sizes), scales
    )
    return np.asarray(rois), np.asarray(roi_mask)


def draw_proposals(
    image,
    proposals,
    *,
    valid=None,
    top_n: int = 50,
    min_display_size: int = 512,
) -> Image.Image:
    """The ``top_n`` first proposals (``proposals.propose`` returns them best first).

    Colour runs from yellow (best) to blue (rank ``top_n``); the best are drawn last, on top.

    Args:
      image: uint8 ``[H, W, 3]`` or PIL image.
      proposals: float ``[P, 4]`` (ymin, xmin, ymax, xmax) pixels of ``image``, best first.
      valid: bool ``[P]`` (``roi_mask``), default all True.
    """
    proposals = np.asarray(proposals, np.float32).reshape(-1, 4)
    if valid is not None:
        proposals = proposals[np.asarray(valid, bool)]
    proposals = proposals[:top_n]
    canvas, factor = _upscaled(_to_pil(image), min_display_size)
    draw, width = ImageDraw.Draw(canvas), max(1, _line_width(canvas) - 1)
    for rank in range(len(proposals) - 1, -1, -1):
        t = rank / max(len(proposals) - 1, 1)
        color = tuple(int(round((1 - t) * a + t * b)) for a, b in zip((255, 225, 25), (0, 90, 255)))
        _rectangle(draw, proposals[rank] * factor, color, width)
    return canvas
