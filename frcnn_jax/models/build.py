"""The detector a config describes: ``build_model(config.model, num_classes=K)``.

``config.model`` (configs/default.py lists every field with its default):
  backbone            a name of ``models.backbones.BACKBONES``
  backbone_options    keyword arguments of the backbone (small: ``{"widths": (32, 64, 128)}``;
                      ResNet-FPN: ``{"norm": "frozen_bn" | "group_norm", "freeze_at": 0..5}``)
  image_normalization "torchvision" (RGB, ImageNet mean/std) or "caffe" (BGR minus mean)
  dtype               "float32" or "bfloat16" compute (parameters stay float32)
  pretrained          an .npz from ``python -m frcnn_jax.convert_weights`` (read by training)
  anchors.*, rpn.*, roi.*, test.*   the option groups of ``models.options``
"""

from __future__ import annotations

import dataclasses
import difflib
import functools

import jax
import jax.numpy as jnp
import ml_collections

from frcnn_jax import anchors as anchors_lib
from frcnn_jax.models import backbones
from frcnn_jax.models.faster_rcnn import FasterRCNN
from frcnn_jax.models.inputs import NORMALIZATIONS
from frcnn_jax.models.options import SECTIONS, RoIOptions, RPNOptions, field_names

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Top-level fields of config.model that are not option groups.
TOP_LEVEL = ("backbone", "backbone_options", "image_normalization", "dtype", "pretrained")


def default_model_config() -> ml_collections.ConfigDict:
    """``config.model`` with every field at its default (the seed's VGG16 detector)."""
    config = ml_collections.ConfigDict()
    config.backbone = "vgg16"
    config.backbone_options = {}
    config.image_normalization = "torchvision"  # matches torchvision's ImageNet weights
    config.dtype = "float32"
    config.pretrained = ""
    for section, (_, options_class) in SECTIONS.items():
        config[section] = dataclasses.asdict(options_class())
    return config


def unknown_field_error(where: str, name: str, known) -> ValueError:
    """ValueError naming an unknown config field and the closest known one."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    hint = f"; did you mean {where}.{close[0]}?" if close else ""
    return ValueError(f"unknown config field {where}.{name}{hint} (known: {sorted(known)})")


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def check_model_config(model_config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first unknown or invalid field of ``config.model``."""
    for name in model_config.keys():
        if name not in TOP_LEVEL and name not in SECTIONS:
            raise unknown_field_error("model", name, (*TOP_LEVEL, *SECTIONS))
    for section, (_, options_class) in SECTIONS.items():
        known = field_names(options_class)
        for name in model_config.get(section, {}).keys():
            if name not in known:
                raise unknown_field_error(f"model.{section}", name, known)
    check_backbone_options(model_config.backbone, model_config.get("backbone_options") or {})
    rpn = model_config.get("rpn", {})
    border_rule = rpn.get("border_rule", RPNOptions.border_rule)
    if border_rule not in anchors_lib.BORDER_RULES:
        raise ValueError(
            f"model.rpn.border_rule={border_rule!r}; choose one of {anchors_lib.BORDER_RULES}"
        )
    units = rpn.get("min_size_units", RPNOptions.min_size_units)
    if units not in ("original", "resized"):
        raise ValueError(f"model.rpn.min_size_units={units!r}; choose 'original' or 'resized'")
    roi_norm = model_config.get("roi", {}).get("norm", RoIOptions.norm)
    if roi_norm not in ("", "group_norm"):
        raise ValueError(f"model.roi.norm={roi_norm!r}; choose '' or 'group_norm'")
    if model_config.dtype not in DTYPES:
        raise ValueError(f"model.dtype={model_config.dtype!r}; choose one of {sorted(DTYPES)}")
    if model_config.image_normalization not in NORMALIZATIONS:
        raise ValueError(
            f"model.image_normalization={model_config.image_normalization!r}; "
            f"choose one of {sorted(NORMALIZATIONS)}"
        )


def check_backbone_options(backbone: str, options) -> None:
    """ValueError naming ``model.backbone_options`` when the backbone does not take them."""
    spec = backbones.get_spec(backbone)
    options = {k: _tuples(v) for k, v in dict(options).items()}
    try:
        module = spec.factory(**options)
    except TypeError as error:
        known = [f.name for f in dataclasses.fields(spec.factory(parent=None)) if f.init]
        known = [k for k in known if k not in ("parent", "name", "dtype")]
        raise ValueError(
            f"model.backbone_options={options} do not fit model.backbone={backbone!r} "
            f"(it takes {sorted(known)}): {error}"
        ) from None
    norm = getattr(module, "norm", None)
    if norm is not None and norm not in backbones.NORMS:
        raise ValueError(f"model.backbone_options norm={norm!r}; choose one of {backbones.NORMS}")
    module.frozen_prefixes  # noqa: B018 (validates freeze_at)


def build_model(model_config: ml_collections.ConfigDict, *, num_classes: int) -> FasterRCNN:
    """FasterRCNN from ``config.model``; unknown fields raise naming the closest known one."""
    check_model_config(model_config)
    groups = {
        field: options_class(**{k: _tuples(v) for k, v in model_config.get(section, {}).items()})
        for section, (field, options_class) in SECTIONS.items()
    }
    return FasterRCNN(
        num_classes=num_classes,
        backbone=model_config.backbone,
        backbone_options={
            k: _tuples(v) for k, v in dict(model_config.get("backbone_options") or {}).items()
        },
        dtype=DTYPES[model_config.dtype],
        image_normalization=model_config.image_normalization,
        **groups,
    )


def init_variables(model: FasterRCNN, key: jax.Array) -> dict:
    """Initial ``{"params", "frozen"}``; shapes do not depend on the image size."""
    images = jnp.zeros((1, 64, 64, 3), jnp.uint8)
    sizes = jnp.array([[64, 64]], jnp.int32)
    variables = jax.jit(functools.partial(model.init, method=model.initialize))(key, images, sizes)
    return {"params": variables["params"], "frozen": variables.get("frozen", {})}
