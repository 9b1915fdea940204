"""frcnn_jax: Faster R-CNN object detection in JAX/Flax.

Pure, jittable box functions (``boxes``, ``anchors``, ``nms``, ``targets``,
``proposals``, ``roi_ops``) beside Flax modules (``frcnn_jax.models``) and the
training glue (``train_lib``). Boxes are float32 ``(ymin, xmin, ymax, xmax)``
in absolute pixels everywhere.
"""

__version__ = "0.1.0"
