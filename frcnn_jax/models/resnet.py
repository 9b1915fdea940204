"""ResNet bodies (torchvision's v1.5, BasicBlock and Bottleneck) and the FPN on top of them.

Shape shorthand: B batch, H, W image height and width, C channels.

Parameter names follow torchvision's state_dict (``layer2_0/conv1`` for ``layer2.0.conv1``,
``bn1`` for ``bn1`` whatever the norm) so that ``frcnn_jax.convert_weights`` maps ImageNet
weights one to one. Normalisation (``norm``): frozen batch norm for ImageNet weights (scale,
bias, mean and variance in the non-trainable ``"frozen"`` collection: a fixed affine map,
whatever the batch size), or trainable GroupNorm for training from scratch (He et al. 2019,
"Rethinking ImageNet Pre-training"), whose statistics cover only the cells that see the image
when the backbone is given ``image_sizes`` (``MaskedGroupNorm``: the zero padding of a batch
changes nothing). Which layers are frozen follows ``freeze_at``
(detectron2's FREEZE_AT); the gradient is stopped there and ``frozen_prefixes`` names the
parameters the optimizer must leave alone.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from frcnn_jax.models.conv import Conv
from frcnn_jax.models.conv import torch_padding as _pad

Dtype = Any

# torchvision's FrozenBatchNorm2d epsilon.
BN_EPSILON = 1e-5


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics and affine parameters (torchvision's FrozenBatchNorm2d)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
        del mask  # a per-cell affine map: the padding does not change the image's cells
        c = x.shape[-1]
        scale = self.variable("frozen", "scale", jnp.ones, (c,), jnp.float32).value
        bias = self.variable("frozen", "bias", jnp.zeros, (c,), jnp.float32).value
        mean = self.variable("frozen", "mean", jnp.zeros, (c,), jnp.float32).value
        var = self.variable("frozen", "var", jnp.ones, (c,), jnp.float32).value
        mult = scale * jax.lax.rsqrt(var + BN_EPSILON)
        return x * mult.astype(self.dtype) + (bias - mean * mult).astype(self.dtype)


NORMS = ("frozen_bn", "group_norm")
# GroupNorm groups (Wu & He 2018; detectron2's and torchvision's choice for GN backbones).
GN_GROUPS = 32


def padding_mask(valid, x: jnp.ndarray) -> jnp.ndarray | None:
    """float32 ``[B, h, w, 1]``: 1 on the cells of feature map ``x`` that see the image.

    ``valid``: None (no mask) or (image_sizes int ``[B, 2]``, (H, W) of the padded input).
    A map of h rows over an input of H rows has stride H / h, and its first
    ``ceil(image height * h / H)`` rows see the image (``ceil(height / stride)`` for the
    multiple-of-32 buckets), and likewise for columns.
    """
    if valid is None:
        return None
    image_sizes, (height, width) = valid
    h, w = x.shape[1:3]
    sizes = jnp.asarray(image_sizes, jnp.int32)
    rows = -(-sizes[:, 0] * h // height)  # ceil, in integers
    cols = -(-sizes[:, 1] * w // width)
    inside = (jnp.arange(h)[None, :, None] < rows[:, None, None]) & (
        jnp.arange(w)[None, None, :] < cols[:, None, None]
    )
    return inside[..., None].astype(jnp.float32)


class MaskedGroupNorm(nn.Module):
    """GroupNorm (Wu & He 2018) whose statistics cover only the cells under ``mask``.

    Without a mask it is ``flax.linen.GroupNorm`` (same parameters "scale" and "bias", same
    result). With ``mask`` ``[B, H, W, 1]`` (``padding_mask``) each image's group mean and
    variance are those of its own pixels, not of the batch's zero padding, and the output is
    zero in the padding, so that the next layers see the padding as zeros again: an image
    gives the same features in any padded canvas (a fixed-size export, another bucket).
    """

    num_groups: int
    epsilon: float = BN_EPSILON
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {c} channels are not divisible by {self.num_groups}")
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        b, per_group = x.shape[0], c // self.num_groups
        if mask is None:
            count = jnp.full((b, 1), x.shape[1] * x.shape[2] * per_group, jnp.float32)
        else:
            count = jnp.maximum(mask.sum(axis=(1, 2, 3))[:, None] * per_group, 1.0)  # [B, 1]

        def group_mean(v):
            # The mean over each image's (unmasked) cells and its group's channels, as [B, 1,
            # 1, C]: summed over H, W with the channels as the minor axis first (one pass that
            # XLA:CPU vectorises; reducing a [B, H, W, G, C / G] view over (1, 2, 4) ran the
            # whole train step of configs/custom.py 4% slower), then over each group's channels.
            sums = (v if mask is None else v * mask).sum(axis=(1, 2))  # [B, C]
            means = sums.reshape(b, self.num_groups, per_group).sum(-1) / count  # [B, G]
            return jnp.repeat(means, per_group, axis=1)[:, None, None, :]

        xf = x.astype(jnp.float32)
        centred = xf - group_mean(xf)
        var = group_mean(jnp.square(centred))  # two passes: no E[x^2] - E[x]^2 cancellation
        y = centred * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
        if mask is not None:
            y = y * mask
        return y.astype(self.dtype)


def group_norm(channels: int, *, dtype: Dtype, name: str) -> MaskedGroupNorm:
    """Trainable GroupNorm: 32 groups, or 2 channels per group below 64 channels (the narrow
    nets of ``width`` < 64), epsilon as torchvision's."""
    groups = min(GN_GROUPS, max(channels // 2, 1))
    return MaskedGroupNorm(num_groups=groups, epsilon=BN_EPSILON, dtype=dtype, name=name)


def _norm_layer(norm: str, dtype: Dtype, name: str, channels: int) -> nn.Module:
    """FrozenBatchNorm (ImageNet weights) or trainable GroupNorm (from scratch): 32 groups, or
    2 channels per group below 64 channels (the narrow nets of ``width`` < 64). Either is
    called as ``norm(x, mask)``; frozen batch norm, a per-cell affine map, ignores the mask."""
    if norm == "frozen_bn":
        return FrozenBatchNorm(dtype=dtype, name=name)
    if norm == "group_norm":
        return group_norm(channels, dtype=dtype, name=name)
    raise ValueError(f"model.backbone_options norm={norm!r}; choose one of {NORMS}")


# torchvision's and detectron2's ResNet initialisation (kaiming_normal_, fan_out, ReLU gain):
# what a network trained from scratch starts from; ImageNet weights replace it.
_RESNET_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 conv); output 4 x features."""

    features: int
    strides: int = 1
    downsample: bool = False
    norm: str = "frozen_bn"
    dtype: Dtype = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, valid=None) -> jnp.ndarray:
        """``valid``: see ``padding_mask`` (None: GroupNorm over the whole canvas)."""
        conv = functools.partial(
            Conv, use_bias=False, kernel_init=_RESNET_CONV_INIT, dtype=self.dtype
        )

        def norm(name, channels, y):
            return _norm_layer(self.norm, self.dtype, name, channels)(y, padding_mask(valid, y))

        out = self.features * 4
        y = nn.relu(norm("bn1", self.features, conv(self.features, (1, 1), name="conv1")(x)))
        y = conv(self.features, (3, 3), strides=self.strides, padding=_pad(3), name="conv2")(y)
        y = nn.relu(norm("bn2", self.features, y))
        y = norm("bn3", out, conv(out, (1, 1), name="conv3")(y))
        if self.downsample:
            x = conv(out, (1, 1), strides=self.strides, name="downsample_conv")(x)
            x = norm("downsample_bn", out, x)
        return nn.relu(x + y)


class BasicBlock(nn.Module):
    """torchvision's ResNet-18/34 block: two 3x3 convs (stride on the first); output = features."""

    features: int
    strides: int = 1
    downsample: bool = False
    norm: str = "frozen_bn"
    dtype: Dtype = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, valid=None) -> jnp.ndarray:
        """``valid``: see ``padding_mask`` (None: GroupNorm over the whole canvas)."""
        conv = functools.partial(
            Conv, use_bias=False, padding=_pad(3), kernel_init=_RESNET_CONV_INIT, dtype=self.dtype
        )

        def norm(name, y):
            layer = _norm_layer(self.norm, self.dtype, name, channels=self.features)
            return layer(y, padding_mask(valid, y))

        y = conv(self.features, (3, 3), strides=self.strides, name="conv1")(x)
        y = nn.relu(norm("bn1", y))
        y = norm("bn2", conv(self.features, (3, 3), name="conv2")(y))
        if self.downsample:
            x = Conv(
                self.features,
                (1, 1),
                strides=self.strides,
                use_bias=False,
                kernel_init=_RESNET_CONV_INIT,
                dtype=self.dtype,
                name="downsample_conv",
            )(x)
            x = norm("downsample_bn", x)
        return nn.relu(x + y)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def resnet_frozen_prefixes(freeze_at: int) -> tuple[str, ...]:
    """Parameter prefixes of a ResNet body frozen at ``freeze_at`` (detectron2's FREEZE_AT):
    0 nothing, 1 the stem (conv1, bn1), k >= 2 the stem and layer1 .. layer{k - 1}."""
    if not 0 <= freeze_at <= 5:
        raise ValueError(f"model.backbone_options freeze_at={freeze_at}; choose 0..5")
    stem = ("conv1", "bn1") if freeze_at >= 1 else ()
    return stem + tuple(f"layer{i}_" for i in range(1, freeze_at))


class ResNet(nn.Module):
    """ResNet body: C2..C5 at strides 4..32.

    norm: "frozen_bn" (torchvision's FrozenBatchNorm2d: ImageNet statistics, a fixed affine
      map) or "group_norm" (trainable GroupNorm(32), for training from scratch as in He et al.
      2019, "Rethinking ImageNet Pre-training"). Module names stay torchvision's ("bn1")
      whatever the norm, as torchvision's ``norm_layer=`` keeps them.
    freeze_at: detectron2's FREEZE_AT: gradients stop after the stem (1) or after layer{k-1}
      (k >= 2), and those parameters are never updated (``frozen_prefixes``); 0 trains
      everything. None: 2 with "frozen_bn" (the stem and layer1, as torchvision and
      detectron2 fine-tune ImageNet weights), 0 with "group_norm" (detectron2's scratch GN
      recipe: a network that starts random has nothing worth freezing).
    width: channels of the stem and layer1 (64: torchvision's); layer k has width x 2^(k-1)
      (x4 for bottlenecks). 32 makes a ResNet-18 about 4x cheaper, for CPUs; only 64 takes
      ImageNet weights.
    """

    stage_sizes: Sequence[int]
    block: str = "bottleneck"
    norm: str = "frozen_bn"
    freeze_at: int | None = None
    width: int = 64
    dtype: Dtype = jnp.float32

    @property
    def frozen_at(self) -> int:
        if self.freeze_at is not None:
            return int(self.freeze_at)
        return 2 if self.norm == "frozen_bn" else 0

    @property
    def frozen_prefixes(self) -> tuple[str, ...]:
        return resnet_frozen_prefixes(self.frozen_at)

    @nn.compact
    def __call__(self, x: jnp.ndarray, image_sizes=None) -> list[jnp.ndarray]:
        """C2..C5 of ``x`` ``[B, H, W, 3]``; ``image_sizes`` int ``[B, 2]`` (the unpadded (h, w)
        of each image): GroupNorm statistics over those pixels only (``MaskedGroupNorm``)."""
        valid = None if image_sizes is None else (image_sizes, x.shape[1:3])
        if self.block not in BLOCKS:
            raise ValueError(f"ResNet block={self.block!r}; choose one of {sorted(BLOCKS)}")
        block_class = BLOCKS[self.block]
        freeze_at = self.frozen_at
        resnet_frozen_prefixes(freeze_at)  # validates
        x = Conv(
            self.width,
            (7, 7),
            strides=2,
            padding=_pad(7),
            use_bias=False,
            kernel_init=_RESNET_CONV_INIT,
            dtype=self.dtype,
            name="conv1",
        )(x)
        x = nn.relu(
            _norm_layer(self.norm, self.dtype, "bn1", self.width)(x, padding_mask(valid, x))
        )
        # Zero padding is max_pool's -inf padding here: the ReLU leaves nothing below 0.
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
        if freeze_at == 1:
            x = jax.lax.stop_gradient(x)
        outputs = []
        in_features = self.width
        for stage, num_blocks in enumerate(self.stage_sizes):
            features = self.width * 2**stage
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = block_class(
                    features,
                    strides=strides,
                    # torchvision: a projection wherever the shape changes (every first block
                    # of a bottleneck ResNet; not layer1_0 of ResNet-18/34).
                    downsample=strides != 1 or in_features != features * block_class.expansion,
                    norm=self.norm,
                    dtype=self.dtype,
                    name=f"layer{stage + 1}_{block}",
                )(x, valid)
                in_features = features * block_class.expansion
            if stage + 2 == freeze_at:
                x = jax.lax.stop_gradient(x)
            outputs.append(x)
        return outputs


def _upsample_to(x: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    """Nearest 2x upsampling cropped to (height, width) (torchvision's FPN top-down path)."""
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return x[:, :height, :width]


class FPN(nn.Module):
    """Feature pyramid (Lin et al. 2017) over C2..C5: P2..P5 plus P6 = max_pool(P5, 1, stride 2).

    norm: None (torchvision: convs with biases) or "group_norm" (detectron2's FPN.NORM="GN":
    each lateral and output conv without bias, then GroupNorm(32), named ``<conv>_norm``).
    """

    channels: int = 256
    norm: str | None = None
    dtype: Dtype = jnp.float32

    def _conv(self, kernel: int, name: str):
        conv = Conv(
            self.channels,
            (kernel, kernel),
            padding=_pad(kernel),
            use_bias=self.norm is None,
            dtype=self.dtype,
            name=name,
        )
        if self.norm is None:
            return lambda x, valid: conv(x)
        norm = _norm_layer(self.norm, self.dtype, f"{name}_norm", self.channels)

        def conv_norm(x, valid):
            y = conv(x)
            return norm(y, padding_mask(valid, y))

        return conv_norm

    @nn.compact
    def __call__(self, inputs: Sequence[jnp.ndarray], valid=None) -> list[jnp.ndarray]:
        """P2..P6 of C2..C5; ``valid``: see ``padding_mask`` (for the GroupNorm-ed convs)."""
        laterals = [self._conv(1, f"inner{i}")(c, valid) for i, c in enumerate(inputs)]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            merged.insert(0, lateral + _upsample_to(merged[0], lateral.shape[1], lateral.shape[2]))
        outputs = [self._conv(3, f"layer{i}")(m, valid) for i, m in enumerate(merged)]
        outputs.append(outputs[-1][:, ::2, ::2])  # P6: torchvision's LastLevelMaxPool (kernel 1)
        return outputs


class ResNetFPN(nn.Module):
    """ResNet + FPN: P2..P6 at strides 4..64, C = ``channels`` (256 as the references).

    block, norm, freeze_at, width: the ResNet's (see ``ResNet``). With norm="group_norm" the FPN
    convs are GroupNorm-ed too (detectron2's scratch recipe); with "frozen_bn" it has none.
    channels: the pyramid's width; 128 quarters the cost of the FPN and RPN convs (most of a
    ResNet-18-FPN's work at P2) for CPU training (a multiple of 32 with GroupNorm).
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    block: str = "bottleneck"
    norm: str = "frozen_bn"
    freeze_at: int | None = None
    width: int = 64
    channels: int = 256
    dtype: Dtype = jnp.float32
    strides = (4, 8, 16, 32, 64)

    def _resnet(self, **kwargs) -> ResNet:
        return ResNet(
            self.stage_sizes,
            block=self.block,
            norm=self.norm,
            freeze_at=self.freeze_at,
            width=self.width,
            dtype=self.dtype,
            **kwargs,
        )

    @property
    def frozen_prefixes(self) -> tuple[str, ...]:
        return tuple(f"body/{p}" for p in self._resnet(parent=None).frozen_prefixes)

    @nn.compact
    def __call__(self, x: jnp.ndarray, image_sizes=None) -> list[jnp.ndarray]:
        """P2..P6 of ``x`` ``[B, H, W, 3]``; ``image_sizes``: as ``ResNet``'s."""
        if self.norm not in NORMS:
            raise ValueError(f"model.backbone_options norm={self.norm!r}; choose one of {NORMS}")
        body = self._resnet(name="body")(x, image_sizes)
        fpn_norm = None if self.norm == "frozen_bn" else self.norm
        valid = None if image_sizes is None else (image_sizes, x.shape[1:3])
        return FPN(self.channels, norm=fpn_norm, dtype=self.dtype, name="fpn")(body, valid)
