"""Every shipped config loads, validates and builds its model; bad fields name themselves."""

import importlib

import jax
import jax.numpy as jnp
import pytest

from frcnn_jax.models import build_model
from frcnn_jax.training.config_checks import validate_config

CONFIGS = ["synthetic", "voc", "voc_resnet50_fpn", "coco_resnet50_fpn", "custom"]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates_and_builds_its_model(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    validate_config(config)
    model = build_model(config.model, num_classes=3)
    assert model.backbone == config.model.backbone
    # Parameter shapes without running anything (cheap even for ResNet-101/VGG16).
    shapes = jax.eval_shape(
        lambda k: model.init(
            k, jnp.zeros((1, 64, 64, 3), jnp.uint8), jnp.array([[64, 64]]), method=model.initialize
        ),
        jax.random.key(0),
    )
    assert shapes["params"]["head"]["cls_score"]["kernel"].shape[-1] == 4


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("batch_size", 0, "config.batch_size"),
        ("learning_rate", -1.0, "config.learning_rate"),
        ("model.backbone", "vgg19", "model.backbone"),
        ("data.name", "imagenet", "config.data.name"),
        ("data.max_size", 10, "min_size"),
        ("num_epochs", 0.0, "config.num_epochs must be > 0"),
        ("lr_decay_epochs", (-1.0,), "config.lr_decay_epochs"),
        ("lr_schedule", "linear", "config.lr_schedule='linear'"),
        ("model.rpn.border_rule", "inside", "model.rpn.border_rule='inside'"),
        ("model.rpn.min_size_units", "px", "model.rpn.min_size_units='px'"),
        ("model.backbone_options", {"norm": "bn"}, r"do not fit model.backbone='small' \(it takes"),
    ],
)
def test_bad_fields_are_named(field, value, message):
    config = importlib.import_module("configs.synthetic").get_config()
    target = config
    *parents, leaf = field.split(".")
    for p in parents:
        target = target[p]
    target[leaf] = value
    with pytest.raises(ValueError, match=message):
        validate_config(config)
