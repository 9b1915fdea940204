"""TensorFlow SavedModel export: the StableHLO program inside TF's ``XlaCallModule`` op.

Shape shorthand: B batch (``None`` in the signature unless fixed), H, W the exported size,
D detections per image.

``DIR/saved_model/`` has one ``serving_default`` signature (``inference``'s interface):
inputs ``images`` uint8 ``[B, H, W, 3]`` and ``scales`` float32 ``[B, 2]``, outputs ``boxes``
float32 ``[B, D, 4]``, ``classes`` int32 ``[B, D]``, ``scores`` float32 ``[B, D]``, ``valid``
bool ``[B, D]``; the weights are its variables. It loads with ``tf.saved_model.load`` in a
process without JAX (README, "Deploy") and serves with TF Serving (the op ships with
TensorFlow).

Why not ``jax2tf.convert``: it wraps a ``jax.export`` program in the same op, but serialises
it for the StableHLO version of the *installed jax* (1.15 for jax 0.10.2), which TensorFlow
2.21 cannot read ("failed to deserialize portable artifact using StableHLO_v1.13.7"). Here the
program is re-serialised for ``TF_STABLEHLO_VERSION`` (StableHLO artifacts stay readable by
every later version), and the op is built from the ``Exported``'s calling convention, as
jax2tf does. The program is the StableHLO export's with ``rewrite.TENSORFLOW_RULES`` (top-k
as a sort, so that TensorFlow can specialise it to each call's batch size).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import jax
import jax.extend.mlir
import numpy as np
import tensorflow as tf
from tensorflow.compiler.tf2xla.python import xla as tfxla

from frcnn_jax.export import inference, rewrite, stablehlo
from frcnn_jax.export.inference import INPUT_NAME, SCALES_NAME

# The StableHLO version the module is serialised for: old enough for TensorFlow >= 2.20
# (the first with XlaCallModule calling convention 10, which jax 0.10 emits), new enough to
# hold every op of the detector (1.0 lacks gather_v2 with batching dimensions).
TF_STABLEHLO_VERSION = "1.8.0"


def save(
    apply_fn: Callable,
    variables,
    directory: str,
    *,
    image_size: Sequence[int],
    batch_size: int | None,
) -> None:
    """Writes a SavedModel of ``apply_fn(variables, images, scales)`` to ``directory``.

    The weights are TF variables of the SavedModel (``variables/``, as TF Serving expects),
    passed to the program as arguments: the program itself stays small.

    Args:
      apply_fn: ``(variables, images uint8 [B, H, W, 3], scales float32 [B, 2]) -> dict``
        (``inference.make_apply_fn``).
      batch_size: None: any batch size (the signature's B is ``None``).
    """
    variable_specs = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), variables)
    exported = stablehlo.export_fn(
        apply_fn,
        variable_specs,
        *inference.input_specs(image_size, batch_size),
        rules=rewrite.TENSORFLOW_RULES,
    )
    module = jax.extend.mlir.serialize_portable_artifact(
        exported.mlir_module(), TF_STABLEHLO_VERSION
    )
    attributes = dict(
        version=exported.calling_convention_version,
        module=module,
        Tout=[tf.as_dtype(a.dtype) for a in exported.out_avals],
        Sout=[_tf_shape(a.shape) for a in exported.out_avals],
        platforms=[p.upper() for p in exported.platforms],
        disabled_checks=[str(c) for c in exported.disabled_safety_checks],
        use_shardy_partitioner=jax.config.jax_use_shardy_partitioner,
    )
    holder = tf.Module()
    holder.weights = [
        tf.Variable(np.asarray(leaf), trainable=False, name=_variable_name(path))
        for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]
    ]
    image_aval, scales_aval = exported.in_avals[-2:]

    @tf.function(
        input_signature=[
            tf.TensorSpec(_tf_shape(image_aval.shape), tf.uint8, name=INPUT_NAME),
            tf.TensorSpec(_tf_shape(scales_aval.shape), tf.float32, name=SCALES_NAME),
        ],
        autograph=False,
    )
    def serve(images, scales):
        # Arguments flatten as (variables..., images, scales); the program keeps those it needs
        # (module_kept_var_idx: a fixed-batch program that does not read scales drops them).
        arguments = [w.read_value() for w in holder.weights] + [images, scales]
        kept = [arguments[i] for i in exported.module_kept_var_idx]
        outputs = tfxla.call_module(kept, **attributes)
        return jax.tree_util.tree_unflatten(exported.out_tree, list(outputs))

    holder.serve = serve
    tf.saved_model.save(holder, directory, signatures={"serving_default": serve})


def _variable_name(path) -> str:
    """``['params']['head']['cls_score']['kernel']`` -> ``params/head/cls_score/kernel``."""
    parts = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    return re.sub(r"[^A-Za-z0-9_./-]", "_", "/".join(parts))


def _tf_shape(shape) -> list[int | None]:
    """A jax shape with symbolic dimensions as ``None`` (unknown) for TF."""
    return [d if isinstance(d, int) else None for d in shape]
