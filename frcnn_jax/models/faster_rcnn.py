"""Faster R-CNN (Ren et al. 2015): backbone -> RPN -> proposals -> RoI head.

Shape shorthand: B batch, Hb, Wb padded image size, G max gt boxes, A anchors,
P proposals per image, S sampled rois per image, K classes including
background, D detections per image.

The whole detector, from anchors to losses, is traced into one program: target
assignment, proposals and sampling are the fixed-shape pure functions of
``frcnn_jax`` vmapped over the batch, so training needs no host round trip.
Images arrive as uint8 and are normalised here, on the device.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from frcnn_jax import anchors as anchors_lib
from frcnn_jax import boxes as box_lib
from frcnn_jax import losses as loss_lib
from frcnn_jax import nms as nms_lib
from frcnn_jax import proposals as proposals_lib
from frcnn_jax import roi_ops
from frcnn_jax import targets as targets_lib
from frcnn_jax.models import backbones
from frcnn_jax.models.heads import RoIHead, RPNHead

Dtype = Any

# Per-channel statistics of the weights' training data, in the order of the
# channels the network expects. Caffe VGG16 (the seed's default) takes BGR
# 0..255 minus the mean; torchvision weights take RGB in [0, 1] standardised.
NORMALIZATIONS = {
    "caffe": {"bgr": True, "mean": (102.9801, 115.9465, 122.7717), "std": (1.0, 1.0, 1.0)},
    "torchvision": {
        "bgr": False,
        "mean": (0.485 * 255, 0.456 * 255, 0.406 * 255),
        "std": (0.229 * 255, 0.224 * 255, 0.225 * 255),
    },
}


def normalize_images(
    images: jnp.ndarray, image_sizes: jnp.ndarray, *, normalization: str, dtype: Dtype
) -> jnp.ndarray:
    """uint8 RGB ``[B, Hb, Wb, 3]`` -> normalised ``dtype``; padding stays exactly 0.

    Zero padding after normalisation (not before) is what the references do, so
    padded pixels look like the mean colour and do not leak edges into features.
    """
    norm = NORMALIZATIONS[normalization]
    x = images.astype(jnp.float32)
    if norm["bgr"]:
        x = x[..., ::-1]
    x = (x - jnp.asarray(norm["mean"])) / jnp.asarray(norm["std"])
    rows = jnp.arange(images.shape[1])[None, :, None] < image_sizes[:, 0, None, None]
    cols = jnp.arange(images.shape[2])[None, None, :] < image_sizes[:, 1, None, None]
    return jnp.where((rows & cols)[..., None], x, 0.0).astype(dtype)


class FasterRCNN(nn.Module):
    """Faster R-CNN with approximate joint training (RPN + Fast R-CNN losses summed).

    Defaults are the seed's (simple-faster-rcnn-pytorch): anchors 16 x (8, 16, 32)
    x ratios (0.5, 1, 2); RPN 256 samples, IoU 0.7 / 0.3; proposals 12000 -> 2000
    (train), 6000 -> 300 (test), NMS 0.7, min size 16; RoI 128 samples, 25%
    foreground at IoU 0.5; deltas normalised by stds (0.1, 0.1, 0.2, 0.2);
    inference score threshold 0.05, per-class NMS 0.3, 100 detections.
    """

    num_classes: int  # object classes, without background
    backbone: str = "vgg16"
    dtype: Dtype = jnp.float32
    normalization: str = "caffe"
    # Single-level anchors: base 16 x scales; FPN: one size per level.
    anchor_scales: Sequence[float] = (8.0, 16.0, 32.0)
    anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0)
    fpn_anchor_sizes: Sequence[float] = (32.0, 64.0, 128.0, 256.0, 512.0)
    small_widths: Sequence[int] = (32, 64, 96, 128)
    rpn_channels: int = 512
    roi_hidden: Sequence[int] = (4096, 4096)
    roi_op: str = "pool"  # "pool" (the seed's RoIPool) or "align"; FPN always aligns
    roi_output_size: int = 7
    rpn_num_samples: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_positive_iou: float = 0.7
    rpn_negative_iou: float = 0.3
    rpn_nms_threshold: float = 0.7
    rpn_min_size: float = 16.0
    train_pre_nms_top_n: int = 12000
    train_post_nms_top_n: int = 2000
    test_pre_nms_top_n: int = 6000
    test_post_nms_top_n: int = 300
    roi_num_samples: int = 128
    roi_positive_fraction: float = 0.25
    roi_positive_iou: float = 0.5
    roi_negative_iou: tuple[float, float] = (0.0, 0.5)
    delta_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    score_threshold: float = 0.05
    nms_threshold: float = 0.3
    max_detections: int = 100

    @property
    def is_fpn(self) -> bool:
        return self.backbone.endswith("_fpn")

    @property
    def anchors_per_position(self) -> int:
        if self.is_fpn:
            return len(self.anchor_ratios)
        return len(self.anchor_ratios) * len(self.anchor_scales)

    def setup(self):
        if self.backbone not in backbones.BACKBONES:
            raise ValueError(
                f"model.backbone={self.backbone!r}; choose one of {sorted(backbones.BACKBONES)}"
            )
        self.body = self._make_body()
        self.rpn = RPNHead(self.anchors_per_position, channels=self.rpn_channels, dtype=self.dtype)
        self.head = RoIHead(self.num_classes + 1, hidden=tuple(self.roi_hidden), dtype=self.dtype)

    def _make_body(self, **kwargs) -> nn.Module:
        if self.backbone == "small":
            kwargs["widths"] = tuple(self.small_widths)
        return backbones.BACKBONES[self.backbone](dtype=self.dtype, **kwargs)

    def _strides(self) -> tuple[int, ...]:
        if self.backbone == "small":
            return (2 ** len(self.small_widths),)
        factory = backbones.BACKBONES[self.backbone]
        return (factory.func if isinstance(factory, functools.partial) else factory).strides

    def anchors_for_shapes(self, feature_shapes) -> jnp.ndarray:
        """float32 ``[A, 4]`` anchors for feature maps of the given (h, w), in the RPN's order."""
        strides = self._strides()
        shapes = [tuple(int(d) for d in shape) for shape in feature_shapes]
        if self.is_fpn:
            anchors = anchors_lib.pyramid_anchors(
                shapes,
                strides=strides,
                sizes=tuple(self.fpn_anchor_sizes),
                ratios=tuple(self.anchor_ratios),
            )
        else:
            base = anchors_lib.anchor_base(
                base_size=strides[0],
                ratios=tuple(self.anchor_ratios),
                scales=tuple(self.anchor_scales),
            )
            anchors = anchors_lib.grid_anchors(base, strides[0], *shapes[0])
        return jnp.asarray(anchors, jnp.float32)

    def anchors(self, image_height: int, image_width: int) -> jnp.ndarray:
        """float32 ``[A, 4]`` anchors of a padded image, in the RPN outputs' order.

        Feature map sizes come from the backbone itself (``jax.eval_shape``):
        VGG16's pools floor odd sizes where strided convolutions ceil them.
        """
        body = self._make_body(parent=None)  # a free-standing copy, only for its shapes
        image = jax.ShapeDtypeStruct((1, image_height, image_width, 3), jnp.float32)
        outputs = jax.eval_shape(lambda x: body.init_with_output(jax.random.key(0), x)[0], image)
        return self.anchors_for_shapes([o.shape[1:3] for o in outputs])

    def _features(self, images, image_sizes):
        x = normalize_images(
            images, image_sizes, normalization=self.normalization, dtype=self.dtype
        )
        features = self.body(x)
        rpn_logits, rpn_deltas = self.rpn(features)
        return features, rpn_logits, rpn_deltas

    def _pool(self, features, rois):
        """RoI features ``[B, R, p, p, C]`` of rois ``[B, R, 4]`` (no gradient to coordinates)."""
        rois = jax.lax.stop_gradient(rois)
        p = self.roi_output_size
        if self.is_fpn:
            fn = functools.partial(roi_ops.multilevel_roi_align, output_size=p)
            return jax.vmap(fn)(features[:4], rois)
        scale = 1.0 / self._strides()[0]
        if self.roi_op == "pool":
            fn = functools.partial(roi_ops.roi_pool, output_size=p, spatial_scale=scale)
        elif self.roi_op == "align":
            fn = functools.partial(roi_ops.roi_align, output_size=p, spatial_scale=scale)
        else:
            raise ValueError(f"model.roi_op={self.roi_op!r}; choose 'pool' or 'align'")
        return jax.vmap(fn)(features[0], rois)

    def _propose(self, features, rpn_logits, rpn_deltas, anchors, image_sizes, *, pre, post):
        # FPN: top-k and NMS per level (torchvision, detectron2); one level: the seed's rule.
        level_sizes = (
            [f.shape[1] * f.shape[2] * self.anchors_per_position for f in features]
            if self.is_fpn
            else None
        )
        fn = functools.partial(
            proposals_lib.propose,
            pre_nms_top_n=pre,
            post_nms_top_n=post,
            nms_threshold=self.rpn_nms_threshold,
            min_size=self.rpn_min_size,
            level_sizes=level_sizes,
        )
        return jax.vmap(fn, in_axes=(0, 0, None, 0))(
            jax.lax.stop_gradient(rpn_logits),
            jax.lax.stop_gradient(rpn_deltas),
            anchors,
            image_sizes,
        )

    def __call__(self, images, image_sizes, gt_boxes, gt_labels, gt_mask, *, keys):
        """Training losses.

        Args:
          images: uint8 ``[B, Hb, Wb, 3]`` RGB, zero padded.
          image_sizes: int32 ``[B, 2]`` (height, width) inside the padding.
          gt_boxes: float32 ``[B, G, 4]`` (ymin, xmin, ymax, xmax) pixels.
          gt_labels: int32 ``[B, G]`` 0-based class ids.
          gt_mask: bool ``[B, G]``, False for padding (and excluded boxes).
          keys: ``[B]`` PRNG keys, one per image, for anchor and roi sampling.

        Returns:
          ``(losses, aux)``: losses ``{"rpn_cls", "rpn_box", "roi_cls", "roi_box",
          "total"}`` float32 scalars; aux holds sampling statistics.
        """
        batch = images.shape[0]
        features, rpn_logits, rpn_deltas = self._features(images, image_sizes)
        anchors = self.anchors_for_shapes([f.shape[1:3] for f in features])
        split_keys = jax.vmap(jax.random.split)(keys)  # [B, 2]
        anchor_keys, roi_keys = split_keys[:, 0], split_keys[:, 1]

        anchor_fn = functools.partial(
            targets_lib.anchor_targets,
            num_samples=self.rpn_num_samples,
            positive_fraction=self.rpn_positive_fraction,
            positive_iou=self.rpn_positive_iou,
            negative_iou=self.rpn_negative_iou,
        )
        rpn_labels, rpn_targets = jax.vmap(anchor_fn, in_axes=(0, None, 0, 0, 0))(
            anchor_keys, anchors, gt_boxes, gt_mask, image_sizes
        )
        losses = loss_lib.rpn_losses(
            pred_logits=rpn_logits,
            pred_deltas=rpn_deltas,
            gt_labels=rpn_labels,
            gt_deltas=rpn_targets,
            sigma=3.0,
        )

        rois, roi_mask = self._propose(
            features,
            rpn_logits,
            rpn_deltas,
            anchors,
            image_sizes,
            pre=self.train_pre_nms_top_n,
            post=self.train_post_nms_top_n,
        )
        sample_fn = functools.partial(
            targets_lib.proposal_targets,
            num_samples=self.roi_num_samples,
            positive_fraction=self.roi_positive_fraction,
            positive_iou=self.roi_positive_iou,
            negative_iou=tuple(self.roi_negative_iou),
            delta_stds=tuple(self.delta_stds),
        )
        sample_rois, sample_labels, sample_targets, sample_mask = jax.vmap(sample_fn)(
            roi_keys, rois, roi_mask, gt_boxes, gt_labels, gt_mask
        )
        cls_logits, box_deltas = self.head(self._pool(features, sample_rois))
        losses.update(
            loss_lib.roi_losses(
                pred_logits=cls_logits,
                pred_deltas=box_deltas,
                gt_labels=sample_labels,
                gt_deltas=sample_targets,
                mask=sample_mask,
                sigma=1.0,
            )
        )
        losses["total"] = loss_lib.total_loss(losses)
        aux = {
            "rpn_positives": (rpn_labels == 1).sum() / batch,
            "roi_foreground": ((sample_labels > 0) & sample_mask).sum() / batch,
            "proposals": roi_mask.sum() / batch,
        }
        return losses, aux

    def _test_rois(self, images, image_sizes):
        """Features and the test-time proposals (``test_pre/post_nms_top_n``)."""
        features, rpn_logits, rpn_deltas = self._features(images, image_sizes)
        anchors = self.anchors_for_shapes([f.shape[1:3] for f in features])
        rois, roi_mask = self._propose(
            features,
            rpn_logits,
            rpn_deltas,
            anchors,
            image_sizes,
            pre=self.test_pre_nms_top_n,
            post=self.test_post_nms_top_n,
        )
        return features, rois, roi_mask

    def proposals(self, images, image_sizes):
        """Test-time RPN proposals: rois ``[B, P, 4]`` best first, roi_mask ``[B, P]``."""
        _, rois, roi_mask = self._test_rois(images, image_sizes)
        return rois, roi_mask

    def detect(self, images, image_sizes):
        """Inference: padded detections in the (resized) input image's pixels.

        Args:
          images: uint8 ``[B, Hb, Wb, 3]``; image_sizes: int32 ``[B, 2]``.

        Returns:
          dict of ``boxes`` float32 ``[B, D, 4]`` (ymin, xmin, ymax, xmax),
          ``scores`` float32 ``[B, D]``, ``classes`` int32 ``[B, D]`` 0-based,
          ``valid`` bool ``[B, D]``; D = max_detections, sorted by score.
        """
        features, rois, roi_mask = self._test_rois(images, image_sizes)
        cls_logits, box_deltas = self.head(self._pool(features, rois))
        return jax.vmap(self._postprocess)(cls_logits, box_deltas, rois, roi_mask, image_sizes)

    def _postprocess(self, cls_logits, box_deltas, rois, roi_mask, image_size):
        """One image: per-class decode, score threshold, per-class NMS, top D."""
        num_rois, k = cls_logits.shape
        scores = jax.nn.softmax(cls_logits, axis=-1)[:, 1:]  # [P, K - 1]
        deltas = box_deltas[:, 1:] * jnp.asarray(self.delta_stds)  # [P, K - 1, 4]
        boxes = box_lib.clip_boxes(box_lib.decode(rois[:, None, :], deltas), image_size)
        classes = jnp.broadcast_to(jnp.arange(k - 1, dtype=jnp.int32), (num_rois, k - 1))
        valid = roi_mask[:, None] & (scores > self.score_threshold) & (box_lib.area(boxes) > 0)
        boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
        classes, valid = classes.reshape(-1), valid.reshape(-1)
        keep, keep_valid = nms_lib.batched_nms(
            boxes,
            scores,
            classes,
            iou_threshold=self.nms_threshold,
            max_output=self.max_detections,
            valid=valid,
        )
        return {
            "boxes": jnp.where(keep_valid[:, None], boxes[keep], 0.0),
            "scores": jnp.where(keep_valid, scores[keep], 0.0),
            "classes": jnp.where(keep_valid, classes[keep], 0),
            "valid": keep_valid,
        }

    def initialize(self, images, image_sizes):
        """Touches every submodule once (for ``init``) without any target assignment."""
        features, _, _ = self._features(images, image_sizes)
        rois = jnp.zeros((images.shape[0], 1, 4), jnp.float32)
        return self.head(self._pool(features, rois))
