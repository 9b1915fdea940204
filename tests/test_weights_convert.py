"""Tests for frcnn_jax.weights.convert (loading the result: test_weights_load.py).

The numerical tests build torchvision-layout models (torchvision itself when it
imports, else the same names and shapes from plain torch modules below), fill
them with random values, convert their state_dicts and check that our Flax
backbones compute the same features: VGG16 conv5_3, ResNet-50 and ResNet-18 C2..C5
(NCHW there, NHWC here), and VGG16's fc6/fc7 on pooled features (the flatten order).
"""

from __future__ import annotations

import subprocess
import sys

import flax
import jax.numpy as jnp
import numpy as np
import pytest

from frcnn_jax.models.backbones import VGG16, ResNet
from frcnn_jax.models.heads import RoIHead
from frcnn_jax.weights import convert as cw

RTOL = 1e-4


def _max_relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def _numpy_state_dict(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random torchvision-named arrays of the right shapes (no torch needed)."""
    rng = np.random.default_rng(seed)
    return {
        cw.torch_name(arch, path): rng.uniform(0.5, 1.5, cw.torch_shape(shape)).astype(np.float32)
        for path, shape in cw.expected_variables(arch).items()
    }


# ---------------------------------------------------------------- torch models


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="torch is not installed (the 'test' extra)")
    torch.set_num_threads(2)
    return torch


def _torchvision_usable() -> bool:
    # In a subprocess: a CUDA torchvision next to a CPU torch can fail at import.
    probe = "import torchvision.models, torchvision.ops"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def _plain_vgg16(nn):
    """torchvision's VGG16 layout: ``features`` (convs, ReLUs, max pools) and ``classifier``."""
    layers, channels = [], 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                  512, 512, 512, "M"):  # fmt: skip
        if width == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
    model = nn.Module()
    model.features = nn.Sequential(*layers)
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(4096, 1000),
    )
    return model


def _plain_resnet(nn, arch: str):
    """torchvision's ResNet layout: v1.5 bottlenecks (stride on the 3x3) for ResNet-50, basic
    blocks for ResNet-18; BN eps 1e-5; a projection wherever the shape changes."""

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = _projection(inplanes, planes, stride, self.expansion)

        def forward(self, x):
            y = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))
            return (y + (x if self.downsample is None else self.downsample(x))).relu()

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.downsample = _projection(inplanes, planes, stride, self.expansion)

        def forward(self, x):
            y = self.bn1(self.conv1(x)).relu()
            y = self.bn2(self.conv2(y)).relu()
            y = self.bn3(self.conv3(y))
            return (y + (x if self.downsample is None else self.downsample(x))).relu()

    def _projection(inplanes, planes, stride, expansion):
        if stride == 1 and inplanes == planes * expansion:
            return None
        return nn.Sequential(
            nn.Conv2d(inplanes, planes * expansion, 1, stride, bias=False),
            nn.BatchNorm2d(planes * expansion),
        )

    block, stages = {
        "resnet18": (BasicBlock, (2, 2, 2, 2)),
        "resnet50": (Bottleneck, (3, 4, 6, 3)),
    }[arch]
    model = nn.Module()
    model.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    model.bn1 = nn.BatchNorm2d(64)
    model.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = 64
    for stage, blocks in enumerate(stages):
        planes = 64 * 2**stage
        layers = []
        for index in range(blocks):
            layers.append(block(inplanes, planes, 2 if stage > 0 and index == 0 else 1))
            inplanes = planes * block.expansion
        setattr(model, f"layer{stage + 1}", nn.Sequential(*layers))
    model.fc = nn.Linear(inplanes, 1000)
    return model


def _resnet_features(model, x):
    """C2..C5 of a torchvision-layout ResNet."""
    x = model.maxpool(model.bn1(model.conv1(x)).relu())
    outputs = []
    for i in range(1, 5):
        x = getattr(model, f"layer{i}")(x)
        outputs.append(x)
    return outputs


def _randomize_batch_norms(torch, model) -> None:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.weight.data = torch.rand(c, generator=generator) + 0.5
            module.bias.data = torch.randn(c, generator=generator) * 0.1
            module.running_mean.data = torch.randn(c, generator=generator) * 0.1
            module.running_var.data = torch.rand(c, generator=generator) + 0.5


@pytest.fixture(scope="module")
def torch_vgg16(torch):
    torch.manual_seed(0)
    if _torchvision_usable():
        import torchvision  # noqa: PLC0415

        model = torchvision.models.vgg16(weights=None)
    else:
        model = _plain_vgg16(torch.nn)
    return model.eval()


def _torch_resnet(torch, arch):
    torch.manual_seed(0)
    if _torchvision_usable():
        import torchvision  # noqa: PLC0415

        model = getattr(torchvision.models, arch)(weights=None)
    else:
        model = _plain_resnet(torch.nn, arch)
    _randomize_batch_norms(torch, model)
    return model.eval()


@pytest.fixture(scope="module")
def torch_resnet50(torch):
    return _torch_resnet(torch, "resnet50")


def _state_dict(model) -> dict[str, np.ndarray]:
    return {name: t.detach().numpy() for name, t in model.state_dict().items()}


@pytest.fixture(scope="module")
def converted_vgg16(torch_vgg16):
    return cw.convert_state_dict(_state_dict(torch_vgg16), arch="vgg16")


def _subtree(converted: dict[str, np.ndarray], prefix: str) -> dict:
    """Nested collections ``{"params": ..., "frozen": ...}`` of the paths under ``prefix``."""
    flat = {}
    for path, array in converted.items():
        collection, rest = path.split("/", 1)
        if rest.startswith(prefix):
            flat[(collection, *rest[len(prefix) :].split("/"))] = jnp.asarray(array)
    return flax.traverse_util.unflatten_dict(flat)


# ------------------------------------------------------------ numerical match


def test_vgg16_conv5_3_matches_torch(torch, torch_vgg16, converted_vgg16):
    image = np.random.default_rng(1).normal(size=(1, 3, 32, 48)).astype(np.float32)
    with torch.no_grad():
        theirs = torch_vgg16.features[:-1](torch.from_numpy(image)).numpy()  # no last max pool
    (ours,) = VGG16().apply(_subtree(converted_vgg16, "body/"), image.transpose(0, 2, 3, 1))
    assert ours.shape == (1, 2, 3, 512)
    assert _max_relative_error(np.asarray(ours), theirs.transpose(0, 2, 3, 1)) < RTOL


def test_vgg16_fc6_fc7_match_torch_classifier(torch, torch_vgg16, converted_vgg16):
    """torch classifier[:4](flatten(NCHW pooled)) == our fc7(relu(fc6(flatten(NHWC pooled))))."""
    pooled = np.random.default_rng(2).uniform(size=(3, 512, 7, 7)).astype(np.float32)
    with torch.no_grad():
        theirs_fc6 = torch_vgg16.classifier[0](torch.from_numpy(pooled).flatten(1)).numpy()
        theirs_fc7 = torch_vgg16.classifier[:4](torch.from_numpy(pooled).flatten(1)).numpy()
    params = _subtree(converted_vgg16, "head/")["params"]
    params["cls_score"] = {"kernel": jnp.zeros((4096, 2)), "bias": jnp.zeros(2)}
    params["bbox_pred"] = {"kernel": jnp.zeros((4096, 8)), "bias": jnp.zeros(8)}
    head = RoIHead(num_classes=2, hidden=(4096, 4096))
    _, state = head.apply(
        {"params": params},
        pooled.transpose(0, 2, 3, 1),
        capture_intermediates=True,
        mutable=["intermediates"],
    )
    ours_fc6 = np.asarray(state["intermediates"]["fc6"]["__call__"][0])
    ours_fc7 = np.asarray(state["intermediates"]["fc7"]["__call__"][0])
    assert _max_relative_error(ours_fc6, theirs_fc6) < RTOL
    assert _max_relative_error(ours_fc7, theirs_fc7) < RTOL


def test_resnet50_c2_to_c5_match_torch(torch, torch_resnet50):
    converted = cw.convert_state_dict(_state_dict(torch_resnet50), arch="resnet50")
    image = np.random.default_rng(3).normal(size=(1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        theirs = [t.numpy() for t in _resnet_features(torch_resnet50, torch.from_numpy(image))]
    ours = ResNet((3, 4, 6, 3)).apply(
        _subtree(converted, "body/body/"), image.transpose(0, 2, 3, 1)
    )
    for level, (o, t) in enumerate(zip(ours, theirs), start=2):
        assert o.shape == t.transpose(0, 2, 3, 1).shape, f"C{level}"
        assert _max_relative_error(np.asarray(o), t.transpose(0, 2, 3, 1)) < RTOL, f"C{level}"


def test_resnet18_c2_to_c5_match_torch(torch):
    """BasicBlock names (no projection in layer1) convert one to one."""
    model = _torch_resnet(torch, "resnet18")
    converted = cw.convert_state_dict(_state_dict(model), arch="resnet18")
    image = np.random.default_rng(4).normal(size=(1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        theirs = [t.numpy() for t in _resnet_features(model, torch.from_numpy(image))]
    ours = ResNet((2, 2, 2, 2), block="basic").apply(
        _subtree(converted, "body/body/"), image.transpose(0, 2, 3, 1)
    )
    for level, (o, t) in enumerate(zip(ours, theirs), start=2):
        assert o.shape == t.transpose(0, 2, 3, 1).shape, f"C{level}"
        assert _max_relative_error(np.asarray(o), t.transpose(0, 2, 3, 1)) < RTOL, f"C{level}"


def test_pth_file_through_the_command_line(torch, torch_resnet50, tmp_path):
    torch.save(torch_resnet50.state_dict(), tmp_path / "r50.pth")
    cw.main(
        [
            "--arch",
            "resnet50",
            "--input",
            str(tmp_path / "r50.pth"),
            "--output",
            str(tmp_path / "r50.npz"),
        ]
    )
    expected = cw.convert_state_dict(_state_dict(torch_resnet50), arch="resnet50")
    with np.load(tmp_path / "r50.npz", allow_pickle=False) as data:
        assert sorted(data.files) == sorted(expected)
        np.testing.assert_array_equal(
            data["params/body/body/layer2_0/conv2/kernel"],
            expected["params/body/body/layer2_0/conv2/kernel"],
        )


# ------------------------------------------------------- names, files, errors


def test_resnet_names_follow_torchvision():
    assert cw.torch_name("resnet50", "params/body/body/conv1/kernel") == "conv1.weight"
    assert cw.torch_name("resnet50", "frozen/body/body/bn1/var") == "bn1.running_var"
    assert (
        cw.torch_name("resnet101", "params/body/body/layer3_22/downsample_conv/kernel")
        == "layer3.22.downsample.0.weight"
    )
    assert (
        cw.torch_name("resnet50", "frozen/body/body/layer4_0/downsample_bn/scale")
        == "layer4.0.downsample.1.weight"
    )
    assert cw.torch_name("vgg16", "params/body/conv4_3/bias") == "features.21.bias"
    assert cw.torch_name("vgg16", "params/head/fc7/kernel") == "classifier.3.weight"
    # torchvision's resnet50 file: 265 converted, 53 num_batches_tracked and fc skipped.
    assert len(cw.expected_variables("resnet50")) == 265
    # resnet18: 20 convs and 20 batch norms (x4); layer1 has no downsample, layer2 has.
    assert len(cw.expected_variables("resnet18")) == 100
    assert len(cw.expected_variables("resnet34")) == 180
    assert cw.torch_name("resnet18", "params/body/body/layer1_1/conv2/kernel") == (
        "layer1.1.conv2.weight"
    )
    assert "params/body/body/layer1_0/downsample_conv/kernel" not in cw.expected_variables(
        "resnet18"
    )
    assert (
        cw.torch_name("resnet34", "frozen/body/body/layer2_0/downsample_bn/mean")
        == "layer2.0.downsample.1.running_mean"
    )


def test_conversion_error_lists_every_problem():
    state = _numpy_state_dict("resnet50")
    del state["layer1.0.conv1.weight"], state["layer4.2.bn3.running_var"]
    state["layer2.1.conv2.weight"] = np.zeros((128, 128, 1, 1), np.float32)
    state["layer3.6.conv1.weight"] = np.zeros((256, 1024, 1, 1), np.float32)  # a resnet101 block
    state["fc.weight"] = np.zeros((1000, 2048), np.float32)  # ImageNet classifier: skipped
    state["bn1.num_batches_tracked"] = np.zeros((), np.int64)  # skipped
    with pytest.raises(cw.ConversionError) as error:
        cw.convert_state_dict(state, arch="resnet50")
    message = str(error.value)
    for expected in (
        "2 missing", "layer1.0.conv1.weight (64, 64, 1, 1)", "layer4.2.bn3.running_var",
        "1 mis-shaped", "layer2.1.conv2.weight: got (128, 128, 1, 1), expected (128, 128, 3, 3)",
        "1 unexpected", "layer3.6.conv1.weight",
    ):  # fmt: skip
        assert expected in message
    assert "fc.weight" not in message and "num_batches_tracked" not in message


@pytest.mark.parametrize("extension", ["npz", "safetensors"])
def test_npz_and_safetensors_inputs(tmp_path, extension):
    state = _numpy_state_dict("resnet50")
    source = tmp_path / f"r50.{extension}"
    if extension == "npz":
        np.savez(source, **state)
    else:
        safetensors_numpy = pytest.importorskip("safetensors.numpy")
        safetensors_numpy.save_file(state, str(source))
    cw.main(["--arch", "resnet50", "--input", str(source), "--output", str(tmp_path / "out.npz")])
    with np.load(tmp_path / "out.npz", allow_pickle=False) as data:
        np.testing.assert_array_equal(
            data["params/body/body/conv1/kernel"], state["conv1.weight"].transpose(2, 3, 1, 0)
        )
        np.testing.assert_array_equal(data["frozen/body/body/bn1/mean"], state["bn1.running_mean"])


def test_command_line_reports_errors(tmp_path, capsys):
    state = _numpy_state_dict("resnet50")
    del state["conv1.weight"]
    np.savez(tmp_path / "bad.npz", **state)
    with pytest.raises(SystemExit) as error:
        cw.main(
            [
                "--arch",
                "resnet50",
                "--input",
                str(tmp_path / "bad.npz"),
                "--output",
                str(tmp_path / "out.npz"),
            ]
        )
    assert "1 missing" in str(error.value) and "conv1.weight" in str(error.value)
    assert not (tmp_path / "out.npz").exists()
