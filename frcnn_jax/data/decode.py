"""Robust image reading for folder-based sources: every failure names the file.

Design: images are decoded by Pillow inside `tf.numpy_function` in a parallel `tf.data` map rather
than by `tf.io.decode_image`. A graph decode op that meets a corrupt or truncated file fails with
"Invalid JPEG data" and no path, deep inside the input pipeline; Pillow lets us name the file, skip
it with a logged warning, and convert every mode (grayscale L/LA, palette P, RGBA, CMYK, 16-bit
I;16) to RGB the same way. Pillow releases the GIL while decoding, so the map still runs in
parallel; on 2 CPU cores it decodes about 750 VOC-sized (500x375) JPEGs/s against about 1,300/s
for `tf.io.decode_image`, both far above what a Faster R-CNN train step consumes.

A cheap header read (`read_image_size`, no pixel decode) runs on the host for every image before
training, so missing, empty and unidentifiable files are found up front; only damage past the header
(a truncated JPEG) is found at decode time, where the example is skipped with a warning.

Images are returned as uint8 [H, W, 3] RGB; EXIF orientation is NOT applied (VOC annotations
refer to the stored pixel grid, and `tf.io.decode_image` would not apply it either).
"""

from __future__ import annotations

import threading

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from frcnn_jax.data.errors import DataError

# What Pillow raises for missing, unidentified (an OSError), truncated and decompression-bomb files.
_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageError(DataError):
    """An image file that cannot be read; the message names the file."""


def read_image_size(path: str) -> tuple[int, int]:
    """(height, width) from the image header only (no pixel decode).

    Raises `ImageError` naming `path` when the file is missing, empty, not an image Pillow can
    identify, or has a zero-size pixel grid.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
    except _PIL_ERRORS as error:
        raise ImageError(f"Cannot read image {path}: {error}") from error
    if height <= 0 or width <= 0:
        raise ImageError(f"Image {path} has zero size ({height}x{width}).")
    return height, width


def to_rgb(image: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] RGB pixels of a Pillow image of any mode."""
    if image.mode.startswith("I;16"):
        # 16-bit grayscale: keep the high byte; Pillow's convert("RGB") would clip at 255 instead.
        pixels = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        return np.repeat(pixels[..., None], 3, axis=-1)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow asks palette+transparency to go through RGBA.
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_rgb(path: str) -> np.ndarray:
    """uint8 [H, W, 3] RGB pixels of the image at `path` (full decode).

    Raises `ImageError` naming `path` for missing, corrupt, truncated or zero-size files.
    """
    try:
        with Image.open(path) as image:
            pixels = to_rgb(image)
    except _PIL_ERRORS as error:
        raise ImageError(f"Cannot decode image {path}: {error}") from error
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ImageError(f"Image {path} has zero size {pixels.shape[:2]}.")
    return pixels


class _SkipCounter:
    """Thread-safe count of images skipped at decode time (decode runs in parallel threads)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0

    def increment(self) -> int:
        with self._lock:
            self.count += 1
            return self.count


decode_skips = _SkipCounter()


def _load_or_skip(path: bytes) -> tuple[np.ndarray, np.bool_]:
    try:
        return load_rgb(path.decode("utf-8")), np.bool_(True)
    except ImageError as error:
        total = decode_skips.increment()
        logging.warning("Skipping example (%d image(s) skipped at decode so far): %s", total, error)
        return np.zeros((0, 0, 3), np.uint8), np.bool_(False)


def tf_load_rgb_or_skip(path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """tf.data helper: (image uint8 [H, W, 3], ok bool []) for a tf.string path.

    A file that cannot be decoded gives ok=False (filter on it) and a warning naming the file.
    """
    image, ok = tf.numpy_function(_load_or_skip, [path], (tf.uint8, tf.bool), stateful=False)
    image.set_shape([None, None, 3])
    ok.set_shape([])
    return image, ok
