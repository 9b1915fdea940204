"""Loads ImageNet weights converted by ``python -m frcnn_jax.convert_weights`` into variables.

Which variables a file must fill comes from the backbone's ``BackboneSpec.weight_prefixes``.

The ``.npz`` maps "/"-joined variable paths (``params/body/conv1_1/kernel``,
``frozen/body/body/bn1/mean``) to arrays. Loading is strict, so that a file for
another architecture, a truncated file or a head of the wrong width fails at
start-up instead of training quietly from half-random weights: every array must
name an existing variable of the same shape, and the backbone's ImageNet part
must be covered completely. Nothing in the file is executed (``allow_pickle=False``).
"""

from __future__ import annotations

import flax
import jax.numpy as jnp
import numpy as np
from absl import logging

from frcnn_jax.models import backbones


def _read(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"config.model.pretrained={path}: cannot read it as an .npz: {e}") from e


def _file_arch(arrays: dict[str, np.ndarray]) -> str | None:
    """The --arch a converted file came from, judged by its names (None if unrecognised)."""
    from frcnn_jax.weights import convert  # noqa: PLC0415 (its tables are built on demand)

    for arch in backbones.by_torchvision_arch():
        if set(convert.expected_variables(arch)) == set(arrays):
            return arch
    return None


def load_pretrained(variables: dict, path: str, *, backbone: str) -> dict:
    """A copy of ``variables`` with the arrays of ``path`` in place.

    Args:
      variables: ``{"params": ..., "frozen": ...}`` of ``FasterRCNN`` (from
        ``models.init_variables``); leaves are arrays (or anything with
        ``shape`` and ``dtype``, such as ``jax.ShapeDtypeStruct``).
      path: ``.npz`` written by ``frcnn_jax.convert_weights``.
      backbone: ``config.model.backbone`` of the model.

    Returns:
      The same structure; loaded leaves are ``jnp`` arrays cast to the
      variable's dtype, all other leaves are passed through unchanged.

    Raises:
      ValueError listing every array that names no variable, has the wrong
      shape or is not floating point, and every required variable the file lacks.
    """
    spec = backbones.get_spec(backbone)
    if spec.torchvision_arch is None:
        raise ValueError(
            f"config.model.backbone={backbone!r} has no ImageNet weights to load; "
            f"config.model.pretrained works with {sorted(backbones.by_torchvision_arch().values())}"
        )
    arrays = _read(path)
    flat = {
        f"{collection}/{name}": leaf
        for collection, tree in variables.items()
        for name, leaf in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/").items()
    }
    unknown, misshaped = [], []
    for name, array in sorted(arrays.items()):
        if name not in flat:
            unknown.append(f"{name} {array.shape}")
        elif tuple(array.shape) != tuple(flat[name].shape):
            misshaped.append(f"{name}: file {array.shape}, model {tuple(flat[name].shape)}")
        elif not np.issubdtype(array.dtype, np.floating):
            misshaped.append(f"{name}: file dtype {array.dtype}, expected floating point")
    missing = [
        name for name in flat if name.startswith(spec.weight_prefixes) and name not in arrays
    ]
    if unknown or misshaped or missing:
        file_arch, hint = _file_arch(arrays), f"convert with --arch {spec.torchvision_arch}"
        if file_arch not in (None, spec.torchvision_arch):
            hint = f"the file holds {file_arch} weights; {hint}"
        elif any("/head/fc" in item for item in misshaped):
            hint = "VGG16's fc6/fc7 need config.model.roi.hidden=(4096, 4096)"
        lines = [
            f"config.model.pretrained={path} does not fit model.backbone={backbone!r} ({hint}):"
        ]
        for title, items in (
            ("names no model variable", unknown),
            ("mis-shaped", misshaped),
            ("missing from the file", missing),
        ):
            if items:
                lines += [f"  {len(items)} {title}:"] + [f"    {item}" for item in items]
        raise ValueError("\n".join(lines))

    loaded = {name: jnp.asarray(array, dtype=flat[name].dtype) for name, array in arrays.items()}
    logging.info(
        "loaded %d pretrained tensors (%.1fM values) from %s; %d tensors keep their initialisation",
        len(loaded),
        sum(a.size for a in arrays.values()) / 1e6,
        path,
        len(flat) - len(loaded),
    )
    result = {}
    for collection, tree in variables.items():
        tree_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")
        for name in tree_flat:
            tree_flat[name] = loaded.get(f"{collection}/{name}", tree_flat[name])
        result[collection] = flax.traverse_util.unflatten_dict(tree_flat, sep="/")
    return result
