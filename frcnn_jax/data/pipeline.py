"""tf.data preprocessing, bucketing and batching of detection examples.

Shape shorthand: B batch (per process), G max gt boxes (``max_boxes``), N boxes of one raw
example, H, W original image size, h, w resized size, Hb, Wb bucket (padded) size.

Rules (issue 4), all deterministic given the seed:
- Resize: scale = min(min_size / min(H, W), max_size / max(H, W)) as in the seed's
  ``preprocess``; h = floor(H * scale + 0.5) (round half up), same for w; boxes are scaled by
  the exact per-axis factors (sy, sx) = (h / H, w / W) so they stay tight on the resized pixels.
- Boxes are clipped to the original image first; a box with zero height or width after
  clipping (or a NaN coordinate) is unusable and dropped entirely (neither gt_valid nor
  gt_mask). The first G remaining boxes in source order are kept, the rest truncated.
- gt_mask = gt_valid and not (gt_difficult and exclude_difficult). "gt_dropped" int32 counts
  the usable boxes truncated by max_boxes (evaluation warns when it is not 0).
- Training flip: image mirrored, xmin' = w - xmax, xmax' = w - xmin (resized coordinates).
- Padding: zeros at bottom/right to the smallest-area bucket that holds (h, w); the buckets are
  multiples of 32, all images of a batch share one. Evaluation keeps every image exactly once;
  the last batch of each bucket is filled with padding examples (example_mask False, zero
  image and gt, image_sizes = orig_sizes = (Hb, Wb), scales = (1, 1), image_ids b"").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

# tf must never take the accelerator from JAX. Raises once TF's devices are initialised, in
# which case someone already decided (and a CPU-only TF has no GPU anyway).
try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:
    pass

_BUCKET_MULTIPLE = 32


def _ceil32(size: int) -> int:
    return _BUCKET_MULTIPLE * math.ceil(size / _BUCKET_MULTIPLE)


def bucket_shapes(
    *, min_size: int, max_size: int, buckets: Sequence[Sequence[int]] | None = None
) -> tuple[tuple[int, int], ...]:
    """Padded (Hb, Wb) shapes, sorted by area: ``buckets`` if given, else derived.

    Derived: landscape (ceil32(min_size), ceil32(max_size)) and portrait (the transpose), one
    square bucket when they coincide. Given buckets must be multiples of 32 and hold every
    resized image, i.e. both (min_size, max_size) and (max_size, min_size).
    """
    if not 0 < min_size <= max_size:
        raise ValueError(f"need 0 < data.min_size ({min_size}) <= data.max_size ({max_size})")
    if buckets is None:
        buckets = [(_ceil32(min_size), _ceil32(max_size)), (_ceil32(max_size), _ceil32(min_size))]
    shapes = sorted({(int(h), int(w)) for h, w in buckets}, key=lambda s: (s[0] * s[1], s))
    if any(h % _BUCKET_MULTIPLE or w % _BUCKET_MULTIPLE or min(h, w) <= 0 for h, w in shapes):
        raise ValueError(f"data.buckets {shapes}: dimensions must be positive multiples of 32")
    for need in ((min_size, max_size), (max_size, min_size)):
        if not any(h >= need[0] and w >= need[1] for h, w in shapes):
            raise ValueError(f"data.buckets {shapes}: no bucket holds a resized image of {need}")
    return tuple(shapes)


def resized_size(height, width, *, min_size: int, max_size: int):
    """int32 (h, w) of an (H, W) image after the min/max-size rescale (tf scalars)."""
    height, width = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    scale = tf.minimum(min_size / tf.minimum(height, width), max_size / tf.maximum(height, width))
    new_h = tf.maximum(tf.floor(height * scale + 0.5), 1.0)
    new_w = tf.maximum(tf.floor(width * scale + 0.5), 1.0)
    return tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)


def usable_boxes(example) -> tuple[tf.Tensor, tf.Tensor]:
    """(boxes float32 [N, 4] clipped to the original image, usable bool [N])."""
    shape = tf.shape(example["image"])
    limits = tf.cast(tf.stack([shape[0], shape[1], shape[0], shape[1]]), tf.float32)
    boxes = tf.clip_by_value(tf.reshape(example["gt_boxes"], [-1, 4]), 0.0, limits)
    usable = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes, usable


def has_training_boxes(example, *, exclude_difficult: bool) -> tf.Tensor:
    """bool []: whether any box of a raw example would be in gt_mask."""
    _, usable = usable_boxes(example)
    if exclude_difficult:
        usable &= ~tf.cast(example["gt_difficult"], tf.bool)
    return tf.reduce_any(usable)


def _pad_rows(tensor, max_rows):
    """Truncates / zero-pads axis 0 of ``tensor`` to max_rows."""
    tensor = tensor[:max_rows]
    padding = [[0, max_rows - tf.shape(tensor)[0]]] + [[0, 0]] * (len(tensor.shape) - 1)
    return tf.pad(tensor, padding)


def _resize(image, new_h, new_w):
    """uint8 [H, W, 3] -> uint8 [new_h, new_w, 3], bilinear.

    Antialiasing only when shrinking: when enlarging (VOC's 500x375 -> 800x600) it gives the
    same pixels as plain bilinear at about 7x the cost. Unchanged sizes are not resampled.
    """
    shape = tf.shape(image)

    def resample(antialias):
        resized = tf.image.resize(image, [new_h, new_w], antialias=antialias)
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    same = (new_h == shape[0]) & (new_w == shape[1])
    shrink = (new_h < shape[0]) | (new_w < shape[1])
    return tf.case(
        [(same, lambda: image), (shrink, lambda: resample(True))], default=lambda: resample(False)
    )


def preprocess(
    example,
    *,
    flip,
    min_size: int,
    max_size: int,
    max_boxes: int,
    buckets: Sequence[tuple[int, int]],
    exclude_difficult: bool,
    bucket=None,
):
    """One raw example -> one unbatched element of the batch contract (see module docstring).

    Args:
      example: raw source dict ("image" uint8 [H, W, 3], "image_id" string, "gt_boxes" float32
        [N, 4] (ymin, xmin, ymax, xmax) original pixels, "gt_classes" int32 [N],
        "gt_difficult" bool [N]).
      flip: bool scalar, mirror this example horizontally.
      buckets: sorted (Hb, Wb) shapes from ``bucket_shapes``.
      bucket: int32 [2] (Hb, Wb) to pad to, chosen by the caller (e.g. a sampler, from the
        index); None: the smallest-area of ``buckets`` that holds the resized image.

    Returns:
      dict "images" uint8 [Hb, Wb, 3], "image_sizes" int32 [2], "orig_sizes" int32 [2],
      "scales" float32 [2], "gt_boxes" float32 [G, 4] resized pixels, "gt_classes" int32 [G],
      "gt_mask", "gt_difficult", "gt_valid" bool [G], "example_mask" bool [], "image_ids".
    """
    image = example["image"]
    shape = tf.shape(image)
    # Named here rather than as "input image must be of non-zero size" from inside resize.
    nonempty = tf.debugging.Assert(tf.size(image) > 0, ["empty image", example["image_id"]])
    with tf.control_dependencies([nonempty]):
        image = tf.identity(image)
    new_h, new_w = resized_size(shape[0], shape[1], min_size=min_size, max_size=max_size)
    image = _resize(image, new_h, new_w)
    image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
    scales = tf.cast(tf.stack([new_h, new_w]), tf.float32) / tf.cast(shape[:2], tf.float32)

    boxes, usable = usable_boxes(example)
    labels = tf.boolean_mask(tf.cast(example["gt_classes"], tf.int32), usable)
    difficult = tf.boolean_mask(tf.cast(example["gt_difficult"], tf.bool), usable)
    boxes = tf.boolean_mask(boxes, usable) * tf.tile(scales, [2])
    size = tf.cast(tf.stack([new_h, new_w, new_h, new_w]), tf.float32)
    boxes = tf.clip_by_value(boxes, 0.0, size)  # h * (H' / H) may exceed h by an ulp
    width = size[1]
    boxes = tf.cond(
        flip,
        lambda: tf.stack([boxes[:, 0], width - boxes[:, 3], boxes[:, 2], width - boxes[:, 1]], 1),
        lambda: boxes,
    )
    valid = _pad_rows(tf.ones_like(labels, dtype=tf.bool), max_boxes)
    difficult = _pad_rows(difficult, max_boxes)
    mask = valid & ~difficult if exclude_difficult else valid

    if bucket is None:
        heights = tf.constant([b[0] for b in buckets], tf.int32)
        widths = tf.constant([b[1] for b in buckets], tf.int32)
        fits = tf.argmax((heights >= new_h) & (widths >= new_w), output_type=tf.int32)
        bucket = tf.stack([heights[fits], widths[fits]])
    images = tf.pad(image, [[0, bucket[0] - new_h], [0, bucket[1] - new_w], [0, 0]])
    return {
        "images": images,
        "image_sizes": tf.stack([new_h, new_w]),
        "orig_sizes": shape[:2],
        "scales": scales,
        "gt_boxes": tf.reshape(_pad_rows(boxes, max_boxes), [max_boxes, 4]),
        "gt_classes": tf.reshape(_pad_rows(labels, max_boxes), [max_boxes]),
        "gt_mask": tf.reshape(mask, [max_boxes]),
        "gt_difficult": tf.reshape(difficult, [max_boxes]),
        "gt_valid": tf.reshape(valid, [max_boxes]),
        "example_mask": tf.constant(True),
        # Usable boxes beyond max_boxes: evaluation must not silently score fewer gt.
        "gt_dropped": tf.maximum(tf.size(labels) - max_boxes, 0),
        "image_ids": example["image_id"],
    }


def preprocess_image(image, *, min_size: int, max_size: int, buckets: Sequence[tuple[int, int]]):
    """``preprocess`` of an image alone (no boxes, no flip), as evaluation and serving see it.

    Returns (images uint8 [Hb, Wb, 3], image_sizes int32 [2], scales float32 [2]) for the
    smallest-area bucket that holds the resized image. The Detector and the export's
    ``prepare_image`` both call this, so a served image goes through evaluation's resize.
    """
    example = {
        "image": image,
        "image_id": tf.constant(""),
        "gt_boxes": tf.zeros([0, 4], tf.float32),
        "gt_classes": tf.zeros([0], tf.int32),
        "gt_difficult": tf.zeros([0], tf.bool),
    }
    out = preprocess(
        example,
        flip=tf.constant(False),
        min_size=min_size,
        max_size=max_size,
        max_boxes=1,
        buckets=buckets,
        exclude_difficult=False,
    )
    return out["images"], out["image_sizes"], out["scales"]


def _fill_batch(batch, batch_size):
    """Pads a partial batch on axis 0 to batch_size with padding examples (module docstring)."""
    missing = batch_size - tf.shape(batch["images"])[0]
    bucket = tf.shape(batch["images"])[1:3]
    fill = {"image_sizes": bucket, "orig_sizes": bucket, "scales": tf.ones([2], tf.float32)}
    out = {}
    for key, value in batch.items():
        if key in fill:
            pad = tf.tile(fill[key][None], [missing, 1])
        else:
            pad = tf.zeros(tf.concat([[missing], tf.shape(value)[1:]], 0), value.dtype)
        out[key] = tf.concat([value, pad], 0)
    return out


def batch_examples(
    raw: tf.data.Dataset,
    *,
    training: bool,
    batch_size: int,
    seed: int,
    min_size: int,
    max_size: int,
    max_boxes: int,
    buckets: Sequence[tuple[int, int]],
    flip: bool,
    exclude_difficult: bool,
    skip_empty: bool,
    shuffle_buffer: int,
    start_step: int = 0,
) -> tf.data.Dataset:
    """Raw examples -> batches of the data contract (dicts of tf tensors, first axis B).

    Training: (skip images without a training box), shuffle, repeat forever, random flip,
    batches of one bucket, incomplete windows dropped. Evaluation: one pass, no flip, every
    image exactly once, the last batch of each bucket filled with padding examples.
    ``start_step`` skips that many batches (replayed on the host: the stream stays identical).
    """
    ds = raw
    if training:
        if skip_empty:
            ds = ds.filter(lambda ex: has_training_boxes(ex, exclude_difficult=exclude_difficult))
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()

    def process(index, example):
        # Stateless per-example coin: the same flips for the same (seed, position in stream),
        # whatever order the parallel map finishes in.
        coin = tf.random.stateless_uniform([], seed=tf.stack([tf.cast(seed, tf.int64), index]))
        return preprocess(
            example,
            flip=tf.logical_and(flip and training, coin < 0.5),
            min_size=min_size,
            max_size=max_size,
            max_boxes=max_boxes,
            buckets=buckets,
            exclude_difficult=exclude_difficult,
        )

    ds = ds.enumerate().map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def bucket_key(element):
        images_shape = tf.cast(tf.shape(element["images"]), tf.int64)
        return images_shape[0] * 65536 + images_shape[1]

    ds = ds.group_by_window(
        key_func=bucket_key,
        reduce_func=lambda _, window: window.batch(batch_size, drop_remainder=training),
        window_size=batch_size,
    )
    if not training:
        ds = ds.map(lambda batch: _fill_batch(batch, batch_size))
    options = tf.data.Options()
    options.deterministic = True
    if start_step:
        ds = ds.skip(start_step)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)
