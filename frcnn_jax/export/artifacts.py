"""Exports a training workdir's detector to a directory, in every format asked for.

``DIR`` receives, per format: ``model.stablehlo`` (StableHLO), ``saved_model/`` (TensorFlow
SavedModel), ``model.onnx`` (ONNX); and always ``class_names.json`` (index = class id) and
``export.json``: the interface (inputs and outputs: names, shapes, box format), the exported
image size and batch size per format, the preprocessing options (``min_size``, ``max_size``)
for ``frcnn_jax.export.prepare``, and the workdir and checkpoint step it came from.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence

from frcnn_jax import workdir as workdir_lib
from frcnn_jax.export import inference, onnx, saved_model, stablehlo

# What a workdir that cannot be exported raises (the message names the file or step).
WorkdirError = workdir_lib.WorkdirError

FORMATS = ("stablehlo", "saved_model", "onnx")
FILE_NAMES = {"stablehlo": "model.stablehlo", "saved_model": "saved_model", "onnx": "model.onnx"}
# ONNX models need a fixed batch (onnx.py); this one unless --batch_size says otherwise.
DEFAULT_ONNX_BATCH_SIZE = 1


def export_workdir(
    workdir: str,
    output: str,
    *,
    step: int | None = None,
    formats: Sequence[str] = FORMATS,
    batch_size: int | None = None,
    image_size: Sequence[int] | None = None,
) -> dict:
    """Writes the detector of ``workdir`` (checkpoint ``step``, default latest) to ``output``.

    Args:
      formats: any of ``FORMATS``.
      batch_size: a fixed batch size for every format; None: StableHLO and SavedModel take any
        batch size, ONNX ``DEFAULT_ONNX_BATCH_SIZE``.
      image_size: (H, W) of the exported input; default ``inference.default_image_size``.

    Returns:
      The contents of ``export.json``.

    Raises:
      ValueError: an unknown format, or a non-positive size.
      ImportError: ONNX asked for without the [export] extra installed.
      WorkdirError: the workdir or checkpoint cannot be used (the message says why).
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats {list(formats)}: choose from {list(FORMATS)}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
        raise ValueError(f"image_size must be (height, width) > 0, got {image_size}")
    if "onnx" in formats:
        onnx.check_installed()
    model, variables, config, class_names, step = workdir_lib.load_model(workdir, step=step)
    image_size = tuple(int(s) for s in (image_size or inference.default_image_size(config.data)))
    apply_fn = inference.make_apply_fn(model)
    fn = functools.partial(apply_fn, variables)
    os.makedirs(output, exist_ok=True)

    batch_sizes = {}
    for name in formats:
        path = os.path.join(output, FILE_NAMES[name])
        batch_sizes[name] = batch_size
        if name == "stablehlo":
            stablehlo.save(fn, path, image_size=image_size, batch_size=batch_size)
        elif name == "saved_model":
            saved_model.save(
                apply_fn, variables, path, image_size=image_size, batch_size=batch_size
            )
        else:
            batch_sizes[name] = batch_size or DEFAULT_ONNX_BATCH_SIZE
            onnx.save(fn, path, image_size=image_size, batch_size=batch_sizes[name])

    info = {
        "formats": {f: FILE_NAMES[f] for f in FORMATS if f in formats},
        "batch_size": batch_sizes,  # null: any batch size
        "image_size": list(image_size),
        "inputs": {  # in this order (inference.INPUT_NAMES)
            inference.INPUT_NAME: {
                "dtype": "uint8",
                "shape": ["B", *image_size, 3],
                "content": "RGB, resized (aspect kept) and zero-padded at the bottom and right; "
                "see frcnn_jax.export.prepare",
            },
            inference.SCALES_NAME: {
                "dtype": "float32",
                "shape": ["B", 2],
                "content": "each image's resize factors (sy, sx) = (new h / old h, new w / old "
                "w), resized = original * scale; ones for an image that was not resized",
            },
        },
        "outputs": {
            "boxes": "float32 [B, D, 4] (ymin, xmin, ymax, xmax) pixels of the input image",
            "classes": "int32 [B, D] 0-based index into class_names.json",
            "scores": "float32 [B, D] best first",
            "valid": "bool [B, D] True for detections (a prefix), False for padding",
        },
        "max_detections": int(model.test_options.max_detections),
        "score_threshold": float(model.test_options.score_threshold),
        "preprocessing": {
            "min_size": int(config.data.min_size),
            "max_size": int(config.data.max_size),
        },
        "class_names": list(class_names),
        "workdir": os.path.abspath(workdir),
        "step": int(step),
    }
    with open(os.path.join(output, "class_names.json"), "w") as f:
        json.dump(list(class_names), f, indent=1)
    with open(os.path.join(output, "export.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info
