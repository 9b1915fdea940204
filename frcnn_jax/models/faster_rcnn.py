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

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from frcnn_jax import anchors as anchors_lib
from frcnn_jax import detections as detections_lib
from frcnn_jax import losses as loss_lib
from frcnn_jax import proposals as proposals_lib
from frcnn_jax import roi_ops
from frcnn_jax import targets as targets_lib
from frcnn_jax.models import backbones
from frcnn_jax.models.heads import RoIHead, RPNHead
from frcnn_jax.models.inputs import normalize_images
from frcnn_jax.models.options import AnchorOptions, RoIOptions, RPNOptions, TestOptions

Dtype = Any


class FasterRCNN(nn.Module):
    """Faster R-CNN with approximate joint training (RPN + Fast R-CNN losses summed).

    Defaults are the seed's (simple-faster-rcnn-pytorch): anchors 16 x (8, 16, 32)
    x ratios (0.5, 1, 2); RPN 256 samples, IoU 0.7 / 0.3; proposals 12000 -> 2000
    (train), 6000 -> 300 (test), NMS 0.7, min size 16 original-image pixels, anchors
    crossing the image border ignored; RoI 128 samples, 25% foreground at IoU 0.5;
    deltas normalised by stds (0.1, 0.1, 0.2, 0.2), smooth L1 (sigma 1) box loss;
    inference score threshold 0.05, per-class NMS 0.3, 100 detections.
    """

    num_classes: int  # object classes, without background
    backbone: str = "vgg16"
    # Keyword arguments of the backbone's factory (e.g. the small net's {"widths": (32, 64)}).
    backbone_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dtype: Dtype = jnp.float32
    image_normalization: str = "caffe"
    anchor_options: AnchorOptions = AnchorOptions()
    rpn_options: RPNOptions = RPNOptions()
    roi_options: RoIOptions = RoIOptions()
    test_options: TestOptions = TestOptions()

    @property
    def is_fpn(self) -> bool:
        """A pyramid (several feature maps): one anchor size per level, multi-level RoIAlign."""
        return len(self._strides()) > 1

    @property
    def anchors_per_position(self) -> int:
        ratios = len(self.anchor_options.ratios)
        return ratios if self.is_fpn else ratios * len(self.anchor_options.sizes)

    def setup(self):
        self.body = self._make_body()
        self.rpn = RPNHead(
            self.anchors_per_position, channels=self.rpn_options.channels, dtype=self.dtype
        )
        self.head = RoIHead(
            self.num_classes + 1,
            hidden=tuple(self.roi_options.hidden),
            conv_channels=tuple(self.roi_options.conv_channels),
            norm=self.roi_options.norm or None,
            dtype=self.dtype,
        )

    def _make_body(self, **kwargs) -> nn.Module:
        factory = backbones.get_spec(self.backbone).factory
        return factory(dtype=self.dtype, **dict(self.backbone_options), **kwargs)

    def _strides(self) -> tuple[int, ...]:
        return tuple(self._make_body(parent=None).strides)

    def anchors_for_shapes(self, feature_shapes) -> jnp.ndarray:
        """float32 ``[A, 4]`` anchors for feature maps of the given (h, w), in the RPN's order."""
        strides = self._strides()
        shapes = [tuple(int(d) for d in shape) for shape in feature_shapes]
        sizes, ratios = tuple(self.anchor_options.sizes), tuple(self.anchor_options.ratios)
        if self.is_fpn:
            if len(sizes) != len(strides):
                raise ValueError(
                    f"model.anchors.sizes={sizes} but backbone {self.backbone!r} has "
                    f"{len(strides)} pyramid levels (strides {strides}): give one size per "
                    "level, e.g. (32.0, 64.0, 128.0, 256.0, 512.0)"
                )
            anchors = anchors_lib.pyramid_anchors(
                shapes, strides=strides, sizes=sizes, ratios=ratios
            )
        else:
            base = anchors_lib.anchor_base(
                base_size=strides[0], ratios=ratios, scales=tuple(s / strides[0] for s in sizes)
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
            images, image_sizes, normalization=self.image_normalization, dtype=self.dtype
        )
        features = self.body(x, image_sizes)
        rpn_logits, rpn_deltas = self.rpn(features)
        return features, rpn_logits, rpn_deltas

    def _pool(self, features, rois):
        """RoI features ``[B, R, p, p, C]`` of rois ``[B, R, 4]`` (no gradient to coordinates)."""
        rois = jax.lax.stop_gradient(rois)
        p, op = self.roi_options.output_size, self.roi_options.op
        if self.is_fpn:
            fn = functools.partial(
                roi_ops.multilevel_roi_align,
                output_size=p,
                canonical_size=self.roi_options.canonical_size,
                canonical_level=self.roi_options.canonical_level,
            )
            return _per_image(fn, features[:4], rois)
        scale = 1.0 / self._strides()[0]
        if op == "pool":
            fn = functools.partial(roi_ops.roi_pool, output_size=p, spatial_scale=scale)
        elif op == "align":
            fn = functools.partial(roi_ops.roi_align, output_size=p, spatial_scale=scale)
        else:
            raise ValueError(f"model.roi.op={op!r}; choose 'pool' or 'align'")
        return _per_image(fn, features[0], rois)

    def _min_sizes(self, image_sizes, scales):
        """float32 ``[B, 2]`` minimum proposal (height, width) in resized pixels."""
        rpn = self.rpn_options
        if rpn.min_size_units not in ("original", "resized"):
            raise ValueError(
                f"model.rpn.min_size_units={rpn.min_size_units!r}; choose 'original' or 'resized'"
            )
        min_size = jnp.full(image_sizes.shape, rpn.min_size, jnp.float32)  # [B, 2]
        if rpn.min_size_units == "original" and scales is not None:
            min_size = min_size * jnp.asarray(scales, jnp.float32)  # the seed's min_size * scale
        return min_size

    def _propose(
        self, features, rpn_logits, rpn_deltas, anchors, image_sizes, scales, *, pre, post
    ):
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
            nms_iou=self.rpn_options.nms_iou,
            level_sizes=level_sizes,
        )

        def one_image(logits, deltas, image_size, min_size):
            return fn(logits, deltas, anchors, image_size, min_size=min_size)

        return jax.vmap(one_image)(
            jax.lax.stop_gradient(rpn_logits),
            jax.lax.stop_gradient(rpn_deltas),
            image_sizes,
            self._min_sizes(image_sizes, scales),
        )

    def __call__(self, images, image_sizes, gt_boxes, gt_classes, gt_mask, *, keys, scales=None):
        """Training losses.

        Args:
          images: uint8 ``[B, Hb, Wb, 3]`` RGB, zero padded.
          image_sizes: int32 ``[B, 2]`` (height, width) inside the padding.
          gt_boxes: float32 ``[B, G, 4]`` (ymin, xmin, ymax, xmax) pixels.
          gt_classes: int32 ``[B, G]`` 0-based class ids.
          gt_mask: bool ``[B, G]``, False for padding (and excluded boxes).
          keys: ``[B]`` PRNG keys, one per image, for anchor and roi sampling.
          scales: float32 ``[B, 2]`` resize factors (sy, sx), resized = original * scale, for
            the minimum proposal size in original pixels; None: 1 (the batch is unresized).

        Returns:
          ``(losses, aux)``: losses ``{"rpn_cls", "rpn_box", "roi_cls", "roi_box",
          "total"}`` float32 scalars; aux holds sampling statistics.
        """
        batch = images.shape[0]
        features, rpn_logits, rpn_deltas = self._features(images, image_sizes)
        anchors = self.anchors_for_shapes([f.shape[1:3] for f in features])
        split_keys = jax.vmap(jax.random.split)(keys)  # [B, 2]
        anchor_keys, roi_keys = split_keys[:, 0], split_keys[:, 1]

        rpn, roi = self.rpn_options, self.roi_options
        anchor_fn = functools.partial(
            targets_lib.anchor_targets,
            num_samples=rpn.num_samples,
            positive_fraction=rpn.positive_fraction,
            positive_iou=rpn.positive_iou,
            negative_iou=rpn.negative_iou,
            border_rule=rpn.border_rule,
        )
        rpn_labels, rpn_gt_deltas = jax.vmap(anchor_fn, in_axes=(0, None, 0, 0, 0))(
            anchor_keys, anchors, gt_boxes, gt_mask, image_sizes
        )
        losses = loss_lib.rpn_losses(
            pred_logits=rpn_logits,
            pred_deltas=rpn_deltas,
            gt_labels=rpn_labels,
            gt_deltas=rpn_gt_deltas,
            sigma=3.0,
        )

        rois, roi_mask = self._propose(
            features,
            rpn_logits,
            rpn_deltas,
            anchors,
            image_sizes,
            scales,
            pre=rpn.pre_nms_top_n,
            post=rpn.post_nms_top_n,
        )
        sample_fn = functools.partial(
            targets_lib.proposal_targets,
            num_samples=roi.num_samples,
            positive_fraction=roi.positive_fraction,
            positive_iou=roi.positive_iou,
            negative_iou=tuple(roi.negative_iou),
            delta_stds=tuple(roi.delta_stds),
        )
        sample_rois, sample_classes, sample_deltas, sample_mask = jax.vmap(sample_fn)(
            roi_keys, rois, roi_mask, gt_boxes, gt_classes, gt_mask
        )
        cls_logits, box_deltas = self.head(self._pool(features, sample_rois))
        losses.update(
            loss_lib.roi_losses(
                pred_logits=cls_logits,
                pred_deltas=box_deltas,
                gt_classes=sample_classes,
                gt_deltas=sample_deltas,
                mask=sample_mask,
                beta=roi.box_loss_beta,
            )
        )
        losses["total"] = loss_lib.total_loss(losses)
        aux = {
            "rpn_positives": (rpn_labels == 1).sum() / batch,
            "roi_foreground": ((sample_classes > 0) & sample_mask).sum() / batch,
            "proposals": roi_mask.sum() / batch,
        }
        return losses, aux

    def _test_rois(self, images, image_sizes, scales):
        """Features and the test-time proposals (``test_options.pre/post_nms_top_n``)."""
        features, rpn_logits, rpn_deltas = self._features(images, image_sizes)
        anchors = self.anchors_for_shapes([f.shape[1:3] for f in features])
        rois, roi_mask = self._propose(
            features,
            rpn_logits,
            rpn_deltas,
            anchors,
            image_sizes,
            scales,
            pre=self.test_options.pre_nms_top_n,
            post=self.test_options.post_nms_top_n,
        )
        return features, rois, roi_mask

    def proposals(self, images, image_sizes, scales=None):
        """Test-time RPN proposals: rois ``[B, P, 4]`` best first, roi_mask ``[B, P]``."""
        _, rois, roi_mask = self._test_rois(images, image_sizes, scales)
        return rois, roi_mask

    def detect(self, images, image_sizes, scales=None):
        """Inference: padded detections in the (resized) input image's pixels.

        Args:
          images: uint8 ``[B, Hb, Wb, 3]``; image_sizes: int32 ``[B, 2]``; scales: float32
            ``[B, 2]`` resize factors (the batch's "scales"; None: 1), for the minimum
            proposal size in original pixels.

        Returns:
          dict of ``boxes`` float32 ``[B, D, 4]`` (ymin, xmin, ymax, xmax),
          ``scores`` float32 ``[B, D]``, ``classes`` int32 ``[B, D]`` 0-based,
          ``valid`` bool ``[B, D]``; D = test_options.max_detections, sorted by score.
        """
        features, rois, roi_mask = self._test_rois(images, image_sizes, scales)
        cls_logits, box_deltas = self.head(self._pool(features, rois))
        test = self.test_options
        fn = functools.partial(
            detections_lib.detections,
            delta_stds=tuple(self.roi_options.delta_stds),
            score_threshold=test.score_threshold,
            nms_iou=test.nms_iou,
            max_detections=test.max_detections,
        )
        return jax.vmap(fn)(cls_logits, box_deltas, rois, roi_mask, image_sizes)

    def initialize(self, images, image_sizes):
        """Touches every submodule once (for ``init``) without any target assignment."""
        features, _, _ = self._features(images, image_sizes)
        rois = jnp.zeros((images.shape[0], 1, 4), jnp.float32)
        return self.head(self._pool(features, rois))


def _per_image(fn, features, rois):
    """``fn(features_i, rois_i)`` stacked over the batch. On CPU one image after another
    (``lax.map``): vmapped RoI ops do not scale with the batch there (batch 8 ran at 34 ms per
    image against 15 mapped; benchmarks/RESULTS.md); accelerators vmap (no serial loop). A
    symbolic batch (export with a batch-polymorphic signature) vmaps everywhere: a scan needs
    a known length."""
    if not isinstance(rois.shape[0], int):
        return jax.vmap(fn)(features, rois)

    def mapped(features, rois):
        return jax.lax.map(lambda args: fn(*args), (features, rois))

    return jax.lax.platform_dependent(features, rois, cpu=mapped, default=jax.vmap(fn))
