"""ONNX export through jax2onnx, with gathers and scatters in convertible form.

Shape shorthand: B batch (fixed: see below), H, W the exported size, D detections per image.

``DIR/model.onnx`` takes ``images`` uint8 ``[B, H, W, 3]`` and ``scales`` float32 ``[B, 2]``
and returns ``boxes``, ``classes``, ``scores``, ``valid`` (``inference``'s interface); it runs
with onnxruntime alone (README, "Deploy"). The whole detector converts, NMS loop included
(ONNX ``Loop``), in two steps:

- the program is traced to a jaxpr first and jax2onnx is handed that jaxpr's evaluation, so
  jax2onnx's replacements of ``jax.numpy`` functions never see the model code (its
  ``jnp.shape`` returns an array, which breaks ``nms.batched_nms``'s shape check);
- convolutions are traced as XLA's own (``conv.xla_convolutions``), so the graph has ``Conv``
  nodes where the CPU's jitted program runs 3x3 convolutions by Winograd's algorithm;
- ``rewrite.ONNX_RULES`` re-express, with bit-identical results, what jax2onnx 0.17.1 or
  onnxruntime reject: the vmapped gathers and scatters (batching dimensions: "Unhandled
  internal op in Gather ... 'mode': 'batched'"), boolean selects (no boolean ``Where`` in
  onnxruntime) and NHWC max pools (a 4-d ``MaxPool``: "Unsupported pooling size").

Checked against the jitted function: the small backbone with RoIAlign and RoIPool, VGG16 and
ResNet-50-FPN (random weights, 128 x 128 / 128 x 192): the same detections, boxes within
6e-5 px, scores within 1e-6 (ResNet-50-FPN; exact or within 3e-8 for the others). That was
before the CPU's jitted programs ran wide 3x3 layers by Winograd (models/conv.py), which
differs from the ONNX graph's direct ``Conv`` by float32 rounding.

Batch size: fixed. With a symbolic batch, jax2onnx 0.17.1 converts but the model fails in
onnxruntime ("Where node ... Attempting to broadcast an axis by a dimension other than 1. 2
by 32"), so ONNX models take exactly the batch they were exported with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from frcnn_jax.export import inference, rewrite
from frcnn_jax.export.inference import INPUT_NAMES, OUTPUT_NAMES
from frcnn_jax.models import conv

DEFAULT_OPSET = 21


def check_installed() -> None:
    """Raises ImportError, saying what to install, unless onnx and jax2onnx import."""
    try:
        import jax2onnx  # noqa: F401
        import onnx  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"ONNX export needs onnx and jax2onnx ({e}): pip install 'frcnn-jax[export]' "
            "(or -e '.[export]' in a checkout)"
        ) from e


def convertible_jaxpr(fn: Callable, *specs: jax.ShapeDtypeStruct):
    """The jaxpr of ``(images, scales) -> (boxes, classes, scores, valid)`` with ``ONNX_RULES``.

    Its inputs are ``specs``, all of them, whether the program reads them or not.
    """

    def ordered(*inputs):
        out = fn(*inputs)
        return tuple(out[name] for name in OUTPUT_NAMES)

    # Plain convolutions, not the CPU's Winograd form (models/conv.py): onnxruntime has its
    # own Conv kernels, and a Conv node is what other ONNX tools expect to find.
    with conv.xla_convolutions():
        return jax.make_jaxpr(rewrite.rewrite(ordered, *specs, rules=rewrite.ONNX_RULES))(*specs)


def save(
    fn: Callable,
    path: str,
    *,
    image_size: Sequence[int],
    batch_size: int,
    opset: int = DEFAULT_OPSET,
) -> None:
    """Converts ``fn`` to an ONNX file at ``path``.

    Args:
      fn: ``(images uint8 [B, H, W, 3], scales float32 [B, 2]) -> dict``
        (``inference.make_inference_fn``).

    Raises:
      ValueError: ``batch_size`` < 1.
      RuntimeError: the converted graph's inputs are not ``inference.INPUT_NAMES``.
    """
    # The [export] extra: imported here so that the other formats do without it.
    import onnx as onnx_lib
    from jax2onnx import to_onnx

    if batch_size < 1:
        raise ValueError(f"ONNX export needs a fixed batch_size >= 1, got {batch_size}")
    specs = inference.input_specs(image_size, int(batch_size))
    closed = convertible_jaxpr(fn, *specs)

    def evaluate(images, scales):
        return tuple(jax.core.eval_jaxpr(closed.jaxpr, closed.consts, images, scales))

    model = to_onnx(
        evaluate,
        list(specs),
        model_name="frcnn_jax_detector",
        opset=opset,
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
    )
    # jax2onnx makes a graph input of every argument of ``evaluate``, read or not (scales is
    # not read with model.rpn.min_size_units="resized"), so every model has one interface and
    # onnxruntime accepts both names. Checked here, as a later jax2onnx could prune them.
    inputs = [i.name for i in model.graph.input]
    if inputs != list(INPUT_NAMES):
        raise RuntimeError(f"the ONNX graph's inputs are {inputs}, expected {list(INPUT_NAMES)}")
    drop_unused_initializers(model.graph)
    onnx_lib.save_model(model, path)


def drop_unused_initializers(graph) -> set[str]:
    """Removes, in ``graph`` and its loop/branch bodies, initializers no node reads.

    jax2onnx 0.17 leaves hundreds of them in loop bodies; onnxruntime warns about each one
    ("Removing initializer ...") every time a session starts. Returns the names read in
    ``graph`` (a body may read names of the graphs around it).
    """
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attribute in node.attribute:
            bodies = [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
            for body in bodies:
                used |= drop_unused_initializers(body)
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return used
