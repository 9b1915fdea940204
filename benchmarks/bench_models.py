"""The benchmarks' only contact with frcnn_jax's training and inference glue.

Shape shorthand: B batch, Hb, Wb padded image size, G max gt boxes.

Every benchmark builds its model, state and programs through these few functions,
so that a move of the glue (model builder, train state, train step, predict
function) is ported here once. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import functools

import bench_lib  # noqa: F401 (first: puts the repository root on sys.path)
import jax
import jax.numpy as jnp
import ml_collections

from frcnn_jax.inference.predict_fn import make_predict_fn
from frcnn_jax.models import build_model as _build_model
from frcnn_jax.models import conv
from frcnn_jax.models import init_variables as _init_variables
from frcnn_jax.training import sharding
from frcnn_jax.training.step import create_train_state as _create_train_state
from frcnn_jax.training.step import train_step

# The train step's batch keys, in the data contract's layout.
TRAIN_KEYS = sharding.TRAIN_KEYS


def build_model(config: ml_collections.ConfigDict, *, num_classes: int):
    """Our FasterRCNN module from ``config.model`` with ``num_classes`` object classes."""
    return _build_model(config.model, num_classes=num_classes)


def init_variables(model, key: jax.Array) -> dict:
    """Initial ``{"params", "frozen"}`` variables of ``model``."""
    return _init_variables(model, key)


def create_train_state(config: ml_collections.ConfigDict, model, variables: dict):
    """The TrainState the training program starts from (configured optimizer)."""
    return _create_train_state(config, model, variables)[0]


def abstract_train_state(config: ml_collections.ConfigDict, model):
    """The train state as ``jax.ShapeDtypeStruct`` leaves: nothing is allocated."""
    return jax.eval_shape(
        lambda key: create_train_state(config, model, init_variables(model, key)),
        jax.random.key(config.seed),
    )


def abstract_batch(*, batch_size: int, height: int, width: int, max_boxes: int) -> dict:
    """A training batch ``[B, Hb, Wb, 3]`` etc. as ``jax.ShapeDtypeStruct`` (data contract)."""
    shape = jax.ShapeDtypeStruct
    return {
        "images": shape((batch_size, height, width, 3), jnp.uint8),
        "image_sizes": shape((batch_size, 2), jnp.int32),
        "scales": shape((batch_size, 2), jnp.float32),
        "gt_boxes": shape((batch_size, max_boxes, 4), jnp.float32),
        "gt_classes": shape((batch_size, max_boxes), jnp.int32),
        "gt_mask": shape((batch_size, max_boxes), jnp.bool_),
    }


def jit_train_step(*, platform: str | None = None, extra_options: dict[str, str] | None = None):
    """``train_step(state, batch, key) -> (state, metrics)`` jitted on one device, state donated.

    ``platform`` ("cpu", "gpu"; default: JAX's default backend) picks the compiler options;
    ``extra_options`` are set on top of them (step_ab.py's ``xla.`` variants).
    """
    platform = platform or jax.default_backend()
    options = {**(conv.compiler_options(platform) or {}), **(extra_options or {})} or None
    return jax.jit(train_step, donate_argnums=0, compiler_options=options)


def jit_mesh_train_step():
    """``(step, place_state, place_batch)``: the data-parallel step over all devices."""
    mesh = sharding.make_mesh()
    return (
        sharding.jit_train_step(mesh),
        functools.partial(sharding.replicate, mesh=mesh),
        functools.partial(sharding.shard_batch, mesh=mesh),
    )


def predict_fn(model):
    """Jitted ``(variables, images uint8 [B, Hb, Wb, 3], image_sizes [B, 2]) -> detections``."""
    return make_predict_fn(model)
