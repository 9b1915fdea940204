"""Input normalisation on the device: uint8 RGB images in, the weights' statistics out.

Shape shorthand: B batch, Hb, Wb padded image size.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

Dtype = Any

# Per-channel statistics of the weights' training data, in the order of the
# channels the network expects. Caffe VGG16 (the seed's default) takes BGR
# 0..255 minus the mean; torchvision weights take RGB in [0, 1] standardised.
NORMALIZATIONS = {
    "caffe": {"bgr": True, "mean": (102.9801, 115.9465, 122.7717), "std": (1.0, 1.0, 1.0)},
    "torchvision": {
        "bgr": False,
        "mean": (0.485 * 255, 0.456 * 255, 0.406 * 255),
        "std": (0.229 * 255, 0.224 * 255, 0.225 * 255),
    },
}


def normalize_images(
    images: jnp.ndarray, image_sizes: jnp.ndarray, *, normalization: str, dtype: Dtype
) -> jnp.ndarray:
    """uint8 RGB ``[B, Hb, Wb, 3]`` -> normalised ``dtype``; padding stays exactly 0.

    Zero padding after normalisation (not before) is what the references do, so
    padded pixels look like the mean colour and do not leak edges into features.
    """
    norm = NORMALIZATIONS[normalization]
    x = images.astype(jnp.float32)
    if norm["bgr"]:
        x = x[..., ::-1]
    x = (x - jnp.asarray(norm["mean"])) / jnp.asarray(norm["std"])
    rows = jnp.arange(images.shape[1])[None, :, None] < image_sizes[:, 0, None, None]
    cols = jnp.arange(images.shape[2])[None, None, :] < image_sizes[:, 1, None, None]
    return jnp.where((rows & cols)[..., None], x, 0.0).astype(dtype)
