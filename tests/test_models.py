"""Backbones, heads and the detector's shapes, normalisation and frozen layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frcnn_jax.models import backbones
from frcnn_jax.models.faster_rcnn import FasterRCNN
from frcnn_jax.models.heads import RoIHead, RPNHead
from frcnn_jax.models.inputs import normalize_images
from frcnn_jax.models.options import AnchorOptions


def _shapes(module, x, collection="params"):
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    return jax.tree.map(lambda s: s.shape, variables[collection]), jax.eval_shape(
        lambda v: module.apply(v, x), variables
    )


def test_vgg16_is_stride_16_with_torchvision_names():
    params, out = _shapes(backbones.VGG16(), jnp.zeros((1, 64, 96, 3)))
    assert [o.shape for o in out] == [(1, 4, 6, 512)]
    assert sorted(params) == sorted(
        f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)
    )
    assert params["conv1_1"]["kernel"] == (3, 3, 3, 64)


def test_resnet50_fpn_levels_and_frozen_batch_norm_collection():
    module = backbones.ResNetFPN(stage_sizes=(3, 4, 6, 3))
    x = jnp.zeros((1, 64, 64, 3))
    variables = jax.eval_shape(module.init, jax.random.key(0), x)
    out = jax.eval_shape(lambda v: module.apply(v, x), variables)
    # P2..P6 at strides 4..64, 256 channels.
    assert [o.shape for o in out] == [
        (1, 16, 16, 256),
        (1, 8, 8, 256),
        (1, 4, 4, 256),
        (1, 2, 2, 256),
        (1, 1, 1, 256),
    ]
    assert set(variables["frozen"]["body"]["bn1"]) == {"scale", "bias", "mean", "var"}
    assert "bn1" not in variables["params"]["body"]
    assert variables["params"]["body"]["layer4_2"]["conv3"]["kernel"].shape == (1, 1, 512, 2048)
    assert "downsample_conv" in variables["params"]["body"]["layer1_0"]


def test_frozen_batch_norm_is_the_affine_map_of_its_statistics():
    bn = backbones.FrozenBatchNorm()
    x = jnp.array([[1.0, -2.0]])
    frozen = {
        "scale": jnp.array([2.0, 1.0]),
        "bias": jnp.array([0.5, 0.0]),
        "mean": jnp.array([1.0, 0.0]),
        "var": jnp.array([4.0, 1.0]),
    }
    y = bn.apply({"frozen": frozen}, x)
    eps = backbones.BN_EPSILON
    np.testing.assert_allclose(y, [[0.5, -2.0 / np.sqrt(1 + eps)]], rtol=1e-6)


def test_vgg_frozen_convs_get_no_gradient():
    module = backbones.VGG16()
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    params = module.init(jax.random.key(1), x)["params"]
    grads = jax.grad(lambda p: module.apply({"params": p}, x)[0].sum())(params)
    assert float(jnp.abs(grads["conv2_2"]["kernel"]).sum()) == 0.0
    assert float(jnp.abs(grads["conv3_1"]["kernel"]).sum()) > 0.0


def test_normalize_images_zeroes_padding_and_follows_the_weights():
    images = jnp.full((1, 4, 4, 3), 255, jnp.uint8).at[0, :, :, 0].set(0)  # blue-green image
    sizes = jnp.array([[2, 3]])
    x = normalize_images(images, sizes, normalization="caffe", dtype=jnp.float32)
    # Caffe: BGR order minus means; channel 2 is red (0 here).
    np.testing.assert_allclose(x[0, 0, 0], [255 - 102.9801, 255 - 115.9465, -122.7717], rtol=1e-6)
    assert float(jnp.abs(x[0, 2:]).sum()) == 0.0 and float(jnp.abs(x[0, :, 3:]).sum()) == 0.0
    t = normalize_images(images, sizes, normalization="torchvision", dtype=jnp.float32)
    np.testing.assert_allclose(
        t[0, 1, 2], [-0.485 / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225], rtol=1e-5
    )


def test_heads_shapes_and_init_scales():
    rpn = RPNHead(num_anchors=9, channels=16)
    feats = [jnp.ones((2, 3, 5, 8))]
    variables = rpn.init(jax.random.key(0), feats)
    logits, deltas = rpn.apply(variables, feats)
    assert logits.shape == (2, 3 * 5 * 9) and deltas.shape == (2, 3 * 5 * 9, 4)
    head = RoIHead(num_classes=4, hidden=(32, 32))
    rois = jnp.ones((2, 6, 7, 7, 8))
    variables = head.init(jax.random.key(0), rois)
    cls, box = head.apply(variables, rois)
    assert cls.shape == (2, 6, 4) and box.shape == (2, 6, 4, 4)
    # The seed's init: box regression std 0.001, classification 0.01.
    assert float(jnp.std(variables["params"]["bbox_pred"]["kernel"])) < 0.003
    assert 0.005 < float(jnp.std(variables["params"]["cls_score"]["kernel"])) < 0.02


@pytest.mark.parametrize("backbone,expected", [("vgg16", 4 * 6 * 9), ("small", 4 * 6 * 9)])
def test_single_level_anchor_count_matches_rpn_outputs(backbone, expected):
    model = FasterRCNN(num_classes=2, backbone=backbone)
    assert model.anchors(64, 96).shape == (expected, 4)


def test_fpn_anchor_count_matches_rpn_outputs():
    sizes = AnchorOptions(sizes=(32.0, 64.0, 128.0, 256.0, 512.0))
    model = FasterRCNN(num_classes=2, backbone="resnet50_fpn", anchor_options=sizes)
    with pytest.raises(ValueError, match="one size per level"):
        FasterRCNN(num_classes=2, backbone="resnet50_fpn").anchors(64, 64)
    # 64x64: P2..P6 are 16, 8, 4, 2, 1 squared positions, 3 anchors each.
    assert model.anchors(64, 64).shape == (3 * (256 + 64 + 16 + 4 + 1), 4)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="model.backbone"):
        FasterRCNN(num_classes=2, backbone="vgg19").init(
            jax.random.key(0),
            jnp.zeros((1, 32, 32, 3), jnp.uint8),
            jnp.array([[32, 32]]),
            method=FasterRCNN.initialize,
        )
