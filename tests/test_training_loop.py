"""The train step end to end: a real step on tiny data, the non-finite guard, and train.py."""

import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frcnn_jax import data as data_lib
from frcnn_jax import workdir as workdir_lib
from frcnn_jax.models import build_model, init_variables
from frcnn_jax.training import anchor_setup, loop, sharding
from frcnn_jax.training.step import create_train_state, image_keys, train_step
from tests.tiny import tiny_config


def _setup(config):
    class_names = data_lib.get_class_names(config.data)
    model = build_model(config.model, num_classes=len(class_names))
    variables = init_variables(model, jax.random.key(0))
    state, _ = create_train_state(config, model, variables)
    batch = next(
        iter(
            data_lib.create_dataset(
                config.data, split="train", training=True, batch_size=config.batch_size, seed=0
            )
        )
    )
    return model, state, {k: jnp.asarray(batch[k]) for k in sharding.TRAIN_KEYS}


def test_one_step_on_synthetic_data_gives_finite_losses_and_moves_trainable_params():
    config = tiny_config()
    _, state, batch = _setup(config)
    assert bool(batch["gt_mask"].any())
    new_state, metrics = jax.jit(train_step)(state, batch, jax.random.key(1))
    for name in ("rpn_cls", "rpn_box", "roi_cls", "roi_box", "total"):
        assert np.isfinite(float(metrics[name])), name
    np.testing.assert_allclose(
        float(metrics["total"]),
        sum(float(metrics[k]) for k in ("rpn_cls", "rpn_box", "roi_cls", "roi_box")),
        rtol=1e-5,
    )
    assert int(new_state.step) == 1 and int(new_state.nonfinite_step) == -1
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
    assert all(jax.tree.leaves(moved["head"])) and all(jax.tree.leaves(moved["rpn"]))


def test_non_finite_loss_leaves_the_state_unchanged_and_records_the_step():
    config = tiny_config()
    _, state, batch = _setup(config)
    # A NaN classifier bias makes the RoI loss NaN.
    params = jax.tree.map(lambda x: x, state.params)
    params["head"]["cls_score"]["bias"] = jnp.full_like(
        params["head"]["cls_score"]["bias"], jnp.nan
    )
    state = state.replace(params=params)
    new_state, metrics = jax.jit(train_step)(state, batch, jax.random.key(1))
    assert not np.isfinite(float(metrics["total"]))
    assert int(new_state.nonfinite_step) == 0 and int(new_state.step) == 1
    same = jax.tree.map(
        lambda a, b: bool(jnp.all((a == b) | (jnp.isnan(a) & jnp.isnan(b)))),
        state.params,
        new_state.params,
    )
    assert all(jax.tree.leaves(same))


def test_train_and_evaluate_runs_logs_checkpoints_and_stops_on_nan(tmp_path):
    # Anchors fitted to the data at startup: the workdir records them, evaluation uses them.
    config = tiny_config(num_train_steps=4, eval_every_steps=4, **{"model.anchors.auto": True})
    metrics = loop.train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(metrics["total"]) and "voc07_map" in metrics
    recorded, _ = workdir_lib.load_run(str(tmp_path))
    expected = anchor_setup.setup_anchors(config).model.anchors
    assert not recorded.model.anchors.auto
    assert (
        tuple(recorded.model.anchors.sizes) == tuple(expected.sizes) != config.model.anchors.sizes
    )
    assert sorted(
        int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()
    ) == [2, 4]
    assert (tmp_path / "config.json").exists() and (tmp_path / "class_names.json").exists()
    # Resume from step 4 with an absurd learning rate: the loss blows up, training stops
    # naming the step, and no checkpoint is written at or after it.
    config.learning_rate = 1e12
    config.num_train_steps = 8
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step (\d+)") as error:
        loop.train_and_evaluate(config, str(tmp_path))
    bad_step = int(re.search(r"at step (\d+)", str(error.value)).group(1))
    assert 4 <= bad_step < 8
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert max(steps) <= bad_step and 4 in steps  # the good checkpoint survives


def test_image_keys_are_global_indices():
    key = jax.random.key(3)
    whole = image_keys(key, 4)
    halves = jax.vmap(lambda _: image_keys(key, 2, "d"), axis_name="d")(jnp.arange(2))
    np.testing.assert_array_equal(
        jax.random.key_data(whole), jax.random.key_data(halves).reshape(4, -1)
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"model.dtype": "bfloat16"},
        # The FPN path: pyramid anchors, multilevel RoIAlign, frozen batch norm (ResNet-50's
        # bottleneck blocks and frozen stages at a sixteenth of the width: compiles 4x faster).
        {
            "model.backbone": "resnet50_fpn",
            "model.backbone_options": {"width": 4, "channels": 16},
            "model.anchors.sizes": (32.0, 64.0, 128.0, 256.0, 512.0),
            "model.rpn.channels": 16,
            "model.roi.op": "align",
        },
    ],
    ids=["bfloat16", "resnet50_fpn"],
)
def test_step_variants_give_finite_losses(overrides):
    config = tiny_config(**overrides)
    _, state, batch = _setup(config)
    new_state, metrics = jax.jit(train_step)(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["total"])) and int(new_state.nonfinite_step) == -1
    leaves = jax.tree.leaves(new_state.params)
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)  # params stay float32
    if "model.backbone" in overrides:
        # Frozen stem and layer1 did not move; layer2 did.
        body = jax.tree.map(
            lambda a, b: bool(jnp.any(a != b)),
            state.params["body"]["body"],
            new_state.params["body"]["body"],
        )
        assert not any(jax.tree.leaves(body["conv1"])) and not any(
            jax.tree.leaves(body["layer1_0"])
        )
        assert any(jax.tree.leaves(body["layer2_0"]))


def test_scratch_group_norm_resnet18_fpn_step_trains_the_stem():
    """The CPU recipe of configs/custom.py (narrowed further): GroupNorm, nothing frozen,
    crossing anchors trained, L1 box loss, AdamW, the seed's 2x bias learning rate."""
    config = tiny_config(
        **{
            "model.backbone": "resnet18_fpn",
            "model.backbone_options": {"norm": "group_norm", "width": 32, "channels": 32},
            "model.anchors.sizes": (16.0, 32.0, 64.0, 128.0, 256.0),
            "model.rpn.channels": 16,
            "model.rpn.border_rule": "train_crossing",
            "model.roi.op": "align",
            "model.roi.box_loss_beta": 0.0,
            "optimizer": "adamw",
            "bias_lr_factor": 2.0,
        }
    )
    _, state, batch = _setup(config)
    new_state, metrics = jax.jit(train_step)(state, batch, jax.random.key(1))
    assert np.isfinite(float(metrics["total"])) and int(new_state.nonfinite_step) == -1
    moved = flax.traverse_util.flatten_dict(
        jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params), sep="/"
    )
    # Every kernel and bias of the backbone moved, the stem and layer1 included (GroupNorm
    # scales start at 1.0, where one small first step can round away).
    assert all(moved[k] for k in moved if k.startswith("body/") and not k.endswith("/scale"))
    assert moved["body/body/conv1/kernel"] and moved["body/body/layer1_0/conv1/kernel"]
