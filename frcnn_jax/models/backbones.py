"""Backbones: VGG16 (stride 16), ResNet-18/34/50/101 + FPN (P2..P6), a small CPU net.

Shape shorthand: B batch, H, W image height and width, C channels.

Every backbone maps normalised images ``[B, H, W, 3]`` (and optionally the unpadded
``image_sizes`` ``[B, 2]``, which GroupNorm-ed ResNets use to keep the padding out of their
statistics) to a list of feature maps ``[B, H / s, W / s, C]``, finest first, and has a
class attribute ``strides`` giving ``s`` for each. Parameter names follow torchvision's
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
GroupNorm and nothing frozen (``ResNet``). The ResNet family lives in
``models/resnet.py``; this module holds VGG16, the small net and the table.
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
from frcnn_jax.models.conv import torch_padding as _pad
from frcnn_jax.models.resnet import (  # noqa: F401 (the backbone family, re-exported)
    BN_EPSILON,
    FPN,
    NORMS,
    BasicBlock,
    Bottleneck,
    FrozenBatchNorm,
    ResNet,
    ResNetFPN,
)

Dtype = Any


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
    def __call__(self, x: jnp.ndarray, image_sizes=None) -> list[jnp.ndarray]:
        del image_sizes  # no normalisation layer: the padding changes nothing to correct
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
    def __call__(self, x: jnp.ndarray, image_sizes=None) -> list[jnp.ndarray]:
        del image_sizes  # no normalisation layer: the padding changes nothing to correct
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
