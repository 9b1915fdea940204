"""Flax modules of the detector: backbones, RPN, RoI heads, Faster R-CNN, and the builder.

Start with ``build.build_model`` (config -> FasterRCNN) and ``faster_rcnn.FasterRCNN``.
"""

from frcnn_jax.models.build import build_model, init_variables
from frcnn_jax.models.faster_rcnn import FasterRCNN

__all__ = ["FasterRCNN", "build_model", "init_variables"]
