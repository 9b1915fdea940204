"""RPN and RoI heads.

Shape shorthand: B batch, h, w feature map size, A anchors (all levels, in
``frcnn_jax.anchors`` order: level, then position, then anchor), S rois per
image, K classes including background, C channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from frcnn_jax.models.conv import Conv
from frcnn_jax.models.resnet import group_norm

# detectron2's c2_msra_fill for the head convs (kaiming normal, fan_out, ReLU gain).
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

Dtype = Any


class RPNHead(nn.Module):
    """3x3 conv (ReLU) then 1x1 convs for objectness and box deltas, shared across levels.

    Objectness is one sigmoid logit per anchor rather than the seed's two
    softmax logits: a two-way softmax depends only on the difference of its
    logits, so both are the same model, and one logit halves the layer
    (torchvision and detectron2 make the same choice).
    """

    num_anchors: int
    channels: int = 512
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: Sequence[jnp.ndarray]) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Objectness logits ``[B, A]``, deltas ``[B, A, 4]`` (float32, levels concatenated)."""
        init = nn.initializers.normal(0.01)  # the seed's normal_init(std=0.01) for all RPN convs
        conv = Conv(
            self.channels,
            (3, 3),
            padding=((1, 1), (1, 1)),
            kernel_init=init,
            dtype=self.dtype,
            name="conv",
        )
        cls = Conv(self.num_anchors, (1, 1), kernel_init=init, dtype=self.dtype, name="objectness")
        box = Conv(self.num_anchors * 4, (1, 1), kernel_init=init, dtype=self.dtype, name="deltas")
        all_logits, all_deltas = [], []
        for x in features:
            x = nn.relu(conv(x))
            b = x.shape[0]
            all_logits.append(cls(x).reshape(b, -1))  # [B, h * w * anchors]
            all_deltas.append(box(x).reshape(b, -1, 4))  # [B, h * w * anchors, 4]
        logits = jnp.concatenate(all_logits, axis=1).astype(jnp.float32)
        deltas = jnp.concatenate(all_deltas, axis=1).astype(jnp.float32)
        return logits, deltas


class RoIHead(nn.Module):
    """Pooled rois -> [3x3 convs] -> flatten -> fc layers (ReLU) -> class logits and
    per-class box deltas.

    With ``hidden=(4096, 4096)`` the fc layers are VGG16's fc6/fc7 (so ImageNet
    weights can initialise them); ResNet-FPN uses torchvision's TwoMLPHead
    ``(1024, 1024)``. ``conv_channels`` puts 3x3 convolutions (ReLU, optionally
    GroupNorm-ed) on the ``p x p`` pooled features first: detectron2's
    FastRCNNConvFCHead ("4conv1fc": four 256-channel convs with GN, then one fc of
    1024), whose convs see the roi's layout where an fc on flattened features must
    learn every position and rotation of a shape on its own.
    """

    num_classes: int  # K, including background
    hidden: Sequence[int] = (4096, 4096)
    conv_channels: Sequence[int] = ()
    norm: str | None = None  # None or "group_norm" (after each conv, before its ReLU)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, roi_features: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``[..., S, p, p, C]`` -> logits ``[..., S, K]``, deltas ``[..., S, K, 4]`` (float32)."""
        if self.norm not in (None, "group_norm"):
            raise ValueError(f"model.roi.norm={self.norm!r}; choose '' or 'group_norm'")
        x = roi_features
        if self.conv_channels:
            lead, cell = x.shape[:-3], x.shape[-3:]
            x = x.reshape(-1, *cell)  # [N, p, p, C]
            for i, channels in enumerate(self.conv_channels):
                x = Conv(
                    channels,
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    use_bias=self.norm is None,
                    kernel_init=_KAIMING_FAN_OUT,
                    dtype=self.dtype,
                    name=f"conv{i + 1}",
                )(x)
                if self.norm == "group_norm":  # per roi: no padding to mask
                    x = group_norm(channels, dtype=self.dtype, name=f"conv{i + 1}_norm")(x)
                x = nn.relu(x)
            x = x.reshape(*lead, *x.shape[1:])
        x = x.reshape(*x.shape[:-3], -1)
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f"fc{6 + i}")(x))
        # The seed's init: normal std 0.01 for classification, 0.001 for box regression.
        logits = nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.normal(0.01),
            dtype=self.dtype,
            name="cls_score",
        )(x)
        deltas = nn.Dense(
            self.num_classes * 4,
            kernel_init=nn.initializers.normal(0.001),
            dtype=self.dtype,
            name="bbox_pred",
        )(x)
        deltas = deltas.reshape(*deltas.shape[:-1], self.num_classes, 4)
        return logits.astype(jnp.float32), deltas.astype(jnp.float32)
