"""The function every export format serialises: uint8 images in, padded detections out.

Shape shorthand: B batch, H, W the exported (padded) image size, D detections per image (the
model's ``max_detections``).

The interface (kept by all formats; users code against these names):
  inputs ``images`` uint8 ``[B, H, W, 3]`` RGB, each image already resized (aspect kept) and
    zero-padded at the bottom and right to (H, W), and ``scales`` float32 ``[B, 2]``, each
    image's resize factors (sy, sx) with resized = original * scale (both from
    ``frcnn_jax.export.prepare``; ones for an image that was not resized);
  outputs ``boxes`` float32 ``[B, D, 4]`` (ymin, xmin, ymax, xmax) pixels of the input,
    ``classes`` int32 ``[B, D]`` 0-based (index into class_names.json), ``scores`` float32
    ``[B, D]`` best first, ``valid`` bool ``[B, D]`` (a prefix; padding rows are zeros).

Padding: the model needs each image's size inside its padding (normalisation zeroes the
padding; proposals and boxes are clipped to the image). No input carries it: it is read off
the pixels, an image's height being 1 + the index of its last row holding a non-zero value,
its width likewise over columns. That is the true size of every image whose own last row and
last column are not entirely black (0, 0, 0), and then the result is the Detector's; an image
with an all-black bottom or right edge is treated as if that edge were padding (boxes are
clipped above / left of it).

Scales: every model takes them, whether or not its config reads them. With
``model.rpn.min_size_units="original"`` (the seed's rule, the default) the minimum proposal
side is ``model.rpn.min_size`` pixels of the original image, min_size * scale pixels of the
input, as in the Detector; other factors change the proposals, hence the detections, of a
resized image (ones keep small proposals of an enlarged image that the Detector drops).
"resized" units do not read them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from jax import export

from frcnn_jax.data import pipeline
from frcnn_jax.models.faster_rcnn import FasterRCNN

INPUT_NAME = "images"
SCALES_NAME = "scales"
INPUT_NAMES = (INPUT_NAME, SCALES_NAME)  # the order of the exported function's arguments
OUTPUT_NAMES = ("boxes", "classes", "scores", "valid")
OUTPUT_DTYPES = {"boxes": jnp.float32, "classes": jnp.int32, "scores": jnp.float32, "valid": bool}
BATCH_DIMENSION = "batch"  # the symbolic batch dimension of an export with any batch size


def image_spec(image_size: Sequence[int], batch_size: int | None) -> jax.ShapeDtypeStruct:
    """uint8 ``[B, H, W, 3]``; B symbolic (named ``BATCH_DIMENSION``) when batch_size is None."""
    height, width = (int(s) for s in image_size)
    if batch_size is None:
        (batch,) = export.symbolic_shape(BATCH_DIMENSION)
    elif batch_size >= 1:
        batch = int(batch_size)
    else:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    return jax.ShapeDtypeStruct((batch, height, width, 3), jnp.uint8)


def input_specs(
    image_size: Sequence[int], batch_size: int | None
) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """(images uint8 ``[B, H, W, 3]``, scales float32 ``[B, 2]``): ``image_spec`` and its scales.

    Both share one B: ``jax.export`` rejects symbolic dimensions from two ``symbolic_shape``
    calls ("Invalid mixing of symbolic scopes").
    """
    images = image_spec(image_size, batch_size)
    return images, jax.ShapeDtypeStruct((images.shape[0], 2), jnp.float32)


def image_sizes_from_padding(images: jnp.ndarray) -> jnp.ndarray:
    """int32 ``[B, 2]`` (h, w): the extent of each image's non-zero pixels, at least 1 x 1.

    Args:
      images: uint8 ``[B, H, W, 3]``, zero-padded at the bottom and right.
    """
    nonzero = jnp.any(images != 0, axis=-1)  # [B, H, W]
    rows = jnp.any(nonzero, axis=2)  # [B, H]
    cols = jnp.any(nonzero, axis=1)  # [B, W]

    def extent(mask):  # 1 + index of the last True, 0 when none
        positions = jnp.arange(1, mask.shape[1] + 1, dtype=jnp.int32)
        return jnp.max(jnp.where(mask, positions, 0), axis=1)

    sizes = jnp.stack([extent(rows), extent(cols)], axis=1)
    return jnp.maximum(sizes, 1)


def make_apply_fn(model: FasterRCNN):
    """``(variables, images uint8 [B, H, W, 3], scales float32 [B, 2]) -> {boxes, classes,
    scores, valid}``.

    Not jitted: each exporter traces it. Normalisation, proposals, RoI head and per-class NMS
    all happen inside; each image's size comes from ``image_sizes_from_padding``, its resize
    factors (sy, sx) from ``scales`` (``FasterRCNN.detect``'s, for the minimum proposal size).
    """

    def apply(variables, images, scales):
        images = jnp.asarray(images, jnp.uint8)
        scales = jnp.asarray(scales, jnp.float32)
        sizes = image_sizes_from_padding(images)
        out = model.apply(variables, images, sizes, scales, method=model.detect)
        return {name: out[name].astype(OUTPUT_DTYPES[name]) for name in OUTPUT_NAMES}

    return apply


def make_inference_fn(model: FasterRCNN, variables: dict):
    """``(images, scales) -> {boxes, classes, scores, valid}`` with ``variables`` bound
    (``make_apply_fn``).

    Traced by an exporter, the weights become constants of the program.
    """
    return functools.partial(make_apply_fn(model), variables)


def default_image_size(data_config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(H, W) that holds every resized image: the largest padded shape of the config.

    One bucket when it holds both orientations (128 x 128 for configs/synthetic.py), else the
    per-axis maximum of the buckets (1024 x 1024 for configs/voc.py's 608 x 1024 and 1024 x
    608). The Detector's boxes are reproduced exactly for images it pads to this same size.
    """
    buckets = pipeline.bucket_shapes(
        min_size=int(data_config.min_size),
        max_size=int(data_config.max_size),
        buckets=data_config.get("buckets") or None,
    )
    return max(h for h, _ in buckets), max(w for _, w in buckets)
