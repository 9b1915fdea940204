"""Deployment: a trained detector as StableHLO, a TensorFlow SavedModel and ONNX.

``python -m frcnn_jax.export --workdir=W --output=DIR`` (``__main__``). Every format runs the
same function (``inference.make_apply_fn``): uint8 images, already resized and padded to the
exported size, and their resize factors (``prepare``), in; padded boxes, classes, scores and a
valid mask out, NMS included. Modules: ``inference`` (the function and its interface),
``stablehlo``, ``saved_model``, ``onnx``, ``rewrite`` (primitives re-expressed for an
exporter, with ``gather_rows``), ``prepare`` (images in, boxes back to original pixels),
``artifacts`` (a workdir to a directory). Nothing is imported here: a client needing
``prepare`` does not load the model.
"""
