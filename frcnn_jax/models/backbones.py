"""Backbones: VGG16 (stride 16), ResNet-18/34/50/101 + FPN (P2..P6), a small CPU net.

Shape shorthand: B batch, H, W image height and width, C channels.

Every backbone maps normalised images ``[B, H, W, 3]`` to a list of feature
maps ``[B, H / s, W / s, C]``, finest first, and has a class attribute
``strides`` giving ``s`` for each. Parameter names follow torchvision's
state_dict (``conv1_1`` for ``features.0``, ``layer2_0/conv1`` for
``layer2.0.conv1``) so that ``frcnn_jax.convert_weights`` can map ImageNet
weights one to one.

Frozen layers, as every reference implementation fine-tunes ImageNet weights
(simple-faster-rcnn-pytorch freezes VGG16's conv1_1..conv2_2; torchvision and
detectron2 freeze the ResNet stem and first stage and all batch norms): gradients
are stopped at their output, and the module's ``frozen_prefixes`` mark their
parameters so that the optimizer neither updates nor decays them. Frozen batch
norm keeps its scale, bias, mean and variance in the non-trainable ``"frozen"``
collection and is a fixed affine map, whatever the batch size. ResNets trained
from scratch take ``backbone_options={"norm": "group_norm"}`` instead: trainable
GroupNorm and nothing frozen (``ResNet``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from frcnn_jax.models.conv import Conv

Dtype = Any

# torchvision's FrozenBatchNorm2d epsilon.
BN_EPSILON = 1e-5


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit symmetric padding k // 2, as PyTorch's ``padding=k // 2``.

    ``"SAME"`` pads stride-2 convolutions asymmetrically (more at the end),
    which would break the one-to-one match with torchvision weights.
    """
    return ((k // 2, k // 2), (k // 2, k // 2))


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics and affine parameters (torchvision's FrozenBatchNorm2d)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c = x.shape[-1]
        scale = self.variable("frozen", "scale", jnp.ones, (c,), jnp.float32).value
        bias = self.variable("frozen", "bias", jnp.zeros, (c,), jnp.float32).value
        mean = self.variable("frozen", "mean", jnp.zeros, (c,), jnp.float32).value
        var = self.variable("frozen", "var", jnp.ones, (c,), jnp.float32).value
        mult = scale * jax.lax.rsqrt(var + BN_EPSILON)
        return x * mult.astype(self.dtype) + (bias - mean * mult).astype(self.dtype)


class VGG16(nn.Module):
    """VGG16 conv1_1..conv5_3 without the last max pool: one map at stride 16, C = 512."""

    dtype: Dtype = jnp.float32
    num_frozen_convs: int = 4  # conv1_1 .. conv2_2, as the seed (Caffe lr 0)
    strides = (16,)
    channels = 512
    _blocks = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))

    @property
    def frozen_prefixes(self) -> tuple[str, ...]:
        names = [
            f"conv{block}_{i + 1}" for block, repeats, _ in self._blocks for i in range(repeats)
        ]
        return tuple(names[: self.num_frozen_convs])

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
        count = 0
        for block, repeats, features in self._blocks:
            for i in range(repeats):
                x = Conv(
                    features, (3, 3), padding=_pad(3), dtype=self.dtype, name=f"conv{block}_{i + 1}"
                )(x)
                x = nn.relu(x)
                count += 1
                if count == self.num_frozen_convs:
                    x = jax.lax.stop_gradient(x)
            if block < 5:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return [x]


# Normalisation layers of the ResNet backbones (``backbone_options={"norm": ...}``).
NORMS = ("frozen_bn", "group_norm")
# GroupNorm groups (Wu & He 2018; detectron2's and torchvision's choice for GN backbones).
GN_GROUPS = 32


def _norm_layer(norm: str, dtype: Dtype, name: str, channels: int) -> nn.Module:
    """FrozenBatchNorm (ImageNet weights) or trainable GroupNorm (from scratch): 32 groups, or
    2 channels per group below 64 channels (the narrow nets of ``width`` < 64)."""
    if norm == "frozen_bn":
        return FrozenBatchNorm(dtype=dtype, name=name)
    if norm == "group_norm":
        groups = min(GN_GROUPS, max(channels // 2, 1))
        return nn.GroupNorm(num_groups=groups, epsilon=BN_EPSILON, dtype=dtype, name=name)
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
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = functools.partial(
            Conv, use_bias=False, kernel_init=_RESNET_CONV_INIT, dtype=self.dtype
        )
        norm = functools.partial(_norm_layer, self.norm, self.dtype)
        out = self.features * 4
        y = nn.relu(norm("bn1", self.features)(conv(self.features, (1, 1), name="conv1")(x)))
        y = conv(self.features, (3, 3), strides=self.strides, padding=_pad(3), name="conv2")(y)
        y = nn.relu(norm("bn2", self.features)(y))
        y = norm("bn3", out)(conv(out, (1, 1), name="conv3")(y))
        if self.downsample:
            x = conv(out, (1, 1), strides=self.strides, name="downsample_conv")(x)
            x = norm("downsample_bn", out)(x)
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
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = functools.partial(
            Conv, use_bias=False, padding=_pad(3), kernel_init=_RESNET_CONV_INIT, dtype=self.dtype
        )
        norm = functools.partial(_norm_layer, self.norm, self.dtype, channels=self.features)
        y = conv(self.features, (3, 3), strides=self.strides, name="conv1")(x)
        y = nn.relu(norm("bn1")(y))
        y = norm("bn2")(conv(self.features, (3, 3), name="conv2")(y))
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
            x = norm("downsample_bn")(x)
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
    def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
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
        x = nn.relu(_norm_layer(self.norm, self.dtype, "bn1", self.width)(x))
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
                )(x)
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
            return conv
        norm = _norm_layer(self.norm, self.dtype, f"{name}_norm", self.channels)
        return lambda x: norm(conv(x))

    @nn.compact
    def __call__(self, inputs: Sequence[jnp.ndarray]) -> list[jnp.ndarray]:
        laterals = [self._conv(1, f"inner{i}")(c) for i, c in enumerate(inputs)]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            merged.insert(0, lateral + _upsample_to(merged[0], lateral.shape[1], lateral.shape[2]))
        outputs = [self._conv(3, f"layer{i}")(m) for i, m in enumerate(merged)]
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
    def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
        if self.norm not in NORMS:
            raise ValueError(f"model.backbone_options norm={self.norm!r}; choose one of {NORMS}")
        body = self._resnet(name="body")(x)
        fpn_norm = None if self.norm == "frozen_bn" else self.norm
        return FPN(self.channels, norm=fpn_norm, dtype=self.dtype, name="fpn")(body)


class SmallNet(nn.Module):
    """A small plain conv net for CPU work (the embedded config, tests): stride 2^len(widths).

    Each stage halves the resolution with a strided 3x3 conv, then refines with
    a second 3x3 conv at the lower resolution (cheap: no full-resolution conv).
    """

    widths: Sequence[int] = (32, 64, 96, 128)
    dtype: Dtype = jnp.float32
    frozen_prefixes = ()  # trained from scratch: nothing frozen

    @property
    def strides(self) -> tuple[int, ...]:
        return (2 ** len(self.widths),)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
        if not 2 <= len(self.widths) <= 5:
            raise ValueError(f"SmallNet needs 2..5 widths (strides 4..32), got {self.widths}")
        # He initialisation: trained from scratch, with ReLUs and no normalisation,
        # LeCun's default would shrink activations by half a variance per layer.
        init = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
        for i, width in enumerate(self.widths):
            conv = functools.partial(
                Conv, width, (3, 3), padding=_pad(3), kernel_init=init, dtype=self.dtype
            )
            x = nn.relu(conv(strides=2, name=f"conv{i + 1}_1")(x))
            x = nn.relu(conv(name=f"conv{i + 1}_2")(x))
        return [x]


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """Everything the project knows about one ``config.model.backbone``, in one place.

    factory: builds the Flax module (``factory(dtype=..., **config.model.backbone_options)``);
      the module has ``strides`` (one per output map, finest first), ``frozen_prefixes``
      (parameter paths inside the backbone that the optimizer never updates, next to the
      ``stop_gradient`` that goes with them: both follow the module's options, so freezing
      can be switched off for training from scratch; a prefix ending in "_" matches by string
      prefix: "body/layer1_" is every layer1 block) and returns the maps.
    torchvision_arch: the ``convert_weights --arch`` whose ImageNet file fits; None: none.
    weight_layout: how torchvision's names map to ours ("vgg" or "resnet"; frcnn_jax.weights).
    weight_prefixes: FasterRCNN variables a converted file must fill completely (the FPN, RPN
      and detection layers keep their initialisation).
    """

    factory: Callable[..., nn.Module]
    torchvision_arch: str | None = None
    weight_layout: str | None = None
    weight_prefixes: tuple[str, ...] = ()


_RESNET_WEIGHTS = {
    "weight_layout": "resnet",
    "weight_prefixes": ("params/body/body/", "frozen/body/body/"),
}


def _resnet_fpn(name: str, stage_sizes: tuple[int, ...], block: str) -> BackboneSpec:
    return BackboneSpec(
        functools.partial(ResNetFPN, stage_sizes=stage_sizes, block=block),
        torchvision_arch=name,
        **_RESNET_WEIGHTS,
    )


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        VGG16,
        torchvision_arch="vgg16",
        weight_layout="vgg",
        weight_prefixes=("params/body/",),
    ),
    # ResNet-18/34 (BasicBlock): small enough to train from scratch on a CPU with
    # backbone_options={"norm": "group_norm"}; ImageNet weights with the default frozen_bn.
    "resnet18_fpn": _resnet_fpn("resnet18", (2, 2, 2, 2), "basic"),
    "resnet34_fpn": _resnet_fpn("resnet34", (3, 4, 6, 3), "basic"),
    "resnet50_fpn": _resnet_fpn("resnet50", (3, 4, 6, 3), "bottleneck"),
    "resnet101_fpn": _resnet_fpn("resnet101", (3, 4, 23, 3), "bottleneck"),
    "small": BackboneSpec(SmallNet),
}


def get_spec(backbone: str) -> BackboneSpec:
    """The spec of ``config.model.backbone``; ValueError naming the choices otherwise."""
    if backbone not in BACKBONES:
        raise ValueError(f"model.backbone={backbone!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[backbone]


def by_torchvision_arch() -> dict[str, str]:
    """``{convert_weights --arch: model.backbone}`` of every backbone with ImageNet weights."""
    return {s.torchvision_arch: name for name, s in BACKBONES.items() if s.torchvision_arch}


def frozen_prefixes(backbone: str, options: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """The ``frozen_prefixes`` of ``backbone`` built with ``options`` (backbone_options)."""
    return tuple(get_spec(backbone).factory(**dict(options or {})).frozen_prefixes)


def matches_prefix(path: str, prefixes: Sequence[str]) -> bool:
    """Whether parameter ``path`` lies under one of ``prefixes`` (rule in ``BackboneSpec``)."""
    return any(
        path == p or path.startswith(p + "/") or (p.endswith("_") and path.startswith(p))
        for p in prefixes
    )


def is_frozen_param(backbone: str, path: str, options: Mapping[str, Any] | None = None) -> bool:
    """Whether ``path`` ("conv1_1/kernel", "body/layer1_0/conv1/kernel") is frozen."""
    return matches_prefix(path, frozen_prefixes(backbone, options))
