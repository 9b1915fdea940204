"""Backbones, heads and the detector's shapes, normalisation and frozen layers."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frcnn_jax.models import backbones
from frcnn_jax.models.faster_rcnn import FasterRCNN
from frcnn_jax.models.heads import RoIHead, RPNHead
from frcnn_jax.models.inputs import normalize_images
from frcnn_jax.models.options import AnchorOptions, RoIOptions, RPNOptions


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
    params = jax.jit(module.init)(jax.random.key(1), x)["params"]  # jitted: 4x faster than eager
    grads = jax.jit(jax.grad(lambda p: module.apply({"params": p}, x)[0].sum()))(params)
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


def test_resnet18_fpn_basic_blocks_and_torchvision_names():
    module = backbones.get_spec("resnet18_fpn").factory()
    x = jnp.zeros((1, 64, 64, 3))
    params, out = _shapes(module, x)
    assert [o.shape for o in out][:2] == [(1, 16, 16, 256), (1, 8, 8, 256)]
    body = params["body"]
    assert sorted(k for k in body if k.startswith("layer")) == [
        f"layer{s}_{b}" for s in range(1, 5) for b in range(2)
    ]
    assert set(body["layer2_0"]) == {"conv1", "conv2", "downsample_conv"}  # BN is "frozen"
    assert "downsample_conv" not in body["layer1_0"]  # 64 -> 64 channels: no projection
    assert body["layer4_1"]["conv2"]["kernel"] == (3, 3, 512, 512)
    assert module.frozen_prefixes == ("body/conv1", "body/bn1", "body/layer1_")


def _stem_and_layer1_grads(options):
    # Narrowed (32-256 channels, a 32-channel FPN; GroupNorm's 32 groups still divide them)
    # and jitted: the freezing rules do not depend on the widths.
    module = backbones.get_spec("resnet18_fpn").factory(**{"width": 32, "channels": 32, **options})
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    variables = jax.jit(module.init)(jax.random.key(1), x)

    def loss(params):
        return sum(p.sum() for p in module.apply({**variables, "params": params}, x))

    grads = jax.jit(jax.grad(loss))(variables["params"])["body"]
    return variables, grads, module.frozen_prefixes


def test_group_norm_resnet_trains_everything_from_scratch():
    variables, grads, frozen = _stem_and_layer1_grads({"norm": "group_norm"})
    assert frozen == ()  # detectron2's FREEZE_AT=0 for scratch GN
    assert "frozen" not in variables  # GroupNorm's scale and bias are parameters
    assert set(variables["params"]["body"]["bn1"]) == {"scale", "bias"}
    assert set(variables["params"]["fpn"]) >= {"inner0", "inner0_norm", "layer0_norm"}
    assert "bias" not in variables["params"]["fpn"]["inner0"]  # GN follows: no conv bias
    assert float(jnp.abs(grads["conv1"]["kernel"]).sum()) > 0.0
    assert float(jnp.abs(grads["layer1_0"]["conv1"]["kernel"]).sum()) > 0.0


@pytest.mark.parametrize(
    "options,frozen",
    [
        ({}, ("body/conv1", "body/bn1", "body/layer1_")),  # ImageNet: stem + layer1, as today
        ({"freeze_at": 1}, ("body/conv1", "body/bn1")),
        ({"freeze_at": 0}, ()),
        ({"norm": "group_norm", "freeze_at": 2}, ("body/conv1", "body/bn1", "body/layer1_")),
    ],
)
def test_freeze_at_stops_gradients_where_the_prefixes_say(options, frozen):
    _, grads, prefixes = _stem_and_layer1_grads(options)
    assert prefixes == frozen
    stem = float(jnp.abs(grads["conv1"]["kernel"]).sum())
    layer1 = float(jnp.abs(grads["layer1_1"]["conv2"]["kernel"]).sum())
    layer2 = float(jnp.abs(grads["layer2_0"]["conv1"]["kernel"]).sum())
    assert (stem == 0.0) == ("body/conv1" in frozen)
    assert (layer1 == 0.0) == ("body/layer1_" in frozen)
    assert layer2 > 0.0


def test_min_proposal_size_follows_the_batch_scales():
    """rpn.min_size_units="original": min_size x scales, as the seed; "resized": as is."""
    image = jax.random.randint(jax.random.key(0), (1, 64, 64, 3), 0, 255).astype(jnp.uint8)
    images = jnp.concatenate([image, image])  # the same image twice; only the scales differ
    sizes = jnp.array([[64, 64], [64, 64]], jnp.int32)
    scales = jnp.array([[1.0, 1.0], [8.0, 8.0]], jnp.float32)  # image 1: min size 64 px

    def proposals(units):
        model = FasterRCNN(
            num_classes=2,
            backbone="small",
            backbone_options={"widths": (8, 8, 8)},
            anchor_options=AnchorOptions(sizes=(16.0, 32.0)),
            rpn_options=RPNOptions(channels=8, min_size=8.0, min_size_units=units),
            roi_options=RoIOptions(hidden=(8,), op="align"),
        )
        init = jax.jit(functools.partial(model.init, method=model.initialize))
        variables = init(jax.random.key(1), images, sizes)
        return jax.jit(functools.partial(model.apply, method=model.proposals))(
            variables, images, sizes, scales
        )

    rois, mask = proposals("original")
    assert int(mask[0].sum()) > 0 and int(mask[1].sum()) == 0  # nothing is 64 x 64 px
    heights = (rois[0, :, 2] - rois[0, :, 0])[mask[0]]
    assert float(heights.min()) >= 8.0
    _, mask = proposals("resized")
    assert int(mask[1].sum()) == int(mask[0].sum()) > 0


def test_narrow_resnet18_fpn_for_cpus():
    """width 32 halves every ResNet stage; GroupNorm keeps 2 channels per group below 64."""
    module = backbones.get_spec("resnet18_fpn").factory(norm="group_norm", width=32, channels=64)
    variables = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    body = variables["params"]["body"]
    assert body["conv1"]["kernel"].shape == (7, 7, 3, 32)
    assert body["layer4_1"]["conv2"]["kernel"].shape == (3, 3, 256, 256)
    assert variables["params"]["fpn"]["layer0"]["kernel"].shape == (3, 3, 64, 64)
    x = jax.random.normal(jax.random.key(1), (1, 64, 64, 3))
    out = jax.jit(module.apply)(jax.jit(module.init)(jax.random.key(0), x), x)
    assert [o.shape[-1] for o in out] == [64] * 5 and all(bool(jnp.isfinite(o).all()) for o in out)


def test_roi_canonical_size_chooses_the_fpn_level_each_roi_pools_from():
    """roi.canonical_size / canonical_level reach the FPN pooling (FPN paper, eq. 1)."""
    # Level l holds the constant l everywhere, so a pooled value names the level it came from.
    features = [jnp.full((1, 64 // 2**l, 64 // 2**l, 1), float(l)) for l in range(2, 7)]
    # 48 x 48 px: P2 with the default 224 (under 112); with 48 at P4 it is exactly P4.
    rois = jnp.array([[[4.0, 4.0, 52.0, 52.0], [8.0, 8.0, 20.0, 20.0]]])

    def pooled_levels(**roi):
        model = FasterRCNN(
            num_classes=2, backbone="resnet18_fpn", roi_options=RoIOptions(op="align", **roi)
        )
        pooled = model.apply({}, features, rois, method=model._pool)  # [1, R, 7, 7, 1]
        return np.asarray(pooled[0, :, 3, 3, 0])

    close = functools.partial(np.testing.assert_allclose, atol=1e-5)  # bilinear weights
    close(pooled_levels(), [2.0, 2.0])
    # s0 = 48 at k0 = 4: 48 px -> P4; 12 px -> floor(4 + log2(12 / 48)) = 2.
    close(pooled_levels(canonical_size=48.0), [4.0, 2.0])
    close(pooled_levels(canonical_size=48.0, canonical_level=5), [5.0, 3.0])


def test_conv_roi_head_against_a_written_out_reference():
    """roi.conv_channels: 3x3 convs (+ GroupNorm) on each pooled roi, then the fc layers."""
    from jax import lax

    rois = jax.random.normal(jax.random.key(0), (2, 3, 5, 5, 4))  # [B, S, p, p, C]
    head = RoIHead(num_classes=3, hidden=(16,), conv_channels=(8, 6), norm="group_norm")
    variables = head.init(jax.random.key(1), rois)
    params = variables["params"]
    assert params["conv1"]["kernel"].shape == (3, 3, 4, 8) and "bias" not in params["conv1"]
    assert params["conv2_norm"]["scale"].shape == (6,)
    assert params["fc6"]["kernel"].shape == (5 * 5 * 6, 16)  # the convs keep p x p
    # Non-trivial norm parameters, so that a missing or misplaced affine map shows.
    params = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.key(2), v.shape), params)
    cls, box = head.apply({"params": params}, rois)

    def reference(x):  # one roi [p, p, C]
        for name, groups in (("conv1", 4), ("conv2", 3)):  # 2 channels per group below 64
            x = lax.conv_general_dilated(
                x[None],
                params[name]["kernel"],
                (1, 1),
                ((1, 1), (1, 1)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )[0]
            g = x.reshape(*x.shape[:2], groups, -1)
            mean, var = g.mean(axis=(0, 1, 3)), g.var(axis=(0, 1, 3))
            g = (g - mean[:, None]) / jnp.sqrt(var[:, None] + 1e-5)
            norm = params[f"{name}_norm"]
            x = jax.nn.relu(g.reshape(x.shape) * norm["scale"] + norm["bias"])
        x = jax.nn.relu(x.reshape(-1) @ params["fc6"]["kernel"] + params["fc6"]["bias"])
        logits = x @ params["cls_score"]["kernel"] + params["cls_score"]["bias"]
        deltas = x @ params["bbox_pred"]["kernel"] + params["bbox_pred"]["bias"]
        return logits, deltas.reshape(3, 4)

    for b in range(2):
        for s in range(3):
            logits, deltas = reference(rois[b, s])
            np.testing.assert_allclose(cls[b, s], logits, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(box[b, s], deltas, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="model.roi.norm"):
        RoIHead(num_classes=3, hidden=(16,), conv_channels=(8,), norm="batch_norm").init(
            jax.random.key(1), rois
        )


def test_masked_group_norm_against_group_norm_of_each_image_alone():
    from frcnn_jax.models.resnet import MaskedGroupNorm, padding_mask

    x = jax.random.normal(jax.random.key(0), (2, 8, 12, 8)) * 3.0 + 1.0
    layer = MaskedGroupNorm(num_groups=4)
    params = {"scale": jnp.linspace(0.5, 1.5, 8), "bias": jnp.linspace(-1.0, 1.0, 8)}
    plain = nn.GroupNorm(num_groups=4, epsilon=1e-5)
    # No mask: flax's GroupNorm, same parameter names.
    assert jax.tree.structure(plain.init(jax.random.key(0), x)) == jax.tree.structure(
        layer.init(jax.random.key(0), x)
    )
    np.testing.assert_allclose(
        layer.apply({"params": params}, x), plain.apply({"params": params}, x), atol=1e-5
    )
    # Images of 5 x 7 and 8 x 12 input pixels on an 8 x 12 canvas, stride 1: statistics of
    # the image's own cells (GroupNorm of the crop), zeros in the padding.
    sizes = jnp.array([[5, 7], [8, 12]])
    mask = padding_mask((sizes, (8, 12)), x)
    assert mask.shape == (2, 8, 12, 1) and float(mask[0].sum()) == 35 and float(mask[1].sum()) == 96
    y = layer.apply({"params": params}, x, mask)
    crop = plain.apply({"params": params}, x[:1, :5, :7])
    np.testing.assert_allclose(y[0, :5, :7], crop[0], atol=1e-5)
    assert float(jnp.abs(y[0, 5:]).max()) == 0.0 and float(jnp.abs(y[0, :, 7:]).max()) == 0.0
    np.testing.assert_allclose(y[1], plain.apply({"params": params}, x[1:])[0], atol=1e-5)


def test_masked_group_norm_keeps_precision_for_a_large_mean():
    # Activations far from zero (mean 100, std 0.1): a one-pass E[x^2] - E[x]^2 variance loses
    # every digit in float32 (outputs off by ~0.7); the two-pass statistics match a float64
    # NumPy reference.
    from frcnn_jax.models.resnet import MaskedGroupNorm

    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 6, 5, 8))) * 0.1 + 100.0
    mask = np.ones((2, 6, 5, 1), np.float32)
    mask[0, 4:] = 0.0  # the first image covers 4 x 5 cells
    y = MaskedGroupNorm(num_groups=4).apply(
        {"params": {"scale": jnp.ones(8), "bias": jnp.zeros(8)}}, jnp.asarray(x), jnp.asarray(mask)
    )
    for b, rows in ((0, 4), (1, 6)):
        groups = x[b, :rows].astype(np.float64).reshape(rows, 5, 4, 2)
        mean = groups.mean(axis=(0, 1, 3), keepdims=True)
        var = groups.var(axis=(0, 1, 3), keepdims=True)
        expected = ((groups - mean) / np.sqrt(var + 1e-5)).reshape(rows, 5, 8)
        np.testing.assert_allclose(y[b, :rows], expected, atol=2e-3)
    assert float(jnp.abs(y[0, 4:]).max()) == 0.0


def test_padding_mask_cells_at_each_stride():
    from frcnn_jax.models.resnet import padding_mask

    # A 50 x 33 image on a 64 x 64 canvas: stride 4 (16 x 16) sees ceil(50/4) = 13 rows and
    # ceil(33/4) = 9 columns; stride 32 (2 x 2): 2 rows, 2 columns; stride 64 (1 x 1): all.
    sizes = jnp.array([[50, 33]])
    for cells, rows, cols in ((16, 13, 9), (2, 2, 2), (1, 1, 1)):
        mask = padding_mask((sizes, (64, 64)), jnp.zeros((1, cells, cells, 3)))[0, ..., 0]
        expected = np.zeros((cells, cells))
        expected[:rows, :cols] = 1
        np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("block,stages", [("basic", (1, 1, 1, 1)), ("bottleneck", (1, 1, 1, 1))])
def test_group_norm_resnet_fpn_features_do_not_depend_on_the_padding(block, stages):
    """The same image padded to two canvases: the same P2..P6 on the cells that see it."""
    from frcnn_jax.models.resnet import ResNetFPN

    module = ResNetFPN(stage_sizes=stages, block=block, norm="group_norm", width=8, channels=16)
    image = jax.random.normal(jax.random.key(0), (1, 40, 56, 3))
    small = jnp.pad(image, ((0, 0), (0, 24), (0, 8), (0, 0)))  # 64 x 64
    large = jnp.pad(image, ((0, 0), (0, 88), (0, 72), (0, 0)))  # 128 x 128
    variables = module.init(jax.random.key(1), small)
    sizes = jnp.array([[40, 56]])
    apply = jax.jit(module.apply)  # compiles faster than running op by op
    a = apply(variables, small, sizes)
    b = apply(variables, large, sizes)
    unmasked = apply(variables, small)
    for level, (fa, fb, fu) in enumerate(zip(a, b, unmasked)):
        stride = 4 * 2**level
        rows, cols = -(-40 // stride), -(-56 // stride)
        np.testing.assert_allclose(fa[:, :rows, :cols], fb[:, :rows, :cols], atol=2e-4)
        assert float(jnp.abs(fb[:, rows:]).max()) == 0.0  # the padding stays zero
        if level < 3:  # without the mask the padding shifts the statistics
            assert float(jnp.abs(fa[:, :rows, :cols] - fu[:, :rows, :cols]).max()) > 1e-2
