"""Losses: hand-worked smooth L1 and the reference's normalisations."""

import jax
import jax.numpy as jnp
import numpy as np

from frcnn_jax import losses


def test_smooth_l1_matches_seed_formula_by_hand():
    # sigma 3: quadratic below 1/9, 4.5 x^2 there; linear above: |x| - 1/18.
    x = jnp.array([0.0, 0.1, -0.1, 1.0, -2.0])
    expected = [0.0, 4.5 * 0.01, 4.5 * 0.01, 1.0 - 1 / 18, 2.0 - 1 / 18]
    np.testing.assert_allclose(losses.smooth_l1(x, 0.0, sigma=3.0), expected, rtol=1e-6)
    # sigma 1: 0.5 x^2 below 1, |x| - 0.5 above.
    np.testing.assert_allclose(
        losses.smooth_l1(jnp.array([0.5, 3.0]), 0.0, sigma=1.0), [0.125, 2.5], rtol=1e-6
    )


def test_smooth_l1_beta_is_the_seed_sigma_torchvision_and_l1():
    x = jnp.array([0.0, 0.05, -0.5, 2.0])
    # beta 1 is sigma 1; beta 1/9 is sigma 3 (torchvision's 1/9); beta 0 is |x| (detectron2).
    np.testing.assert_allclose(
        losses.smooth_l1_beta(x, 0.0, beta=1.0), losses.smooth_l1(x, 0.0, sigma=1.0), rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.smooth_l1_beta(x, 0.0, beta=1 / 9), losses.smooth_l1(x, 0.0, sigma=3.0), rtol=1e-6
    )
    np.testing.assert_array_equal(losses.smooth_l1_beta(x, 0.0, beta=0.0), jnp.abs(x))
    # L1's gradient at 0 is finite (no 0/0 in an untaken branch).
    grad = jax.grad(lambda p: losses.smooth_l1_beta(p, 0.0, beta=0.0).sum())(jnp.zeros(3))
    assert np.all(np.isfinite(grad))


def test_roi_box_loss_beta():
    # One foreground sample whose class-1 dw is off by 2: L1 gives 2, beta 1/9 gives 2 - 1/18.
    kwargs = dict(
        pred_logits=jnp.zeros((1, 1, 2)),
        pred_deltas=jnp.zeros((1, 1, 2, 4)).at[0, 0, 1, 3].set(2.0),
        gt_classes=jnp.array([[1]]),
        gt_deltas=jnp.zeros((1, 1, 4)),
        mask=jnp.array([[True]]),
    )
    np.testing.assert_allclose(losses.roi_losses(**kwargs)["roi_box"], 1.5, rtol=1e-6)
    np.testing.assert_allclose(losses.roi_losses(**kwargs, beta=0.0)["roi_box"], 2.0, rtol=1e-6)
    np.testing.assert_allclose(
        losses.roi_losses(**kwargs, beta=1 / 9)["roi_box"], 2 - 1 / 18, rtol=1e-6
    )


def test_rpn_box_loss_divides_by_sampled_anchors_not_positives():
    # One image, 4 anchors: one positive (delta error 1 in dy only), one negative,
    # two ignored. Smooth L1(sigma 3) of 1 is 1 - 1/18; divided by 2 sampled anchors.
    labels = jnp.array([[1, 0, -1, -1]])
    pred = jnp.zeros((1, 4, 4)).at[0, 0, 0].set(1.0)
    out = losses.rpn_losses(
        pred_logits=jnp.zeros((1, 4)),
        pred_deltas=pred,
        gt_labels=labels,
        gt_deltas=jnp.zeros((1, 4, 4)),
    )
    np.testing.assert_allclose(out["rpn_box"], (1 - 1 / 18) / 2, rtol=1e-6)
    # Logit 0 gives BCE log(2) for both sampled anchors.
    np.testing.assert_allclose(out["rpn_cls"], np.log(2.0), rtol=1e-6)


def test_roi_losses_use_the_gt_class_deltas_and_skip_background_boxes():
    # Two samples, K = 3: a class-2 roi whose class-2 deltas are off by 2 in dw
    # (other classes' deltas are garbage and must not count) and a background roi.
    deltas = jnp.full((1, 2, 3, 4), 100.0).at[0, 0, 2].set(jnp.array([0.0, 0.0, 0.0, 2.0]))
    logits = jnp.zeros((1, 2, 3))
    out = losses.roi_losses(
        pred_logits=logits,
        pred_deltas=deltas,
        gt_classes=jnp.array([[2, 0]]),
        gt_deltas=jnp.zeros((1, 2, 4)),
        mask=jnp.array([[True, True]]),
    )
    np.testing.assert_allclose(out["roi_box"], (2 - 0.5) / 2, rtol=1e-6)
    np.testing.assert_allclose(out["roi_cls"], np.log(3.0), rtol=1e-6)


def test_losses_are_per_image_means_so_batches_split_evenly():
    # Image 0 has 2 sampled anchors, image 1 has 4: the batch loss is the mean
    # of the two per-image losses, i.e. the mean over devices of 1-image batches.
    rng = np.random.default_rng(0)
    labels = jnp.array([[1, 0, -1, -1], [1, 1, 0, 0]])
    logits = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
    pred = jnp.asarray(rng.normal(size=(2, 4, 4)), jnp.float32)
    gt = jnp.asarray(rng.normal(size=(2, 4, 4)), jnp.float32)
    both = losses.rpn_losses(pred_logits=logits, pred_deltas=pred, gt_labels=labels, gt_deltas=gt)
    singles = [
        losses.rpn_losses(
            pred_logits=logits[i : i + 1],
            pred_deltas=pred[i : i + 1],
            gt_labels=labels[i : i + 1],
            gt_deltas=gt[i : i + 1],
        )
        for i in range(2)
    ]
    for k in both:
        np.testing.assert_allclose(both[k], (singles[0][k] + singles[1][k]) / 2, rtol=1e-6)


def test_empty_images_give_zero_loss_not_nan():
    out = losses.roi_losses(
        pred_logits=jnp.zeros((1, 2, 3)),
        pred_deltas=jnp.zeros((1, 2, 3, 4)),
        gt_classes=jnp.zeros((1, 2), jnp.int32),
        gt_deltas=jnp.zeros((1, 2, 4)),
        mask=jnp.zeros((1, 2), bool),
    )
    assert float(out["roi_cls"]) == 0.0 and float(out["roi_box"]) == 0.0


def test_cross_entropies_equal_optax():
    # Written out in losses.py so that inference never imports optax; optax is the reference.
    import optax  # noqa: PLC0415

    key_a, key_b = jax.random.split(jax.random.key(0))
    logits = 4.0 * jax.random.normal(key_a, (5, 7))
    labels = jax.random.randint(key_b, (5,), 0, 7)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, labels),
        optax.softmax_cross_entropy_with_integer_labels(logits, labels),
        rtol=1e-6,
    )
    binary = jnp.array([0.0, 1.0, 1.0, 0.0])
    extreme = jnp.array([-50.0, -3.0, 40.0, 0.5])  # saturated logits stay finite
    np.testing.assert_allclose(
        losses.sigmoid_cross_entropy(extreme, binary),
        optax.sigmoid_binary_cross_entropy(extreme, binary),
        rtol=1e-6,
    )
