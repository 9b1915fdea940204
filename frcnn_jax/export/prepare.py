"""Images of any size in, exported-size inputs out; boxes back to the original pixels.

Shape shorthand: B batch, H0, W0 an original image, h, w its resized size, H, W the exported
size, D detections.

The rules are the data pipeline's (``frcnn_jax.data.pipeline``, the Detector's too):
scale = min(min_size / min(H0, W0), max_size / max(H0, W0)); h = floor(H0 * scale + 0.5) and
w likewise; bilinear resampling (antialiased when shrinking, none when the size is unchanged);
zeros below and right of the image up to (H, W). ``min_size``/``max_size`` are the training
config's ``data.min_size``/``data.max_size``, recorded in ``DIR/export.json``. The per-axis
factors (sy, sx) = (h / H0, w / W0) are the exported model's ``scales`` input (its minimum
proposal size is in original pixels), and map boxes back, clipped to the original image.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from frcnn_jax.data import pipeline


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """One image ready for an exported model.

    image: uint8 ``[H, W, 3]``, the resized image zero-padded to the exported size.
    scales: float32 ``[2]`` (sy, sx), resized = original * scale: the image's row of the
      exported model's ``scales`` input.
    original_size: (H0, W0) of the image as given.
    """

    image: np.ndarray
    scales: np.ndarray
    original_size: tuple[int, int]


def prepare_image(
    image: np.ndarray, *, image_size: Sequence[int], min_size: int, max_size: int
) -> PreparedImage:
    """Resizes (aspect kept) and zero-pads a uint8 RGB ``[H0, W0, 3]`` image to ``image_size``.

    Raises:
      ValueError: the image is not uint8 ``[H0, W0, 3]``, or its resized size does not fit
        ``image_size`` (export with a larger ``--image_size``).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
        raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
    height, width = (int(s) for s in image_size)
    resized = pipeline.resized_size(
        image.shape[0], image.shape[1], min_size=int(min_size), max_size=int(max_size)
    )
    resized = tuple(int(s) for s in resized)
    if resized[0] > height or resized[1] > width:
        raise ValueError(
            f"an image of {image.shape[:2]} is resized to {resized} (min_size={min_size}, "
            f"max_size={max_size}), larger than the exported size {(height, width)}"
        )
    padded, _, scales = pipeline.preprocess_image(
        tf.convert_to_tensor(image),
        min_size=int(min_size),
        max_size=int(max_size),
        buckets=[(height, width)],
    )
    return PreparedImage(
        image=padded.numpy(),
        scales=scales.numpy(),
        original_size=(int(image.shape[0]), int(image.shape[1])),
    )


def prepare_images(images, **options) -> tuple[np.ndarray, np.ndarray, list[PreparedImage]]:
    """``prepare_image`` on each image.

    Returns:
      (images uint8 ``[B, H, W, 3]``, scales float32 ``[B, 2]``, the B ``PreparedImage``s): the
      exported model's two inputs, and what ``to_original_pixels`` needs per image.
    """
    prepared = [prepare_image(image, **options) for image in images]
    images = np.stack([p.image for p in prepared])
    scales = np.stack([p.scales for p in prepared]).astype(np.float32)
    return images, scales, prepared


def to_original_pixels(boxes: np.ndarray, prepared: PreparedImage) -> np.ndarray:
    """Boxes ``[..., 4]`` (ymin, xmin, ymax, xmax) of an exported model's input -> the original's.

    Divided by (sy, sx, sy, sx) and clipped to ``[0, H0] x [0, W0]``, as the Detector does.
    """
    factors = np.concatenate([prepared.scales, prepared.scales]).astype(np.float32)
    limits = np.array(prepared.original_size * 2, np.float32)
    return np.clip(np.asarray(boxes, np.float32) / factors, 0.0, limits)
