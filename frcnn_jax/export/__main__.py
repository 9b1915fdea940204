"""Exports a trained detector as StableHLO, a TensorFlow SavedModel and ONNX.

  python -m frcnn_jax.export --workdir=runs/synthetic --output=exported \\
      [--checkpoint=STEP] [--formats=stablehlo,saved_model,onnx] [--batch_size=N] \\
      [--image_size=H,W]

Writes DIR/model.stablehlo, DIR/saved_model/, DIR/model.onnx, DIR/class_names.json and
DIR/export.json (see frcnn_jax.export.artifacts). Without --batch_size, StableHLO and the
SavedModel take any batch size and ONNX a batch of 1. --image_size defaults to the config's
largest padded shape.
"""

from __future__ import annotations

import argparse
import json
import sys

from frcnn_jax.export import artifacts


def _image_size(text: str) -> tuple[int, int]:
    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--image_size={text}: expected H,W or S") from None
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--image_size={text}: expected H,W or S, positive")
    return sizes


def _formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in artifacts.FORMATS]
    if unknown or not formats:
        raise argparse.ArgumentTypeError(
            f"--formats={text}: choose from {','.join(artifacts.FORMATS)}"
        )
    return formats


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m frcnn_jax.export", description=__doc__)
    parser.add_argument("--workdir", required=True, help="training workdir (train.py)")
    parser.add_argument("--checkpoint", type=int, default=None, help="step (default: latest)")
    parser.add_argument("--output", required=True, help="directory to write")
    parser.add_argument("--formats", type=_formats, default=artifacts.FORMATS)
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--image_size", type=_image_size, default=None, help="H,W")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Runs the command; returns the exit status (2: the workdir cannot be exported, or the
    ONNX packages are missing)."""
    args = parse_args(argv)
    try:
        info = artifacts.export_workdir(
            args.workdir,
            args.output,
            step=args.checkpoint,
            formats=args.formats,
            batch_size=args.batch_size,
            image_size=args.image_size,
        )
    except (artifacts.WorkdirError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = {k: info[k] for k in ("formats", "batch_size", "image_size", "step")}
    print(f"exported to {args.output}: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
