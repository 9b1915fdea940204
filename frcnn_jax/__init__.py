"""frcnn_jax: Faster R-CNN object detection in JAX/Flax.

Pure, jittable box functions (``boxes``, ``anchors``, ``nms``, ``targets``,
``proposals``, ``roi_ops``) beside Flax modules (``frcnn_jax.models``); ``training``,
``evaluation``, ``inference``, ``weights`` and the run directory (``workdir``) each in a
package of their own. Boxes are float32 ``(ymin, xmin, ymax, xmax)`` in absolute pixels
everywhere.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy: `import frcnn_jax.boxes` must not pull in TensorFlow through the Detector.
    if name == "Detector":
        from frcnn_jax.inference.detector import Detector

        return Detector
    raise AttributeError(f"module 'frcnn_jax' has no attribute {name!r}")
