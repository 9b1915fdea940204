"""Batched jitted inference over a dataset, boxes back in original-image pixels.

Shape shorthand: B batch, D detections per image.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from frcnn_jax.models import conv
from frcnn_jax.models.faster_rcnn import FasterRCNN


def make_predict_fn(model: FasterRCNN):
    """Jitted ``(variables, images uint8 [B, Hb, Wb, 3], image_sizes [B, 2]) -> detections``.

    One program is compiled per padded bucket shape and reused afterwards.
    """

    @functools.partial(jax.jit, compiler_options=conv.compiler_options(jax.default_backend()))
    def predict(variables, images, image_sizes):
        return model.apply(variables, images, image_sizes, method=model.detect)

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


def predict_dataset(predict_fn, variables, batches: Iterable[dict]):
    """Runs inference over host batches; yields one dict per real (unpadded) image.

    Each dict: ``image_id``, ``boxes`` float32 [n, 4] original pixels, ``labels``
    int32 [n], ``scores`` float32 [n], and the image's gt (``gt_boxes`` in
    original pixels, ``gt_labels``, ``gt_difficult``).
    """
    for batch in batches:
        out = jax.device_get(
            predict_fn(variables, jnp.asarray(batch["images"]), jnp.asarray(batch["image_sizes"]))
        )
        boxes = to_original_pixels(out["boxes"], batch["scales"], batch["orig_sizes"])
        gt_boxes = to_original_pixels(batch["gt_boxes"], batch["scales"], batch["orig_sizes"])
        for i in np.flatnonzero(batch["example_mask"]):
            keep = out["valid"][i]
            gt = batch["gt_valid"][i]
            image_id = batch["image_ids"][i]
            yield {
                "image_id": image_id.decode() if isinstance(image_id, bytes) else str(image_id),
                "boxes": boxes[i][keep].astype(np.float32),
                "labels": out["classes"][i][keep].astype(np.int32),
                "scores": out["scores"][i][keep].astype(np.float32),
                "gt_boxes": gt_boxes[i][gt].astype(np.float32),
                "gt_labels": batch["gt_labels"][i][gt].astype(np.int32),
                "gt_difficult": batch["gt_difficult"][i][gt].astype(bool),
            }
