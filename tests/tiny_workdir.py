"""A tiny training workdir, as train.py leaves it, with untrained weights (no training needed)."""

import os

import jax
import jax.numpy as jnp

from frcnn_jax import checkpoint, train_lib, train_loop
from frcnn_jax import data as data_lib
from tests.tiny import tiny_config


def make_workdir(workdir, config=None, *, steps=(2,)):
    """Writes config.json, class_names.json and a checkpoint per step; returns the config."""
    workdir = str(workdir)
    config = config or tiny_config()
    class_names = data_lib.get_class_names(config.data)
    train_loop.write_run_info(workdir, config, class_names)
    model = train_lib.build_model(config.model, num_classes=len(class_names))
    state, _ = train_lib.create_train_state(
        config, model, train_lib.init_variables(model, jax.random.key(0))
    )
    checkpointer = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
    for step in steps:
        # As train.py saves it: the step counter is an int32 array after a train step.
        checkpointer.save(jax.device_get(state.replace(step=jnp.asarray(step, jnp.int32))))
    checkpointer.close()
    return config
