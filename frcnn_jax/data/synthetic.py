"""The embedded dataset: procedurally drawn shapes on textured backgrounds (no download).

Shape shorthand: H, W image height and width; N objects in one image.

Each image shows 0..``max_objects`` filled shapes of four classes (``CLASS_NAMES``) with a
random size, aspect ratio and colour on a background made of a base colour, a linear gradient,
a sinusoidal texture and pixel noise. Colour says nothing about the class (every object's colour
is drawn independently); only the outline does. To keep the task learnable by a small detector
in minutes, every object has a clear luminance contrast with the background, objects never share
or touch pixels (a one-pixel gap), and the boxes of two objects overlap with IoU below
``max_iou``. A fraction ``empty_fraction`` of the images has no object at all.

An example is a pure function of ``(seed, split, index)``: ``render_example`` draws it in NumPy
and ``source`` wraps it in ``tf.data`` with the element structure of every data source
(see ``frcnn_jax/data/__init__.py``).

Boxes are float32 ``(ymin, xmin, ymax, xmax)`` in continuous pixel coordinates, the exact tight
bounds of the drawn mask: a shape covering rows r0..r1 (inclusive) has ymin = r0, ymax = r1 + 1.
Pixel (r, c) belongs to a shape when its centre (r + 0.5, c + 0.5) lies inside the outline.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from frcnn_jax.data.example_cache import ExampleCache
from frcnn_jax.data.image_records import ImageRecord
from frcnn_jax.data.index import ExampleIndex, RandomAccessSource

CLASS_NAMES = ("rectangle", "ellipse", "triangle", "cross")
SPLITS = ("train", "test")

# Placement retries per object before the image simply gets fewer objects.
_MAX_PLACEMENT_TRIES = 20
# Luminance difference between an object's colour and the background's base colour. The
# background varies by at most +-25 around its base (gradient 15 + texture 10), so every object
# keeps a contrast of at least 45 grey levels against its surroundings.
_MIN_LUMINANCE_CONTRAST = 70.0
# Splits up to this size are kept in memory after their first epoch (the embedded config's
# 2000 images of 128x128 take 98 MB); drawing costs about 2 ms of CPU per image.
_MAX_CACHE_BYTES = 1 << 30
_LUMINANCE_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma.


def _window(cy, cx, hh, hw, shape):
    """Pixel-centre grid of the rows/cols a shape of half-size (hh, hw) at (cy, cx) can touch."""
    r0, r1 = max(int(np.floor(cy - hh)), 0), min(int(np.ceil(cy + hh)), shape[0])
    c0, c1 = max(int(np.floor(cx - hw)), 0), min(int(np.ceil(cx + hw)), shape[1])
    ys = (np.arange(r0, r1) + 0.5)[:, None] - cy  # [h, 1] centre offsets
    xs = (np.arange(c0, c1) + 0.5)[None, :] - cx  # [1, w]
    return (r0, c0), ys, xs


def _shape_mask(label, ys, xs, hh, hw, rng):
    """Boolean mask of one shape of class ``label`` on the offset grid (ys [h, 1], xs [1, w])."""
    name = CLASS_NAMES[label]
    if name == "rectangle":
        return (np.abs(ys) <= hh) & (np.abs(xs) <= hw)
    if name == "ellipse":
        return (ys / hh) ** 2 + (xs / hw) ** 2 <= 1.0
    if name == "triangle":
        # Isosceles, apex up or down: the half-width grows linearly from the apex to the base.
        depth = (ys + hh) if rng.random() < 0.5 else (hh - ys)  # distance from the apex row
        return (np.abs(ys) <= hh) & (np.abs(xs) <= hw * depth / (2.0 * hh))
    # Cross: a plus sign whose arms are 30..45% of the shape's height / width thick.
    thickness = rng.uniform(0.3, 0.45)
    vertical = (np.abs(ys) <= hh) & (np.abs(xs) <= thickness * hw)
    horizontal = (np.abs(xs) <= hw) & (np.abs(ys) <= thickness * hh)
    return vertical | horizontal


def _dilate(mask):
    """3x3 binary dilation of a 2-D boolean mask (keeps a one-pixel gap between objects)."""
    padded = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def _box_iou(box, boxes):
    """IoU of one box [4] with boxes [N, 4], (ymin, xmin, ymax, xmax)."""
    tl = np.maximum(box[:2], boxes[:, :2])
    br = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(br - tl, 0.0, None), axis=-1)
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=-1)
    return inter / (np.prod(box[2:] - box[:2]) + areas - inter)


def _background_draws(rng):
    """The background's random numbers: base colour [3], (angle, phase), (fy, fx), tint [3]."""
    base = rng.uniform(30.0, 225.0, size=3)
    angle, phase = rng.uniform(0.0, 2.0 * np.pi, size=2)
    fy, fx = rng.uniform(1.0, 4.0, size=2) * np.pi
    tint = rng.uniform(0.5, 1.0, size=3).astype(np.float32)  # texture is not grey
    return base, (angle, phase), (fy, fx), tint


def _background(rng, height, width):
    """float32 [H, W, 3] textured background and its base colour [3]."""
    base, (angle, phase), (fy, fx), tint = _background_draws(rng)
    ys = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    gradient = 15.0 * (np.cos(angle) * ys + np.sin(angle) * xs) / np.sqrt(2.0)
    texture = 10.0 * np.sin(fy * ys + fx * xs + phase)
    return base.astype(np.float32) + (gradient + texture)[..., None] * tint, base


def _num_objects(rng, *, max_objects, empty_fraction):
    """Objects to place: 0 for an empty image, else 1..max_objects (drawn after the background)."""
    return 0 if rng.random() < empty_fraction else int(rng.integers(1, max_objects + 1))


def has_objects(index: int, *, split: str, seed: int, max_objects: int = 4,
                empty_fraction: float = 0.1, **unused) -> bool:  # fmt: skip
    """Whether ``render_example(index, ...)`` draws an object, without drawing the image.

    Replays the random draws that precede the object count. An image with a non-zero count
    always has an object: the first one is placed on an empty canvas at its first try.
    """
    del unused
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    _background_draws(rng)
    return _num_objects(rng, max_objects=max_objects, empty_fraction=empty_fraction) > 0


def _object_colour(rng, background_base):
    """RGB colour [3] whose luma differs from the background's by _MIN_LUMINANCE_CONTRAST."""
    base_luma = background_base @ _LUMINANCE_WEIGHTS
    while True:
        colour = rng.uniform(0.0, 255.0, size=3)
        if abs(colour @ _LUMINANCE_WEIGHTS - base_luma) >= _MIN_LUMINANCE_CONTRAST:
            return colour


def render_example(
    index: int,
    *,
    split: str,
    seed: int,
    image_size: tuple[int, int] = (128, 128),
    max_objects: int = 4,
    min_object_size: float = 16.0,
    max_object_size: float = 90.0,
    empty_fraction: float = 0.1,
    max_iou: float = 0.3,
) -> dict[str, np.ndarray]:
    """Draws synthetic image ``index`` of ``split``; a pure function of (seed, split, index).

    Object sides lie in [min_object_size, max_object_size] pixels: the geometric mean side is
    log-uniform in that range and the aspect ratio log-uniform in [1/2, 2].

    Returns:
      dict with "image" uint8 [H, W, 3]; "gt_boxes" float32 [N, 4] (ymin, xmin, ymax, xmax) exact
      tight bounds of "masks" bool [N, H, W]; "gt_classes" int32 [N] indices into CLASS_NAMES.
    """
    if split not in SPLITS:
        raise ValueError(f"synthetic split {split!r} unknown; expected one of {SPLITS}")
    height, width = image_size
    if not 1 <= min_object_size <= max_object_size <= min(height, width):
        raise ValueError(
            f"synthetic object sizes need 1 <= min_object_size ({min_object_size}) <= "
            f"max_object_size ({max_object_size}) <= min(image_size) ({min(height, width)})"
        )
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    image, background_base = _background(rng, height, width)
    num_objects = _num_objects(rng, max_objects=max_objects, empty_fraction=empty_fraction)
    blocked = np.zeros((height, width), dtype=bool)
    boxes, labels, masks = [], [], []
    log_sizes = np.log([min_object_size, max_object_size])
    for _ in range(num_objects):
        label = int(rng.integers(len(CLASS_NAMES)))
        colour = _object_colour(rng, background_base)
        for _ in range(_MAX_PLACEMENT_TRIES):
            size = np.exp(rng.uniform(*log_sizes))
            ratio = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
            hh, hw = np.clip([size * np.sqrt(ratio), size / np.sqrt(ratio)], *np.exp(log_sizes)) / 2
            cy, cx = rng.uniform(hh, height - hh), rng.uniform(hw, width - hw)
            (r0, c0), ys, xs = _window(cy, cx, hh, hw, (height, width))
            local = _shape_mask(label, ys, xs, hh, hw, rng)
            rows, cols = np.nonzero(local.any(axis=1))[0], np.nonzero(local.any(axis=0))[0]
            box = np.array([r0 + rows[0], c0 + cols[0], r0 + rows[-1] + 1, c0 + cols[-1] + 1])
            window = (slice(r0, r0 + local.shape[0]), slice(c0, c0 + local.shape[1]))
            if blocked[window][local].any():
                continue
            if boxes and _box_iou(box, np.array(boxes)).max() >= max_iou:
                continue
            mask = np.zeros((height, width), dtype=bool)
            mask[window] = local
            blocked |= _dilate(mask)
            image[window][local] = colour
            boxes.append(box)
            labels.append(label)
            masks.append(mask)
            break
    image += 6.0 * rng.standard_normal(size=image.shape, dtype=np.float32)
    return {
        "image": np.clip(np.round(image), 0, 255).astype(np.uint8),
        "gt_boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
        "gt_classes": np.array(labels, dtype=np.int32),
        "masks": np.array(masks, dtype=bool).reshape(-1, height, width),
    }


def render_options(data_config) -> dict:
    """Keyword arguments of ``render_example`` read from ``data_config.synthetic``."""
    cfg = data_config.synthetic
    size = cfg.image_size
    image_size = (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(s) for s in size)
    return {
        "seed": int(cfg.get("seed", 0)),
        "image_size": image_size,
        "max_objects": int(cfg.max_objects),
        "min_object_size": float(cfg.get("min_object_size", 16.0)),
        "max_object_size": float(cfg.get("max_object_size", 90.0)),
        "empty_fraction": float(cfg.get("empty_fraction", 0.1)),
        "max_iou": float(cfg.get("max_iou", 0.3)),
    }


def class_names(data_config) -> tuple[str, ...]:
    """CLASS_NAMES, whatever the config (the synthetic classes are fixed)."""
    del data_config
    return CLASS_NAMES


def records(data_config, split: str) -> list[ImageRecord]:
    """Annotation records of every image of ``split`` (draws each image once to place its boxes)."""
    options = render_options(data_config)
    render_example(0, split=split, **options)  # validates split and sizes
    cfg = data_config.synthetic
    found = []
    for index in range(int(cfg.num_train if split == "train" else cfg.num_eval)):
        example = render_example(index, split=split, **options)
        found.append(
            ImageRecord(
                image_id=f"{split}/{index}",
                image_size=options["image_size"],
                gt_boxes=example["gt_boxes"],
                gt_classes=example["gt_classes"],
                gt_difficult=np.zeros(len(example["gt_classes"]), bool),
            )
        )
    return found


def _draw(index, *, split, options):
    """(image uint8 [H, W, 3], boxes float32 [N, 4], labels int32 [N]) tensors of one example."""

    def generate(i):
        example = render_example(int(i), split=split, **options)
        return example["image"], example["gt_boxes"], example["gt_classes"]

    image, boxes, labels = tf.numpy_function(
        generate, [index], (tf.uint8, tf.float32, tf.int32), stateful=False
    )
    image.set_shape([*options["image_size"], 3])
    boxes.set_shape([None, 4])
    labels.set_shape([None])
    return image, boxes, labels


def _examples(data_config, split):
    """(number of images, render options, tf function: int64 index -> raw example)."""
    options = render_options(data_config)
    render_example(0, split=split, **options)  # validates split and sizes before tracing
    cfg = data_config.synthetic
    num_images = int(cfg.num_train if split == "train" else cfg.num_eval)
    height, width = options["image_size"]
    # Splits up to _MAX_CACHE_BYTES keep their drawn images (each is drawn once per process).
    cache = None
    if num_images * height * width * 3 <= _MAX_CACHE_BYTES:
        cache = ExampleCache(
            num_images, image_size=(height, width), max_objects=options["max_objects"]
        )

    def to_example(index):
        draw = lambda: _draw(index, split=split, options=options)  # noqa: E731
        image, boxes, labels = draw() if cache is None else cache.get(index, draw)
        image.set_shape([height, width, 3])
        return {
            "image": image,
            "image_id": tf.strings.join([split, tf.strings.as_string(index)], separator="/"),
            "gt_boxes": boxes,
            "gt_classes": labels,
            "gt_difficult": tf.zeros_like(labels, dtype=tf.bool),
        }

    return num_images, options, to_example


def source(data_config, *, split, training, seed, process_index, process_count):
    """tf.data source of the synthetic dataset; this process reads indices process_index::count.

    ``split`` is "train" (``data.synthetic.num_train`` images) or "test" (``num_eval``); their
    images come from different random streams. ``training`` and ``seed`` do not change the
    examples (shuffling is the pipeline's job). Returns (dataset of raw examples, CLASS_NAMES).
    """
    del training, seed
    num_images, _, to_example = _examples(data_config, split)
    indices = tf.data.Dataset.range(process_index, num_images, process_count)
    return indices.map(to_example, num_parallel_calls=tf.data.AUTOTUNE), CLASS_NAMES


def random_access(data_config, *, split, training) -> RandomAccessSource:
    """The synthetic split example by example; the index costs no drawing (``has_objects``)."""
    del training
    num_images, options, to_example = _examples(data_config, split)
    sizes = np.tile(np.asarray(options["image_size"], np.int32), (num_images, 1))
    has = np.array([has_objects(i, split=split, **options) for i in range(num_images)], bool)
    return RandomAccessSource(
        ExampleIndex(sizes, has, has), CLASS_NAMES, lambda i: (to_example(i), tf.constant(True))
    )
