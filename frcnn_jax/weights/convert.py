"""Converts torchvision ImageNet weights into frcnn_jax variables (an ``.npz``).

Run:
  python -m frcnn_jax.convert_weights --arch vgg16 --input vgg16-397923af.pth --output vgg16.npz
  python -m frcnn_jax.convert_weights --arch resnet50 --input resnet50-0676ba61.pth \
    --output resnet50.npz

then train with ``--config.model.pretrained=vgg16.npz`` (see ``frcnn_jax.weights.load``).

The input is a torchvision state_dict: a ``.pth`` read with
``torch.load(weights_only=True)`` (torch is only needed for this format), or a
``.safetensors`` / ``.npz`` holding the same names. The output's keys are
"/"-joined variable paths of ``FasterRCNN``: ``params/body/conv1_1/kernel``,
``frozen/body/body/bn1/mean``, ``params/head/fc6/kernel``.

Layouts (torch -> ours): conv weight OIHW -> HWIO; linear weight (out, in) ->
(in, out); batch norm weight, bias, running_mean, running_var -> the
``"frozen"`` collection's scale, bias, mean, var. VGG16's fc6 (torchvision
``classifier.0``) reads pooled features flattened in torch's (C, H, W) order,
ours flattens (H, W, C), so its input rows are permuted.

The list of variables to fill comes from our Flax modules themselves
(``jax.eval_shape``, nothing computed) and the backbone table (``BackboneSpec``:
``torchvision_arch``, ``weight_layout``, ``weight_prefixes``), so converter and model cannot
drift apart.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from frcnn_jax.models import backbones
from frcnn_jax.models.heads import RoIHead

# Architecture of the torchvision file -> config.model.backbone that takes it.
ARCHS = backbones.by_torchvision_arch()

# torchvision's VGG ``features`` index of each conv (ReLUs and max pools sit between).
_VGG_FEATURES = {
    "conv1_1": 0, "conv1_2": 2, "conv2_1": 5, "conv2_2": 7, "conv3_1": 10, "conv3_2": 12,
    "conv3_3": 14, "conv4_1": 17, "conv4_2": 19, "conv4_3": 21, "conv5_1": 24, "conv5_2": 26,
    "conv5_3": 28,
}  # fmt: skip
_VGG_CLASSIFIER = {"fc6": 0, "fc7": 3}
# (C, H, W) of the torchvision VGG16 features that classifier.0 flattens: 512 x 7 x 7.
_VGG_POOLED = (512, 7, 7)
_VGG_HIDDEN = (4096, 4096)

# ImageNet classifiers that the detector replaces with its own heads, and batch
# norm counters that carry no weights: present in the files, never converted.
_IGNORED = {
    "vgg": re.compile(r"classifier\.6\.(weight|bias)$"),
    "resnet": re.compile(r"fc\.(weight|bias)$|.*num_batches_tracked$"),
}
_BN_NAMES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


class ConversionError(ValueError):
    """The state_dict does not hold exactly the tensors the architecture needs."""


def _flat_shapes(tree, prefix: str) -> dict[str, tuple[int, ...]]:
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")
    return {f"{prefix}{k}": tuple(v.shape) for k, v in flat.items()}


def _spec(arch: str) -> backbones.BackboneSpec:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    return backbones.get_spec(ARCHS[arch])


def expected_variables(arch: str) -> dict[str, tuple[int, ...]]:
    """``{variable path: shape}`` of every FasterRCNN variable that a torchvision file fills."""
    spec, key = _spec(arch), jax.random.key(0)
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    body = jax.eval_shape(spec.factory().init, key, images)
    found = {
        **_flat_shapes(body["params"], "params/body/"),
        **_flat_shapes(body.get("frozen", {}), "frozen/body/"),
    }
    found = {k: v for k, v in found.items() if k.startswith(spec.weight_prefixes)}
    if spec.weight_layout == "vgg":  # torchvision's classifier holds the RoI head's fc6, fc7
        pooled = jax.ShapeDtypeStruct((1, *_VGG_POOLED[1:], _VGG_POOLED[0]), jnp.float32)
        head = jax.eval_shape(RoIHead(num_classes=2, hidden=_VGG_HIDDEN).init, key, pooled)
        fcs = {name: head["params"][name] for name in _VGG_CLASSIFIER}
        found.update(_flat_shapes(fcs, "params/head/"))
    return found


def torch_name(arch: str, path: str) -> str:
    """The torchvision state_dict name of variable ``path`` ("params/body/conv1_1/kernel")."""
    collection, *modules, leaf = path.split("/")
    if _spec(arch).weight_layout == "vgg":
        scope, layer = modules
        index = (_VGG_FEATURES if scope == "body" else _VGG_CLASSIFIER)[layer]
        group = "features" if scope == "body" else "classifier"
        return f"{group}.{index}.{'weight' if leaf == 'kernel' else leaf}"
    parts = []
    for module in modules[2:]:  # drop "body/body": FasterRCNN.body, then ResNetFPN.body
        block = re.fullmatch(r"layer(\d)_(\d+)", module)
        if block:
            parts += [f"layer{block[1]}", block[2]]
        elif module.startswith("downsample_"):
            parts += ["downsample", "0" if module == "downsample_conv" else "1"]
        else:
            parts.append(module)
    name = _BN_NAMES[leaf] if collection == "frozen" else "weight"
    return ".".join([*parts, name])


def torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The torch shape of a variable of flax shape ``flax_shape``."""
    if len(flax_shape) == 4:  # HWIO -> OIHW
        return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
    if len(flax_shape) == 2:  # (in, out) -> (out, in)
        return flax_shape[::-1]
    return flax_shape


def _to_flax(path: str, tensor: np.ndarray) -> np.ndarray:
    if path == "params/head/fc6/kernel":
        # torch input index c*49 + h*7 + w  ->  ours h*7*512 + w*512 + c.
        out = tensor.shape[0]
        return tensor.reshape(out, *_VGG_POOLED).transpose(2, 3, 1, 0).reshape(-1, out)
    if tensor.ndim == 4:
        return tensor.transpose(2, 3, 1, 0)
    if tensor.ndim == 2:
        return tensor.T
    return tensor


def convert_state_dict(state_dict: Mapping[str, np.ndarray], *, arch: str) -> dict[str, np.ndarray]:
    """torchvision ``{name: array}`` -> our ``{variable path: float32 array}``.

    Raises:
      ConversionError listing every missing, mis-shaped and unexpected tensor
      (the ImageNet classifier and batch norm counters are expected and skipped).
    """
    expected = expected_variables(arch)
    names = {torch_name(arch, path): path for path in expected}
    missing, misshaped, converted = [], [], {}
    for name, path in names.items():
        if name not in state_dict:
            missing.append(f"{name} {torch_shape(expected[path])}")
            continue
        tensor = np.asarray(state_dict[name])
        want = torch_shape(expected[path])
        if tensor.shape != want:
            misshaped.append(f"{name}: got {tensor.shape}, expected {want}")
            continue
        converted[path] = np.ascontiguousarray(_to_flax(path, tensor), dtype=np.float32)
    unexpected = sorted(
        n for n in state_dict if n not in names and not _IGNORED[_spec(arch).weight_layout].match(n)
    )
    problems = [
        (f"{len(items)} {what}", items)
        for what, items in (("missing", missing), ("mis-shaped", misshaped),
                            ("unexpected", unexpected))
        if items
    ]  # fmt: skip
    if problems:
        lines = [f"not a torchvision {arch} state_dict:"]
        for title, items in problems:
            lines += [f"  {title} tensors:"] + [f"    {item}" for item in items]
        raise ConversionError("\n".join(lines))
    return converted


def _torch_state_dict(path: str) -> dict[str, np.ndarray]:
    try:
        import torch  # noqa: PLC0415 (optional dependency, only for .pth files)
    except ImportError as e:
        raise ImportError(
            f"reading {path} needs torch (pip install 'frcnn-jax[torch]'), or convert the file to "
            ".safetensors / .npz elsewhere"
        ) from e
    state = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConversionError(f"{path} does not hold a state_dict (a mapping of name -> tensor)")
    return {
        name: (t.detach().float() if t.is_floating_point() else t.detach()).numpy()
        for name, t in state.items()
    }


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """``{name: array}`` from a ``.pth``/``.pt``, ``.safetensors`` or ``.npz``; runs no code."""
    extension = os.path.splitext(path)[1].lower()
    if extension in (".pth", ".pt", ".bin"):
        return _torch_state_dict(path)
    if extension == ".safetensors":
        from safetensors.numpy import load_file  # noqa: PLC0415 (optional dependency)

        return load_file(path)
    if extension == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    raise ValueError(f"{path}: unknown extension {extension!r}; use .pth, .safetensors or .npz")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, choices=sorted(ARCHS))
    parser.add_argument("--input", required=True, help="torchvision state_dict file")
    parser.add_argument("--output", required=True, help=".npz to write")
    args = parser.parse_args(argv)
    if not args.output.endswith(".npz"):
        parser.error(f"--output={args.output} must end in .npz")
    try:
        converted = convert_state_dict(read_state_dict(args.input), arch=args.arch)
    except (ConversionError, ImportError, ValueError, OSError) as e:
        sys.exit(f"error: {args.input}: {e}")
    np.savez(args.output, **converted)
    values = sum(v.size for v in converted.values())
    print(
        f"wrote {len(converted)} tensors ({values / 1e6:.1f}M values) to {args.output}; "
        f"train with --config.model.backbone={ARCHS[args.arch]} "
        f"--config.model.pretrained={args.output} --config.model.image_normalization=torchvision"
    )


if __name__ == "__main__":
    main()
