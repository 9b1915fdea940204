"""Faster R-CNN losses, normalised as simple-faster-rcnn-pytorch does.

Shape shorthand: B batch, A anchors, S sampled rois per image, K classes
including background.

Each loss is normalised per image (the reference trains on one image at a
time) and averaged over the batch, so a batch of one gives exactly the
reference's numbers and the mean over devices of per-device losses equals the
loss of the whole batch on one device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_l1(pred: jnp.ndarray, target: jnp.ndarray, *, sigma: float) -> jnp.ndarray:
    """Elementwise smooth L1 with the seed's sigma: quadratic below 1/sigma^2, linear above."""
    sigma2 = sigma**2
    diff = jnp.abs(pred - target)
    return jnp.where(diff < 1.0 / sigma2, 0.5 * sigma2 * diff**2, diff - 0.5 / sigma2)


def smooth_l1_beta(pred: jnp.ndarray, target: jnp.ndarray, *, beta: float) -> jnp.ndarray:
    """Elementwise smooth L1 as torchvision and detectron2 write it: ``0.5 x^2 / beta`` below
    ``beta``, ``|x| - beta / 2`` above; ``beta = 0`` is plain L1 (detectron2's box loss).
    The seed's sigma is ``beta = 1 / sigma^2`` (sigma 1: beta 1, the same arithmetic; sigma 3:
    torchvision's 1/9)."""
    diff = jnp.abs(pred - target)
    if beta <= 0.0:  # static: no 0/0 in a branch that jnp.where would differentiate
        return diff
    return jnp.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)


def _per_image_mean(values: jnp.ndarray, counts: jnp.ndarray) -> jnp.ndarray:
    """Mean over images of (sum of values ``[B, N]`` / count ``[B]``), empty images giving 0."""
    return jnp.mean(values.sum(-1) / jnp.maximum(counts, 1.0))


def sigmoid_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Elementwise binary cross-entropy of float logits and {0, 1} labels (optax's formula;
    written here so that inference, which imports the model, does not import optax)."""
    labels = labels.astype(logits.dtype)
    return -labels * jax.nn.log_sigmoid(logits) - (1.0 - labels) * jax.nn.log_sigmoid(-logits)


def softmax_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Cross-entropy ``[...]`` of logits ``[..., K]`` and int labels ``[...]`` in [0, K)."""
    label_logits = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - label_logits


def rpn_losses(
    *,
    pred_logits: jnp.ndarray,
    pred_deltas: jnp.ndarray,
    gt_labels: jnp.ndarray,
    gt_deltas: jnp.ndarray,
    sigma: float = 3.0,
) -> dict[str, jnp.ndarray]:
    """RPN objectness and box losses.

    Args:
      pred_logits: float32 ``[B, A]`` objectness logits (sigmoid).
      pred_deltas: float32 ``[B, A, 4]``.
      gt_labels: int32 ``[B, A]`` in {-1 ignore, 0 negative, 1 positive}.
      gt_deltas: float32 ``[B, A, 4]`` targets (used where gt_labels == 1).
      sigma: smooth L1 sigma (3 in the seed).

    Returns:
      ``{"rpn_cls", "rpn_box"}`` scalars: binary cross-entropy averaged over
      sampled anchors; smooth L1 summed over positives divided by the number of
      sampled anchors (the seed's ``_fast_rcnn_loc_loss``).
    """
    sampled = (gt_labels >= 0).astype(jnp.float32)
    positive = (gt_labels == 1).astype(jnp.float32)
    num_sampled = sampled.sum(-1)
    bce = sigmoid_cross_entropy(pred_logits, positive)
    box = smooth_l1(pred_deltas, gt_deltas, sigma=sigma).sum(-1) * positive
    return {
        "rpn_cls": _per_image_mean(bce * sampled, num_sampled),
        "rpn_box": _per_image_mean(box, num_sampled),
    }


def roi_losses(
    *,
    pred_logits: jnp.ndarray,
    pred_deltas: jnp.ndarray,
    gt_classes: jnp.ndarray,
    gt_deltas: jnp.ndarray,
    mask: jnp.ndarray,
    beta: float = 1.0,
) -> dict[str, jnp.ndarray]:
    """Fast R-CNN classification and box losses over sampled rois.

    Args:
      pred_logits: float32 ``[B, S, K]``.
      pred_deltas: float32 ``[B, S, K, 4]`` per-class deltas.
      gt_classes: int32 ``[B, S]``, 0 background, c + 1 for class c.
      gt_deltas: float32 ``[B, S, 4]`` normalised targets.
      mask: bool ``[B, S]``, False for unfilled sample slots.
      beta: smooth L1 beta (``smooth_l1_beta``): 1 is the seed's sigma 1, 1/9
        torchvision's box loss, 0 detectron2's L1.

    Returns:
      ``{"roi_cls", "roi_box"}``: cross-entropy averaged over valid samples;
      smooth L1 on the ground-truth class's deltas summed over foreground
      samples, divided by the number of valid samples.
    """
    valid = mask.astype(jnp.float32)
    num_valid = valid.sum(-1)
    ce = softmax_cross_entropy(pred_logits, gt_classes)
    class_deltas = jnp.take_along_axis(pred_deltas, gt_classes[..., None, None], axis=-2)[..., 0, :]
    foreground = valid * (gt_classes > 0)
    box = smooth_l1_beta(class_deltas, gt_deltas, beta=beta).sum(-1) * foreground
    return {
        "roi_cls": _per_image_mean(ce * valid, num_valid),
        "roi_box": _per_image_mean(box, num_valid),
    }


def total_loss(losses: dict[str, jnp.ndarray]) -> jnp.ndarray:
    """Approximate joint training: the four losses summed with weight 1."""
    return losses["rpn_cls"] + losses["rpn_box"] + losses["roi_cls"] + losses["roi_box"]
