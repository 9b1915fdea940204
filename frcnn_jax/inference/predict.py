"""Detects objects in image files with a trained workdir; writes JSON and annotated PNGs.

  python -m frcnn_jax.predict --workdir=runs/synthetic --score_threshold=0.5 \\
      photo.jpg more_images/ --output=predictions

For each image: ``OUTPUT/<name>.json`` (or one line of ``OUTPUT/predictions.jsonl`` with
``--jsonl``) with boxes (ymin, xmin, ymax, xmax) in the image's pixels, class names and scores,
and ``OUTPUT/<name>.png``, the image with its labelled boxes. A directory argument means the
images directly inside it. An image that cannot be read is reported by name and skipped; the
exit status is then 1. Arguments: argparse rather than absl flags, for the list of paths.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from frcnn_jax import host_memory

if __name__ == "__main__":  # the command, not an import: before JAX starts its threads
    host_memory.tune_malloc()

from frcnn_jax import workdir as workdir_lib  # noqa: E402
from frcnn_jax.inference import detector as detector_lib  # noqa: E402
from frcnn_jax.inference import visualize  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Files as given, directories replaced by their image files (sorted, not recursive).

    Raises:
      FileNotFoundError: a path that does not exist, or a directory without images.
    """
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, name)
                for name in os.listdir(item)
                if name.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(item, name))
            )
            if not found:
                raise FileNotFoundError(
                    f"no images in directory {item} (looked for {', '.join(IMAGE_EXTENSIONS)})"
                )
            paths.extend(found)
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"no such file or directory: {item}")
    return paths


def output_names(paths: Sequence[str]) -> list[str]:
    """A distinct output stem per path: the file name without extension, suffixed on clashes."""
    names, used = [], set()
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        name, n = stem, 1
        while name in used:
            name, n = f"{stem}_{n}", n + 1
        used.add(name)
        names.append(name)
    return names


def _readable_json(record: dict) -> str:
    """Indented JSON with each detection on one line."""
    detections = record["detections"]
    text = json.dumps({**record, "detections": []}, indent=2)
    rows = ",\n".join(f"    {json.dumps(d)}" for d in detections)
    return text.replace(
        '"detections": []', f'"detections": [\n{rows}\n  ]' if rows else '"detections": []'
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m frcnn_jax.predict",
        description="Detect objects in images with a trained frcnn_jax workdir.",
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or directories of images"
    )
    parser.add_argument("--workdir", required=True, help="training workdir (train.py --workdir)")
    parser.add_argument("--output", required=True, help="directory for the JSON and PNG files")
    parser.add_argument(
        "--checkpoint", type=int, default=None, help="checkpoint step (default: the latest)"
    )
    parser.add_argument(
        "--score_threshold",
        type=float,
        default=detector_lib.DEFAULT_SCORE_THRESHOLD,
        help="keep detections scoring at least this (default %(default)s)",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="images per device batch")
    parser.add_argument(
        "--jsonl",
        action="store_true",
        help="write OUTPUT/predictions.jsonl instead of one JSON per image",
    )
    parser.add_argument("--no_images", action="store_true", help="skip the annotated PNGs")
    return parser.parse_args(argv)


def _process(det, paths, names, args, jsonl) -> list[str]:
    """Predicts a chunk of paths and writes its outputs; returns the paths that failed."""
    arrays, kept, failures = [], [], []
    for path, name in zip(paths, names):
        try:
            arrays.append(detector_lib.load_image(path))
            kept.append((path, name))
        except detector_lib.ImageReadError as e:
            print(f"error: {e}", file=sys.stderr)
            failures.append(path)
    if not arrays:
        return failures
    results = det.predict(arrays, score_threshold=args.score_threshold)
    for (path, name), image, result in zip(kept, arrays, results):
        record = {"image": path, **result.to_dict()}
        del record["source"]
        if jsonl is not None:
            jsonl.write(json.dumps(record) + "\n")
        else:
            with open(os.path.join(args.output, f"{name}.json"), "w") as f:
                f.write(_readable_json(record) + "\n")
        if not args.no_images:
            picture = visualize.draw_detections(
                image, result.boxes, result.classes, result.scores, class_names=det.class_names
            )
            picture.save(os.path.join(args.output, f"{name}.png"))
        print(f"{path}: {len(result)} detection(s)")
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit status (0 all images done, 1 some failed)."""
    args = parse_args(argv)
    try:
        paths = expand_inputs(args.inputs)
        det = detector_lib.Detector.from_checkpoint(
            args.workdir, args.checkpoint, batch_size=args.batch_size
        )
    except (FileNotFoundError, workdir_lib.WorkdirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    names = output_names(paths)
    jsonl = open(os.path.join(args.output, "predictions.jsonl"), "w") if args.jsonl else None
    failures = []
    try:
        # Chunks of a few batches: bounded memory for large directories.
        chunk = 4 * args.batch_size
        for start in range(0, len(paths), chunk):
            failures += _process(
                det, paths[start : start + chunk], names[start : start + chunk], args, jsonl
            )
    finally:
        if jsonl is not None:
            jsonl.close()
    done = len(paths) - len(failures)
    print(
        f"wrote predictions for {done} of {len(paths)} image(s) to {args.output}"
        f" (checkpoint step {det.step})"
    )
    if failures:
        print(
            f"error: {len(failures)} image(s) could not be read: {', '.join(failures)}",
            file=sys.stderr,
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
