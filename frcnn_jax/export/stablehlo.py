"""StableHLO export (``jax.export``): the inference function with its weights, one file.

Shape shorthand: B batch (symbolic unless a batch size is fixed), H, W the exported size,
D detections per image.

``DIR/model.stablehlo`` is ``jax.export.Exported.serialize()``: the StableHLO program
(weights as constants) of ``(images, scales) -> dict`` (``inference``'s interface) lowered for
CPU and CUDA, with the input/output tree. Loading needs ``jax`` alone, no frcnn_jax (README,
"Deploy").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from jax import export

from frcnn_jax.export import rewrite
from frcnn_jax.export.inference import input_specs

# Lowered for both, so one artifact serves on a CPU or an NVIDIA GPU; the consumer picks its
# platform when it compiles.
DEFAULT_PLATFORMS = ("cpu", "cuda")


def export_fn(
    fn: Callable,
    *specs: jax.ShapeDtypeStruct,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    rules: dict | None = None,
) -> export.Exported:
    """``jax.export`` of ``fn`` for inputs ``specs`` on ``platforms``.

    Args:
      fn: e.g. ``inference.make_inference_fn(model, variables)`` with ``*input_specs(...)``.
      rules: optional ``rewrite`` rules applied to ``fn`` first.
    """
    if rules:
        fn = rewrite.rewrite(fn, *specs, rules=rules)
    return export.export(jax.jit(fn), platforms=tuple(platforms))(*specs)


def save(fn: Callable, path: str, *, image_size: Sequence[int], batch_size: int | None) -> None:
    """Writes ``export_fn(fn, ...).serialize()`` to ``path`` (``DIR/model.stablehlo``).

    Args:
      fn: ``(images uint8 [B, H, W, 3], scales float32 [B, 2]) -> dict``
        (``inference.make_inference_fn``).
    """
    exported = export_fn(fn, *input_specs(image_size, batch_size))
    with open(path, "wb") as f:
        f.write(exported.serialize())


def load(path: str) -> export.Exported:
    """The ``Exported`` written by ``save``; call it with ``.call(images, scales)``."""
    with open(path, "rb") as f:
        return export.deserialize(bytearray(f.read()))
