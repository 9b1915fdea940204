"""build_model: config.model sections become the detector's option groups; bad fields name
themselves and the closest known field."""

import jax.numpy as jnp
import pytest

from configs import default
from frcnn_jax.models import build_model
from frcnn_jax.models.options import AnchorOptions, RPNOptions, TestOptions


def test_default_config_builds_the_seed_detector():
    model = build_model(default.get_config().model, num_classes=20)
    assert model.backbone == "vgg16" and model.dtype == jnp.float32
    assert model.rpn_options == RPNOptions() and model.test_options == TestOptions()
    # The seed's anchors: base 16 x scales (8, 16, 32).
    assert model.anchor_options == AnchorOptions(sizes=(128.0, 256.0, 512.0))


def test_sections_set_the_option_groups_and_lists_become_tuples():
    config = default.get_config().model
    config.rpn.positive_iou = 0.6
    config.roi.hidden = [64, 64]
    config.test.nms_iou = 0.5
    config.backbone = "small"
    config.backbone_options = {"widths": [8, 16]}
    model = build_model(config, num_classes=3)
    assert model.rpn_options.positive_iou == 0.6 and model.roi_options.hidden == (64, 64)
    assert model.test_options.nms_iou == 0.5
    assert dict(model.backbone_options) == {"widths": (8, 16)}
    assert model.anchors(64, 64).shape == (16 * 16 * 9, 4)  # small net, 2 stages: stride 4


@pytest.mark.parametrize(
    "section,name,closest",
    [
        ("rpn", "postive_iou", "model.rpn.positive_iou"),
        ("test", "score_thresh", "model.test.score_threshold"),
        (None, "anchor", "model.anchors"),
        (None, "normalization", "model.image_normalization"),
    ],
)
def test_unknown_fields_name_the_closest_known_one(section, name, closest):
    config = default.get_config().model
    (config[section] if section else config)[name] = 1
    with pytest.raises(ValueError, match=rf"unknown config field .*{name}; did you mean {closest}"):
        build_model(config, num_classes=3)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("backbone", "vgg19", "model.backbone='vgg19'; choose one of"),
        ("dtype", "float16", "model.dtype='float16'"),
        ("image_normalization", "imagenet", "model.image_normalization='imagenet'"),
        ("roi.norm", "batch_norm", "model.roi.norm='batch_norm'; choose '' or 'group_norm'"),
    ],
)
def test_bad_values_are_named(field, value, message):
    config = default.get_config().model
    *section, name = field.split(".")
    (config[section[0]] if section else config)[name] = value
    with pytest.raises(ValueError, match=message):
        build_model(config, num_classes=3)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"norm": "bn"}, r"norm='bn'; choose one of \('frozen_bn', 'group_norm'\)"),
        ({"freeze_at": 6}, "freeze_at=6; choose 0..5"),
        ({"widths": (8, 16)}, r"do not fit model.backbone='resnet18_fpn' \(it takes \["),
    ],
)
def test_bad_backbone_options_are_named(options, message):
    config = default.get_config().model
    config.backbone = "resnet18_fpn"
    config.backbone_options = options
    with pytest.raises(ValueError, match=message):
        build_model(config, num_classes=3)
