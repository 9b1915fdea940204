"""Run in a subprocess with 8 simulated CPU devices (see test_multidevice.py).

Prints "max_abs_diff_mesh=..., max_abs_diff_pmap=..." between the parameters after
one step of: 1 device x batch 8 (plain jit), 8 devices x batch 1 on a mesh, and
8 devices x batch 1 under pmap.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from frcnn_jax import data as data_lib  # noqa: E402
from frcnn_jax.models import build_model, init_variables  # noqa: E402
from frcnn_jax.training import sharding  # noqa: E402
from frcnn_jax.training.step import create_train_state, train_step  # noqa: E402
from tests.tiny import tiny_config  # noqa: E402


def main():
    assert jax.device_count() == 8, jax.devices()
    config = tiny_config(batch_size=8)
    model = build_model(config.model, num_classes=len(data_lib.get_class_names(config.data)))
    variables = init_variables(model, jax.random.key(0))
    host_batch = next(
        iter(
            data_lib.create_dataset(config.data, split="train", training=True, batch_size=8, seed=0)
        )
    )
    batch = {k: np.asarray(host_batch[k]) for k in sharding.TRAIN_KEYS}
    key = jax.random.key(7)

    def fresh_state():
        # A copy: the mesh step donates its input state's buffers.
        return create_train_state(config, model, jax.tree.map(jnp.array, variables))[0]

    results = {}
    # Two steps: the second one exercises the momentum buffers too.
    single = jax.jit(train_step)
    state = fresh_state()
    for i in range(2):
        state, _ = single(
            state, {k: jnp.asarray(v) for k, v in batch.items()}, jax.random.fold_in(key, i)
        )
    reference = jax.device_get(state.params)

    mesh = sharding.make_mesh()
    step = sharding.jit_train_step(mesh)
    state = sharding.replicate(fresh_state(), mesh)
    # The batches reach the mesh as in the training loop (one process, 8 local devices).
    device_batches = data_lib.prefetch_to_device(
        iter([batch, batch]), size=2, sharding=sharding.data_sharding(mesh)
    )
    for i, device_batch in enumerate(device_batches):
        assert len(device_batch["images"].addressable_shards) == 8
        state, metrics = step(state, device_batch, jax.random.fold_in(key, i))
        jax.block_until_ready(metrics)
    results["mesh"] = jax.device_get(state.params)

    pstep = sharding.pmap_train_step()
    state = sharding.replicate_for_pmap(fresh_state())
    per_device = {k: v.reshape(8, 1, *v.shape[1:]) for k, v in batch.items()}
    for i in range(2):
        state, metrics = pstep(state, per_device, jax.random.fold_in(key, i))
        jax.block_until_ready(metrics)
    results["pmap"] = jax.tree.map(lambda x: x[0], jax.device_get(state.params))

    for name, params in results.items():
        diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), reference, params)
        scale = max(jax.tree.leaves(jax.tree.map(lambda a: float(np.max(np.abs(a))), reference)))
        print(f"max_abs_diff_{name}={max(jax.tree.leaves(diffs)):.3e} scale={scale:.3e}")
    moved = jax.tree.map(
        lambda a, b: float(np.max(np.abs(a - b))), reference, jax.device_get(variables["params"])
    )
    print(f"update_size={max(jax.tree.leaves(moved)):.3e}")


if __name__ == "__main__":
    main()
