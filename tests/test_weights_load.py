"""Tests for frcnn_jax.weights.load: strict loading of converted weights into FasterRCNN variables.

The variables are FasterRCNN's real initial tree, as shapes (``jax.eval_shape``,
nothing computed), so these tests pin the names the converter writes to the
names the detector uses; the files hold random weights of the right shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frcnn_jax.models.faster_rcnn import FasterRCNN
from frcnn_jax.models.options import RoIOptions, RPNOptions
from frcnn_jax.weights import convert as cw
from frcnn_jax.weights import load as pretrained


def _numpy_state_dict(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random torchvision-named arrays of the right shapes."""
    rng = np.random.default_rng(seed)
    return {
        cw.torch_name(arch, path): rng.uniform(0.5, 1.5, cw.torch_shape(shape)).astype(np.float32)
        for path, shape in cw.expected_variables(arch).items()
    }


def _model_variables(backbone: str, **overrides) -> dict:
    """Shapes of FasterRCNN's initial variables (nothing computed)."""
    model = FasterRCNN(num_classes=3, backbone=backbone, **overrides)
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.uint8)
    sizes = jax.ShapeDtypeStruct((1, 2), jnp.int32)
    variables = jax.eval_shape(
        lambda k, i, s: model.init(k, i, s, method=model.initialize),
        jax.random.key(0),
        images,
        sizes,
    )
    return {"params": variables["params"], "frozen": variables.get("frozen", {})}


@pytest.fixture(scope="module")
def npz_files(tmp_path_factory) -> dict[str, str]:
    """Converted random weights, ``{arch: path}``."""
    files = {}
    for arch in ("vgg16", "resnet50"):
        files[arch] = str(tmp_path_factory.mktemp("weights") / f"{arch}.npz")
        np.savez(files[arch], **cw.convert_state_dict(_numpy_state_dict(arch), arch=arch))
    return files


def test_load_pretrained_resnet50_fpn(npz_files):
    variables = _model_variables(
        "resnet50_fpn",
        roi_options=RoIOptions(hidden=(1024, 1024)),
        rpn_options=RPNOptions(channels=256),
    )
    loaded = pretrained.load_pretrained(variables, npz_files["resnet50"], backbone="resnet50_fpn")
    body = loaded["params"]["body"]["body"]
    expected = _numpy_state_dict("resnet50")["conv1.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(body["conv1"]["kernel"], expected)
    assert isinstance(loaded["frozen"]["body"]["body"]["layer4_2"]["bn3"]["var"], jax.Array)
    # New layers keep their initialisation (here: shapes, untouched).
    assert isinstance(loaded["params"]["body"]["fpn"]["inner0"]["kernel"], jax.ShapeDtypeStruct)
    assert isinstance(loaded["params"]["head"]["cls_score"]["kernel"], jax.ShapeDtypeStruct)


def test_load_pretrained_vgg16_fills_backbone_and_fc6_fc7(npz_files):
    variables = _model_variables("vgg16")
    loaded = pretrained.load_pretrained(variables, npz_files["vgg16"], backbone="vgg16")
    assert isinstance(loaded["params"]["body"]["conv5_3"]["kernel"], jax.Array)
    assert loaded["params"]["head"]["fc6"]["kernel"].shape == (7 * 7 * 512, 4096)
    assert isinstance(loaded["params"]["rpn"]["conv"]["kernel"], jax.ShapeDtypeStruct)


def test_load_pretrained_rejects_mismatches(npz_files):
    r50 = npz_files["resnet50"]
    with pytest.raises(
        ValueError, match=r"(?s)holds resnet50 weights; convert with --arch vgg16.*265 names no"
    ):
        pretrained.load_pretrained(_model_variables("vgg16"), r50, backbone="vgg16")
    # A resnet50 file would leave 17 of resnet101's layer3 blocks random: refused.
    with pytest.raises(ValueError, match=r"(?s)missing from the file.*layer3_22"):
        pretrained.load_pretrained(
            _model_variables("resnet101_fpn", roi_options=RoIOptions(hidden=(1024, 1024))),
            r50,
            backbone="resnet101_fpn",
        )
    with pytest.raises(
        ValueError, match=r"(?s)roi.hidden=\(4096, 4096\).*4 mis-shaped.*head/fc6/kernel"
    ):
        pretrained.load_pretrained(
            _model_variables("vgg16", roi_options=RoIOptions(hidden=(256, 256))),
            npz_files["vgg16"],
            backbone="vgg16",
        )
    with pytest.raises(ValueError, match="no ImageNet weights"):
        pretrained.load_pretrained(_model_variables("small"), r50, backbone="small")


def test_load_pretrained_never_unpickles(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, **{"params/body/conv1_1/kernel": np.array([object()], dtype=object)})
    with pytest.raises(ValueError, match="cannot read"):
        pretrained.load_pretrained(_model_variables("vgg16"), str(path), backbone="vgg16")
