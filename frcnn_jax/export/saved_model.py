"""TensorFlow SavedModel export: the StableHLO program inside TF's ``XlaCallModule`` op.

Shape shorthand: B batch (``None`` in the signature unless fixed), H, W the exported size,
D detections per image.

``DIR/saved_model/`` has one ``serving_default`` signature: input ``images`` uint8
``[B, H, W, 3]``, outputs ``boxes`` float32 ``[B, D, 4]``, ``classes`` int32 ``[B, D]``,
``scores`` float32 ``[B, D]``, ``valid`` bool ``[B, D]``. It loads with
``tf.saved_model.load`` in a process without JAX (``LOAD_EXAMPLE``) and serves with TF
Serving (the op ships with TensorFlow).

Why not ``jax2tf.convert``: it wraps a ``jax.export`` program in the same op, but serialises
it for the StableHLO version of the *installed jax* (1.15 for jax 0.10.2), which TensorFlow
2.21 cannot read ("failed to deserialize portable artifact using StableHLO_v1.13.7"). Here the
program is re-serialised for ``TF_STABLEHLO_VERSION`` (StableHLO artifacts stay readable by
every later version), and the op is built from the ``Exported``'s calling convention, as
jax2tf does. The program is the StableHLO export's with ``rewrite.TENSORFLOW_RULES`` (top-k
as a sort, so that TensorFlow can specialise it to each call's batch size).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.extend.mlir
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla as tfxla

from frcnn_jax.export import rewrite, stablehlo
from frcnn_jax.export.inference import INPUT_NAME

# The StableHLO version the module is serialised for: old enough for TensorFlow >= 2.20
# (the first with XlaCallModule calling convention 10, which jax 0.10 emits), new enough to
# hold every op of the detector (1.0 lacks gather_v2 with batching dimensions).
TF_STABLEHLO_VERSION = "1.8.0"

LOAD_EXAMPLE = """\
import tensorflow as tf
detect = tf.saved_model.load("DIR/saved_model").signatures["serving_default"]
out = detect(images=tf.constant(images))  # uint8 [B, H, W, 3]
boxes, classes = out["boxes"].numpy(), out["classes"].numpy()  # also "scores", "valid"
"""


def save(
    fn: Callable, directory: str, *, image_size: Sequence[int], batch_size: int | None
) -> None:
    """Writes a SavedModel of ``fn`` (``images uint8 [B, H, W, 3] -> dict``) to ``directory``.

    ``batch_size`` None: any batch size (the signature's B is ``None``).
    """
    exported = stablehlo.export_fn(
        fn, image_size=image_size, batch_size=batch_size, rules=rewrite.TENSORFLOW_RULES
    )
    (image_aval,) = exported.in_avals
    module = jax.extend.mlir.serialize_portable_artifact(
        exported.mlir_module(), TF_STABLEHLO_VERSION
    )
    out_avals = exported.out_avals
    attributes = dict(
        version=exported.calling_convention_version,
        module=module,
        Tout=[tf.as_dtype(a.dtype) for a in out_avals],
        Sout=[_tf_shape(a.shape) for a in out_avals],
        platforms=[p.upper() for p in exported.platforms],
        disabled_checks=[str(c) for c in exported.disabled_safety_checks],
        use_shardy_partitioner=jax.config.jax_use_shardy_partitioner,
    )
    kept = exported.module_kept_var_idx

    @tf.function(
        input_signature=[tf.TensorSpec(_tf_shape(image_aval.shape), tf.uint8, name=INPUT_NAME)],
        autograph=False,
    )
    def serve(images):
        outputs = tfxla.call_module([images] if 0 in kept else [], **attributes)
        return jax.tree_util.tree_unflatten(exported.out_tree, list(outputs))

    module_holder = tf.Module()
    module_holder.serve = serve
    tf.saved_model.save(module_holder, directory, signatures={"serving_default": serve})


def _tf_shape(shape) -> list[int | None]:
    """A jax shape with symbolic dimensions as ``None`` (unknown) for TF."""
    return [d if isinstance(d, int) else None for d in shape]
