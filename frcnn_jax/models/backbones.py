"""Backbones: VGG16 (stride 16), ResNet-50/101 + FPN (P2..P6), a small CPU net.

Shape shorthand: B batch, H, W image height and width, C channels.

Every backbone maps normalised images ``[B, H, W, 3]`` to a list of feature
maps ``[B, H / s, W / s, C]``, finest first, and has a class attribute
``strides`` giving ``s`` for each. Parameter names follow torchvision's
state_dict (``conv1_1`` for ``features.0``, ``layer2_0/conv1`` for
``layer2.0.conv1``) so that ``frcnn_jax.convert_weights`` can map ImageNet
weights one to one.

Frozen layers, as in every reference implementation (simple-faster-rcnn-pytorch
freezes VGG16's conv1_1..conv2_2; torchvision and detectron2 freeze the ResNet
stem and first stage and all batch norms): gradients are stopped at their
output, and ``frozen_param_mask`` marks their parameters so that the optimizer
neither updates nor decays them. Batch norm is frozen: its scale, bias, mean and
variance live in the non-trainable ``"frozen"`` collection and it is a fixed
affine map, whatever the batch size.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
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

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
        blocks = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
        count = 0
        for block, repeats, features in blocks:
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


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 conv)."""

    features: int
    strides: int = 1
    downsample: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = functools.partial(Conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(FrozenBatchNorm, dtype=self.dtype)
        y = nn.relu(norm(name="bn1")(conv(self.features, (1, 1), name="conv1")(x)))
        y = conv(self.features, (3, 3), strides=self.strides, padding=_pad(3), name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y))
        y = norm(name="bn3")(conv(self.features * 4, (1, 1), name="conv3")(y))
        if self.downsample:
            x = conv(self.features * 4, (1, 1), strides=self.strides, name="downsample_conv")(x)
            x = norm(name="downsample_bn")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """ResNet body: C2..C5 at strides 4..32; stem and layer1 frozen."""

    stage_sizes: Sequence[int]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
        x = Conv(
            64, (7, 7), strides=2, padding=_pad(7), use_bias=False, dtype=self.dtype, name="conv1"
        )(x)
        x = nn.relu(FrozenBatchNorm(dtype=self.dtype, name="bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
        outputs = []
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                x = Bottleneck(
                    64 * 2**stage,
                    strides=2 if stage > 0 and block == 0 else 1,
                    downsample=block == 0,
                    dtype=self.dtype,
                    name=f"layer{stage + 1}_{block}",
                )(x)
            if stage == 0:
                x = jax.lax.stop_gradient(x)
            outputs.append(x)
        return outputs


def _upsample_to(x: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    """Nearest 2x upsampling cropped to (height, width) (torchvision's FPN top-down path)."""
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return x[:, :height, :width]


class FPN(nn.Module):
    """Feature pyramid (Lin et al. 2017) over C2..C5: P2..P5 plus P6 = max_pool(P5, 1, stride 2)."""

    channels: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs: Sequence[jnp.ndarray]) -> list[jnp.ndarray]:
        laterals = [
            Conv(self.channels, (1, 1), dtype=self.dtype, name=f"inner{i}")(c)
            for i, c in enumerate(inputs)
        ]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            merged.insert(0, lateral + _upsample_to(merged[0], lateral.shape[1], lateral.shape[2]))
        outputs = [
            Conv(self.channels, (3, 3), padding=_pad(3), dtype=self.dtype, name=f"layer{i}")(m)
            for i, m in enumerate(merged)
        ]
        outputs.append(outputs[-1][:, ::2, ::2])  # P6: torchvision's LastLevelMaxPool (kernel 1)
        return outputs


class ResNetFPN(nn.Module):
    """ResNet + FPN: P2..P6 at strides 4..64, C = 256."""

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    dtype: Dtype = jnp.float32
    strides = (4, 8, 16, 32, 64)
    channels = 256

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
        body = ResNet(self.stage_sizes, dtype=self.dtype, name="body")(x)
        return FPN(self.channels, dtype=self.dtype, name="fpn")(body)


class SmallNet(nn.Module):
    """A small plain conv net for CPU work (the embedded config, tests): stride 2^len(widths).

    Each stage halves the resolution with a strided 3x3 conv, then refines with
    a second 3x3 conv at the lower resolution (cheap: no full-resolution conv).
    """

    widths: Sequence[int] = (32, 64, 96, 128)
    dtype: Dtype = jnp.float32

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
      the module has ``strides`` (one per output map, finest first) and returns the maps.
    frozen_prefixes: parameter paths inside the backbone that the optimizer never updates
      (a prefix ending in "_" matches by string prefix: "body/layer1_" is every layer1 block).
    torchvision_arch: the ``convert_weights --arch`` whose ImageNet file fits; None: none.
    weight_layout: how torchvision's names map to ours ("vgg" or "resnet"; frcnn_jax.weights).
    weight_prefixes: FasterRCNN variables a converted file must fill completely (the FPN, RPN
      and detection layers keep their initialisation).
    """

    factory: Callable[..., nn.Module]
    frozen_prefixes: tuple[str, ...] = ()
    torchvision_arch: str | None = None
    weight_layout: str | None = None
    weight_prefixes: tuple[str, ...] = ()


_RESNET_WEIGHTS = {
    "weight_layout": "resnet",
    "weight_prefixes": ("params/body/body/", "frozen/body/body/"),
    "frozen_prefixes": ("body/conv1", "body/layer1_"),
}

BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        VGG16,
        # conv1_1 .. conv2_2, as the seed (Caffe lr 0).
        frozen_prefixes=("conv1_1", "conv1_2", "conv2_1", "conv2_2"),
        torchvision_arch="vgg16",
        weight_layout="vgg",
        weight_prefixes=("params/body/",),
    ),
    "resnet50_fpn": BackboneSpec(
        functools.partial(ResNetFPN, stage_sizes=(3, 4, 6, 3)),
        torchvision_arch="resnet50",
        **_RESNET_WEIGHTS,
    ),
    "resnet101_fpn": BackboneSpec(
        functools.partial(ResNetFPN, stage_sizes=(3, 4, 23, 3)),
        torchvision_arch="resnet101",
        **_RESNET_WEIGHTS,
    ),
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


def is_frozen_param(backbone: str, path: str) -> bool:
    """Whether ``path`` ("conv1_1/kernel", "body/layer1_0/conv1/kernel") is frozen."""
    return any(
        path == p or path.startswith(p + "/") or (p.endswith("_") and path.startswith(p))
        for p in get_spec(backbone).frozen_prefixes
    )
