"""The jitted inference function of a model, and boxes back in original-image pixels.

Shape shorthand: B batch, Hb, Wb padded image size, D detections per image.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from frcnn_jax.models import conv
from frcnn_jax.models.faster_rcnn import FasterRCNN


def make_predict_fn(model: FasterRCNN):
    """Jitted ``(variables, images uint8 [B, Hb, Wb, 3], image_sizes [B, 2], scales [B, 2])
    -> detections`` (``FasterRCNN.detect``; scales: the batch's resize factors, None: 1).

    One program is compiled per padded bucket shape and reused afterwards.
    """

    @functools.partial(jax.jit, compiler_options=conv.compiler_options(jax.default_backend()))
    def predict(variables, images, image_sizes, scales=None):
        return model.apply(variables, images, image_sizes, scales, method=model.detect)

    return predict


def to_original_pixels(boxes: np.ndarray, scales: np.ndarray, orig_sizes: np.ndarray) -> np.ndarray:
    """Maps boxes ``[..., D, 4]`` of the resized image back to original pixels.

    Args:
      boxes: (ymin, xmin, ymax, xmax) in resized-image pixels, ``[B, D, 4]``.
      scales: ``[B, 2]`` (sy, sx) with resized = original * scale.
      orig_sizes: ``[B, 2]`` original (height, width), the clip limits.
    """
    factors = np.concatenate([scales, scales], axis=-1)[:, None, :]  # [B, 1, 4]
    limits = np.concatenate([orig_sizes, orig_sizes], axis=-1)[:, None, :].astype(np.float32)
    return np.clip(boxes / factors, 0.0, limits)
