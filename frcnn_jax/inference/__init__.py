"""Inference: the ``Detector`` (images in, boxes out), the jitted predict function, the predict
command and pictures of detections. Imports no training code: a checkpoint's parameters are
restored without building an optimizer (``frcnn_jax.workdir``).

Start reading at ``detector.Detector``.
"""


def __getattr__(name):
    # Lazy: importing the package must not pull in TensorFlow (the Detector's preprocessing).
    if name in ("Detector", "Detections"):
        from frcnn_jax.inference import detector  # noqa: PLC0415

        return getattr(detector, name)
    raise AttributeError(f"module 'frcnn_jax.inference' has no attribute {name!r}")
