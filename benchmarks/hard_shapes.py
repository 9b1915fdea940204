"""Drawing of the harder shapes benchmark (``make_hard_dataset.py`` writes it to disk).

Shape shorthand: H, W image height and width; N objects in one image.

Unlike the embedded demo data (``frcnn_jax.data.synthetic``, which nothing here changes), an
image is non-square (H in 200..400, W in 240..480, so portrait and landscape), objects of six
classes have any rotation and aspect ratios 1:2..2:1, box sizes sqrt(h * w) from about 8 to 199
px (median near 48), may overlap each other (box IoU below 0.4; a later object paints over at
most half of an earlier one), may be cut by the image border (truncated) and by thin occluding
bars, and sit on a gradient, cloud, stripe or checker background with pixel noise. About 14% of
the images are empty. A box is difficult (about 5%) when less than half of its object's pixels
stay visible (bars), it is smaller than 11 px, or the border leaves less than 60% of its box.

Boxes are float32 (ymin, xmin, ymax, xmax) continuous pixels: the tight bounds of the object's
whole drawn mask (also under occluders) clipped to the image; pixel (r, c) belongs to an object
when its centre (r + 0.5, c + 0.5) is inside the outline. An example is a pure function of
(seed, split, index).
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("rectangle", "ellipse", "triangle", "cross", "star", "ring")
SPLITS = ("trainval", "test")

EMPTY_FRACTION = 0.14
MAX_OBJECTS = 7
HEIGHT_RANGE, WIDTH_RANGE = (200, 400), (240, 480)
MIN_BOX_SIZE, MAX_BOX_SIZE = 8.0, 199.0
# Lognormal shape size before rotation; with rotation, truncation and the size limits the box
# sizes come out at a median near 48 px (8..199).
_SIZE_MEDIAN, _SIZE_SIGMA = 50.0, 0.65
_TRUNCATION_CHANCE = 0.25  # about 9% of the boxes end up truncated
_MAX_BOX_IOU = 0.4
_MIN_VISIBLE_FRACTION = 0.5  # below: difficult (with the next rules, about 5% of the boxes)
_MIN_CLEAR_SIZE = 11.0  # box size below: difficult
_MIN_KEPT_AREA = 0.4  # truncated objects keep at least this share of their box in the image
_MIN_CLEAR_KEPT_AREA = 0.6  # below: difficult
_MIN_LUMA_CONTRAST = 60.0  # object colour vs background base (backgrounds vary by about +-35)
_PLACEMENT_TRIES = 30
_LUMA = np.array([0.299, 0.587, 0.114])


def _frame(ys, xs, angle):
    """Offsets (ys [h, 1], xs [1, w]) from the centre -> the shape's own axes (u, v)."""
    cos, sin = np.cos(angle), np.sin(angle)
    return cos * ys + sin * xs, -sin * ys + cos * xs


def _star(u, v, points, inner):
    """Inside a star of `points` tips, outer radius 1 and inner radius `inner` (u, v normalised)."""
    radius = np.hypot(u, v)
    sector = 2.0 * np.pi / points
    alpha = np.mod(np.arctan2(v, u), sector)
    alpha = np.minimum(alpha, sector - alpha)  # fold onto [0, sector / 2]
    # Edge from the tip (1, 0) to the inner corner at angle sector / 2: a line n . X = d.
    corner = inner * np.array([np.cos(sector / 2), np.sin(sector / 2)])
    normal = np.array([corner[1], 1.0 - corner[0]])
    return radius * (normal[0] * np.cos(alpha) + normal[1] * np.sin(alpha)) <= normal[0]


def _mask(label, u, v, a, b, rng):
    """bool mask of class `label` with half-extents a (along u) and b (along v)."""
    name = CLASS_NAMES[label]
    un, vn = u / a, v / b
    if name == "rectangle":
        return (np.abs(un) <= 1) & (np.abs(vn) <= 1)
    if name == "ellipse":
        return un**2 + vn**2 <= 1
    if name == "triangle":
        return (np.abs(un) <= 1) & (np.abs(vn) <= (un + 1) / 2)
    if name == "cross":
        t = rng.uniform(0.3, 0.45)
        return ((np.abs(un) <= 1) & (np.abs(vn) <= t)) | ((np.abs(vn) <= 1) & (np.abs(un) <= t))
    if name == "star":
        return _star(un, vn, int(rng.integers(5, 7)), rng.uniform(0.4, 0.55))
    r2 = un**2 + vn**2  # ring
    return (r2 <= 1) & (r2 >= rng.uniform(0.45, 0.65) ** 2)


def _background(rng, height, width):
    """float32 [H, W, 3] background of a random kind, and its base colour [3]."""
    base = rng.uniform(40.0, 215.0, size=3)
    ys = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    angle = rng.uniform(0.0, 2.0 * np.pi)
    field = 20.0 * (np.cos(angle) * ys + np.sin(angle) * xs) / np.sqrt(2.0)  # gradient
    kind = rng.integers(4)
    if kind == 1:  # clouds: a coarse random grid, bilinearly upsampled
        gh, gw = rng.integers(3, 9, size=2)
        grid = rng.uniform(-15.0, 15.0, size=(gh, gw))
        rows, cols = np.linspace(0, gh - 1, height), np.linspace(0, gw - 1, width)
        r0 = np.minimum(rows.astype(int), gh - 2)
        c0 = np.minimum(cols.astype(int), gw - 2)
        fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
        top = grid[r0][:, c0] * (1 - fc) + grid[r0][:, c0 + 1] * fc
        bottom = grid[r0 + 1][:, c0] * (1 - fc) + grid[r0 + 1][:, c0 + 1] * fc
        field = field + top * (1 - fr) + bottom * fr
    elif kind == 2:  # stripes
        fy, fx = rng.uniform(2.0, 12.0, size=2) * np.pi
        field = field + 12.0 * np.sign(np.sin(fy * ys + fx * xs + rng.uniform(0, 6.3)))
    elif kind == 3:  # checker
        cell = rng.integers(8, 40)
        rows, cols = np.arange(height)[:, None] // cell, np.arange(width)[None, :] // cell
        field = field + 12.0 * (2.0 * ((rows + cols) % 2) - 1.0)
    tint = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
    return base.astype(np.float32) + field[..., None].astype(np.float32) * tint, base


def _colour(rng, base):
    while True:
        colour = rng.uniform(0.0, 255.0, size=3)
        if abs((colour - base) @ _LUMA) >= _MIN_LUMA_CONTRAST:
            return colour


def _iou(box, boxes):
    tl, br = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(br - tl, 0.0, None), axis=-1)
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=-1)
    return inter / (np.prod(box[2:] - box[:2]) + areas - inter)


def _place(rng, label, height, width):
    """(window origin (r0, c0), full mask, unclipped tight box) of one object, or None."""
    size = np.exp(rng.normal(np.log(_SIZE_MEDIAN), _SIZE_SIGMA))
    ratio = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    a, b = size * np.sqrt(ratio) / 2, size / np.sqrt(ratio) / 2
    reach = np.hypot(a, b)
    if rng.random() < _TRUNCATION_CHANCE:  # centre up to 30% of the reach outside the image
        cy = rng.uniform(-0.3 * reach, height + 0.3 * reach)
        cx = rng.uniform(-0.3 * reach, width + 0.3 * reach)
    else:  # inside, unless the object is too large for that
        cy = rng.uniform(min(reach, height / 2), max(height - reach, height / 2))
        cx = rng.uniform(min(reach, width / 2), max(width - reach, width / 2))
    r0, c0 = int(np.floor(cy - reach)), int(np.floor(cx - reach))
    r1, c1 = int(np.ceil(cy + reach)), int(np.ceil(cx + reach))
    ys = (np.arange(r0, r1) + 0.5)[:, None] - cy
    xs = (np.arange(c0, c1) + 0.5)[None, :] - cx
    u, v = _frame(ys, xs, rng.uniform(0.0, 2.0 * np.pi))
    mask = _mask(label, u, v, a, b, rng)
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(rows):
        return None
    box = np.array([r0 + rows[0], c0 + cols[0], r0 + rows[-1] + 1, c0 + cols[-1] + 1], float)
    if not MIN_BOX_SIZE <= np.sqrt(np.prod(box[2:] - box[:2])) <= MAX_BOX_SIZE:
        return None
    return (r0, c0), mask, box


def _paste(canvas, origin, local, value):
    """canvas[origin + local] = value where local is True, for the part inside the canvas."""
    (r0, c0), (h, w) = origin, local.shape
    top, left = max(r0, 0), max(c0, 0)
    bottom, right = min(r0 + h, canvas.shape[0]), min(c0 + w, canvas.shape[1])
    if bottom <= top or right <= left:
        return
    part = local[top - r0 : bottom - r0, left - c0 : right - c0]
    canvas[top:bottom, left:right][part] = value


def render_hard_example(index: int, *, split: str, seed: int) -> dict[str, np.ndarray]:
    """Draws image ``index`` of ``split``; a pure function of (seed, split, index).

    Returns:
      dict with "image" uint8 [H, W, 3]; "gt_boxes" float32 [N, 4] (ymin, xmin, ymax, xmax)
      continuous pixels; "gt_classes" int32 [N] indices into CLASS_NAMES; "gt_difficult" and
      "gt_truncated" bool [N].
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} unknown; expected one of {SPLITS}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    height = int(rng.integers(HEIGHT_RANGE[0], HEIGHT_RANGE[1] + 1))
    width = int(rng.integers(WIDTH_RANGE[0], WIDTH_RANGE[1] + 1))
    image, base = _background(rng, height, width)
    owner = np.full((height, width), -1, np.int32)  # which object shows at each pixel
    num_objects = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, MAX_OBJECTS + 1))
    limits = np.array([height, width, height, width], float)
    boxes, labels, truncated, areas, kept = [], [], [], [], []
    for _ in range(num_objects):
        label = int(rng.integers(len(CLASS_NAMES)))
        colour = _colour(rng, base)
        for _ in range(_PLACEMENT_TRIES):
            placed = _place(rng, label, height, width)
            if placed is None:
                continue
            origin, local, full = placed
            box = np.clip(full, 0.0, limits)
            kept_area = np.prod(box[2:] - box[:2])
            if kept_area < max(_MIN_KEPT_AREA * np.prod(full[2:] - full[:2]), MIN_BOX_SIZE**2):
                continue
            if boxes and _iou(box, np.array(boxes)).max() >= _MAX_BOX_IOU:
                continue
            inside = np.zeros((height, width), bool)
            _paste(inside, origin, local, True)
            ys, xs = np.nonzero(inside)  # the tight box of the in-image pixels
            covered = owner[ys, xs]
            covered = np.bincount(covered[covered >= 0], minlength=len(boxes))
            shown = np.bincount(owner[owner >= 0], minlength=len(boxes))
            if np.any(shown - covered < _MIN_VISIBLE_FRACTION * np.array(areas, int)):
                continue  # it would hide most of an earlier object: only bars make those
            box = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], float)
            shade = np.zeros(len(ys), np.float32)
            if rng.random() < 0.3:  # a textured object: stripes across it
                phi, frequency = rng.uniform(0.0, np.pi), rng.uniform(0.3, 1.2)
                shade = 15.0 * np.sign(np.sin(frequency * (np.cos(phi) * ys + np.sin(phi) * xs)))
            image[ys, xs] = colour + shade[:, None]
            owner[ys, xs] = len(boxes)
            boxes.append(box)
            labels.append(label)
            truncated.append(not np.array_equal(box, full))
            kept.append(kept_area / np.prod(full[2:] - full[:2]))
            areas.append(len(ys))
            break
    for _ in range(int(rng.integers(0, 4)) if rng.random() < 0.6 else 0):  # occluding bars
        angle, thickness = rng.uniform(0.0, np.pi), rng.uniform(3.0, 10.0)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ys = np.arange(height)[:, None] + 0.5 - cy
        xs = np.arange(width)[None, :] + 0.5 - cx
        bar = np.abs(np.cos(angle) * ys - np.sin(angle) * xs) <= thickness / 2
        image[bar] = rng.uniform(0.0, 255.0, size=3)
        owner[bar] = -1
    image += 5.0 * rng.standard_normal(size=image.shape, dtype=np.float32)
    visible = np.bincount(owner[owner >= 0], minlength=len(boxes))[: len(boxes)]
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    sizes = np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=-1))
    difficult = (
        (visible < _MIN_VISIBLE_FRACTION * np.array(areas))
        | (sizes < _MIN_CLEAR_SIZE)
        | (np.array(kept) < _MIN_CLEAR_KEPT_AREA)
    )
    return {
        "image": np.clip(np.round(image), 0, 255).astype(np.uint8),
        "gt_boxes": boxes,
        "gt_classes": np.array(labels, np.int32),
        "gt_difficult": np.asarray(difficult, bool).reshape(-1),
        "gt_truncated": np.array(truncated, bool),
    }
