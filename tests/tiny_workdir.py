"""A tiny training workdir, as train.py leaves it, with untrained weights (no training needed)."""

import jax
import jax.numpy as jnp

from frcnn_jax import data as data_lib
from frcnn_jax import workdir as workdir_lib
from frcnn_jax.models import build_model, init_variables
from frcnn_jax.training.step import checkpoint_items, create_train_state
from tests.tiny import tiny_config


def make_workdir(workdir, config=None, *, steps=(2,)):
    """Writes config.json, class_names.json and a checkpoint per step; returns the config."""
    workdir = str(workdir)
    config = config or tiny_config()
    class_names = data_lib.get_class_names(config.data)
    workdir_lib.write_run_info(workdir, config, class_names)
    model = build_model(config.model, num_classes=len(class_names))
    state, _ = create_train_state(config, model, init_variables(model, jax.random.key(0)))
    checkpointer = workdir_lib.Checkpointer(workdir)
    for step in steps:
        # As train.py saves it: the step counter is an int32 array after a train step.
        saved = jax.device_get(state.replace(step=jnp.asarray(step, jnp.int32)))
        checkpointer.save(step, **checkpoint_items(saved))
    checkpointer.close()
    return config
