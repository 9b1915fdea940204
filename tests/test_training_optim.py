"""Optimizer: frozen layers untouched and without optimizer memory, no decay on biases, schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from frcnn_jax.models import backbones
from frcnn_jax.training import optim


def _params():
    return {
        "body": {
            "conv1_1": {"kernel": jnp.ones((3, 3, 3, 2)), "bias": jnp.ones(2)},
            "conv3_1": {"kernel": jnp.ones((3, 3, 2, 2)), "bias": jnp.ones(2)},
        },
        "head": {"fc6": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)}},
    }


def test_labels_mark_vgg_frozen_convs_biases_and_weights():
    labels = optim.param_labels(_params(), backbone="vgg16")
    assert labels["body"]["conv1_1"] == {"kernel": "frozen", "bias": "frozen"}
    assert labels["body"]["conv3_1"] == {"kernel": "weight", "bias": "bias"}
    assert labels["head"]["fc6"] == {"kernel": "weight", "bias": "bias"}


def test_resnet_frozen_prefixes():
    assert backbones.is_frozen_param("resnet50_fpn", "body/conv1/kernel")
    assert backbones.is_frozen_param("resnet50_fpn", "body/layer1_2/conv3/kernel")
    assert not backbones.is_frozen_param("resnet50_fpn", "body/layer2_0/conv1/kernel")
    assert not backbones.is_frozen_param("resnet50_fpn", "fpn/inner0/kernel")
    assert not backbones.is_frozen_param("small", "conv1_1/kernel")


def test_frozen_params_get_no_update_no_decay_and_no_momentum_buffer():
    params = _params()
    tx = optim.make_optimizer(
        params, backbone="vgg16", schedule=optax.constant_schedule(0.1), weight_decay=0.5
    )
    opt_state = tx.init(params)
    # Momentum buffers exist for 4 trainable leaves only (2 weights + 2 biases).
    buffers = [x for x in jax.tree.leaves(opt_state) if hasattr(x, "shape") and x.ndim > 0]
    assert sum(b.size for b in buffers) == 3 * 3 * 2 * 2 + 2 + 4 * 2 + 2
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, opt_state, params)
    new = optax.apply_updates(params, updates)
    # Zero gradients: only weight decay moves things, and only non-bias trainable weights.
    np.testing.assert_array_equal(new["body"]["conv1_1"]["kernel"], 1.0)
    np.testing.assert_array_equal(new["body"]["conv3_1"]["bias"], 1.0)
    np.testing.assert_allclose(new["body"]["conv3_1"]["kernel"], 1.0 - 0.1 * 0.5)


def test_schedule_warms_up_linearly_then_decays_tenfold():
    schedule = optim.learning_rate_schedule(
        base_lr=1.0, warmup_steps=10, decay_steps=[20], warmup_factor=0.0
    )
    np.testing.assert_allclose(
        [schedule(0), schedule(5), schedule(10), schedule(19), schedule(20)],
        [0.0, 0.5, 1.0, 1.0, 0.1],
        rtol=1e-6,
    )
    assert optim.scaled_learning_rate(1e-3, 8, 1) == 8e-3


def test_cosine_schedule_warms_up_then_follows_half_a_cosine_to_zero():
    schedule = optim.learning_rate_schedule(
        base_lr=1.0,
        warmup_steps=10,
        decay_steps=[15],
        warmup_factor=0.0,
        kind="cosine",
        total_steps=30,
    )
    # Warmup 0 -> 1 over 10 steps; then t = (step - 10) / 20: (1 + cos(pi t)) / 2, decay_steps
    # unused (no x0.1 at 15). Step 25: t = 3/4, (1 - sqrt(2)/2) / 2 = 0.146447.
    np.testing.assert_allclose(
        [schedule(s) for s in (0, 5, 10, 15, 20, 25, 30)],
        [0.0, 0.5, 1.0, (1 + np.cos(np.pi / 4)) / 2, 0.5, 0.1464466, 0.0],
        rtol=1e-5,
        atol=1e-7,
    )
    with pytest.raises(ValueError, match="total_steps > warmup_steps"):
        optim.learning_rate_schedule(base_lr=1.0, warmup_steps=10, decay_steps=(), kind="cosine")
    with pytest.raises(ValueError, match="choose one of"):
        optim.learning_rate_schedule(base_lr=1.0, warmup_steps=0, decay_steps=(), kind="linear")


def test_group_norm_scales_are_undecayed_and_bias_lr_factor_doubles_their_step():
    params = {
        "body": {
            "body": {
                "conv1": {"kernel": jnp.ones((3, 3, 3, 2))},
                "bn1": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
            }
        },
        "head": {"fc6": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)}},
    }
    gn = {"norm": "group_norm"}
    labels = optim.param_labels(params, backbone="resnet18_fpn", backbone_options=gn)
    assert labels["body"]["body"]["bn1"] == {"scale": "bias", "bias": "bias"}
    assert labels["body"]["body"]["conv1"] == {"kernel": "weight"}  # from scratch: not frozen
    frozen = optim.param_labels(params, backbone="resnet18_fpn")  # ImageNet default: frozen
    assert frozen["body"]["body"]["conv1"] == {"kernel": "frozen"}
    tx = optim.make_optimizer(
        params,
        backbone="resnet18_fpn",
        backbone_options=gn,
        schedule=optax.constant_schedule(0.1),
        momentum=0.0,
        weight_decay=0.0,
        bias_lr_factor=2.0,
    )
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["head"]["fc6"]["kernel"], -0.1)
    np.testing.assert_allclose(updates["head"]["fc6"]["bias"], -0.2)  # the seed's 2x on biases
    np.testing.assert_allclose(updates["body"]["body"]["bn1"]["scale"], -0.2)


def _adamw_step(param, grad, *, lr, b1, b2, eps, weight_decay):
    """One AdamW step from zero moments, written out (Loshchilov & Hutter; bias-corrected)."""
    m = (1 - b1) * grad / (1 - b1)
    v = (1 - b2) * grad**2 / (1 - b2)
    return param - lr * (m / (np.sqrt(v) + eps) + weight_decay * param)


def test_adamw_decays_weights_not_biases_and_leaves_frozen_layers():
    params = _params()
    grads = jax.tree.map(lambda p: 0.25 * jnp.ones_like(p), params)
    tx = optim.make_optimizer(
        params,
        backbone="vgg16",
        schedule=optax.constant_schedule(0.1),
        weight_decay=0.5,
        momentum=0.8,
        optimizer="adamw",
    )
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    step = dict(lr=0.1, b1=0.8, b2=0.999, eps=1e-8)
    kernel = new["head"]["fc6"]["kernel"]
    np.testing.assert_allclose(kernel, _adamw_step(1.0, 0.25, weight_decay=0.5, **step), rtol=1e-6)
    bias = new["head"]["fc6"]["bias"]
    np.testing.assert_allclose(bias, _adamw_step(1.0, 0.25, weight_decay=0.0, **step), rtol=1e-6)
    np.testing.assert_array_equal(new["body"]["conv1_1"]["kernel"], 1.0)


def test_unknown_optimizer_is_named():
    with np.testing.assert_raises_regex(ValueError, "'adam'.*sgd"):
        optim.make_optimizer(
            _params(), backbone="vgg16", schedule=optax.constant_schedule(0.1), optimizer="adam"
        )
