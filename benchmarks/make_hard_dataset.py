r"""Writes the harder shapes benchmark (``hard_shapes.py``) as a VOC folder and/or COCO JSON.

  python benchmarks/make_hard_dataset.py --output=/tmp/hard --format=both --seed=0

A benchmark, not a test fixture: measure changes on it, do not tune thresholds to it. Layout:
  OUTPUT/JPEGImages/<id>.jpg                     both formats (ids 000000.. trainval, then test)
  OUTPUT/Annotations/<id>.xml                    voc: 1-based inclusive pixels, <difficult>,
  OUTPUT/ImageSets/Main/{trainval,test}.txt           <truncated>
  OUTPUT/classes.txt
  OUTPUT/{trainval,test}.json                    coco: bbox [x, y, w, h], category ids 1..6,
                                                 image ids 1.., difficult boxes as iscrowd=1
Train on it as a user would:
  python train.py --config=configs/synthetic.py --workdir=W --config.data.name=voc_dir \
    --config.data.root=OUTPUT --config.data.train_split=trainval --config.data.eval_split=test
or with --config.data.name=coco_json --config.data.train_annotations=OUTPUT/trainval.json
    --config.data.eval_annotations=OUTPUT/test.json --config.data.images=OUTPUT/JPEGImages.
The output is a pure function of --seed and the image counts (any --workers).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import sys
import time

import numpy as np
from absl import app, flags
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hard_shapes  # noqa: E402

_OUTPUT = flags.DEFINE_string("output", None, "Folder to write (created).", required=True)
_FORMAT = flags.DEFINE_enum("format", "both", ["voc", "coco", "both"], "Annotation format(s).")
_NUM_TRAINVAL = flags.DEFINE_integer("num_trainval", 600, "Images in the trainval split.")
_NUM_TEST = flags.DEFINE_integer("num_test", 200, "Images in the test split.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed; the same seed writes the same files.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Drawing processes; 0: one per CPU core.")
_QUALITY = flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of the images.")


def voc_xml(image_id: str, example: dict) -> str:
    """Devkit XML of one example: continuous (ymin, xmin, ymax, xmax) -> 1-based inclusive."""
    height, width = example["image"].shape[:2]
    objects = []
    for box, label, difficult, truncated in zip(
        example["gt_boxes"], example["gt_classes"], example["gt_difficult"], example["gt_truncated"]
    ):
        ymin, xmin, ymax, xmax = (int(round(float(v))) for v in box)
        objects.append(
            f"  <object>\n    <name>{hard_shapes.CLASS_NAMES[label]}</name>\n"
            f"    <pose>Unspecified</pose>\n    <truncated>{int(truncated)}</truncated>\n"
            f"    <difficult>{int(difficult)}</difficult>\n    <bndbox>\n"
            f"      <xmin>{xmin + 1}</xmin>\n      <ymin>{ymin + 1}</ymin>\n"
            f"      <xmax>{xmax}</xmax>\n      <ymax>{ymax}</ymax>\n    </bndbox>\n  </object>\n"
        )
    return (
        f"<annotation>\n  <folder>hard_shapes</folder>\n  <filename>{image_id}.jpg</filename>\n"
        f"  <size>\n    <width>{width}</width>\n    <height>{height}</height>\n"
        f"    <depth>3</depth>\n  </size>\n  <segmented>0</segmented>\n{''.join(objects)}"
        "</annotation>\n"
    )


def coco_entries(number: int, image_id: str, example: dict, first_annotation_id: int):
    """(COCO image dict, annotation dicts) of one example; image id ``number``."""
    height, width = example["image_size"]
    image = {"id": number, "file_name": f"{image_id}.jpg", "height": height, "width": width}
    annotations = []
    for offset, (box, label, difficult) in enumerate(
        zip(example["gt_boxes"], example["gt_classes"], example["gt_difficult"])
    ):
        ymin, xmin, ymax, xmax = (float(v) for v in box)
        annotations.append(
            {
                "id": first_annotation_id + offset,
                "image_id": number,
                "category_id": int(label) + 1,
                "bbox": [xmin, ymin, xmax - xmin, ymax - ymin],
                "area": (xmax - xmin) * (ymax - ymin),
                "iscrowd": int(difficult),
                "segmentation": [],
            }
        )
    return image, annotations


def _write_one(task):
    """Draws one image, writes its JPEG (and XML); returns (id, arrays with "image_size")."""
    output, formats, split, index, number, seed, quality = task
    example = hard_shapes.render_hard_example(index, split=split, seed=seed)
    image_id = f"{number:06d}"
    buffer = io.BytesIO()
    Image.fromarray(example["image"]).save(buffer, format="JPEG", quality=quality)
    with open(os.path.join(output, "JPEGImages", f"{image_id}.jpg"), "wb") as f:
        f.write(buffer.getvalue())
    if "voc" in formats:
        with open(os.path.join(output, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(voc_xml(image_id, example))
    example["image_size"] = example.pop("image").shape[:2]  # the pixels stay on disk
    return image_id, example


def write_dataset(
    output: str,
    *,
    formats: tuple[str, ...],
    num_trainval: int,
    num_test: int,
    seed: int,
    workers: int = 1,
    jpeg_quality: int = 90,
) -> dict[str, list[tuple[str, dict]]]:
    """Writes the dataset; returns {split: [(image id, example without pixels)]}."""
    folders = ["JPEGImages"] + (["Annotations", "ImageSets/Main"] if "voc" in formats else [])
    for folder in folders:
        os.makedirs(os.path.join(output, folder), exist_ok=True)
    counts = {"trainval": num_trainval, "test": num_test}
    tasks, number = [], 0
    for split, count in counts.items():
        for index in range(count):
            tasks.append((output, formats, split, index, number, seed, jpeg_quality))
            number += 1
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.map(_write_one, tasks, chunksize=8)
    else:
        results = [_write_one(task) for task in tasks]
    by_split = {"trainval": results[:num_trainval], "test": results[num_trainval:]}
    if "voc" in formats:
        for split, rows in by_split.items():
            with open(os.path.join(output, "ImageSets", "Main", f"{split}.txt"), "w") as f:
                f.write("".join(f"{image_id}\n" for image_id, _ in rows))
        with open(os.path.join(output, "classes.txt"), "w") as f:
            f.write("".join(f"{name}\n" for name in hard_shapes.CLASS_NAMES))
    if "coco" in formats:
        categories = [{"id": i + 1, "name": n} for i, n in enumerate(hard_shapes.CLASS_NAMES)]
        next_annotation = 1
        for split, rows in by_split.items():
            images, annotations = [], []
            for image_id, example in rows:
                image, entries = coco_entries(int(image_id) + 1, image_id, example, next_annotation)
                next_annotation += len(entries)
                images.append(image)
                annotations.extend(entries)
            coco = {"images": images, "annotations": annotations, "categories": categories}
            with open(os.path.join(output, f"{split}.json"), "w") as f:
                json.dump(coco, f)
    return by_split


def summary(by_split) -> str:
    """One line per split: images, boxes, empty / difficult / truncated shares, box sizes."""
    lines = []
    for split, rows in by_split.items():
        examples = [example for _, example in rows]
        boxes = np.concatenate([e["gt_boxes"] for e in examples]).reshape(-1, 4)
        sizes = np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=-1))
        shapes = {e["image_size"] for e in examples}
        lines.append(
            f"{split}: {len(examples)} images ({len(shapes)} sizes), {len(boxes)} boxes, "
            f"{np.mean([len(e['gt_classes']) == 0 for e in examples]):.1%} empty, "
            f"{np.concatenate([e['gt_difficult'] for e in examples]).mean():.1%} difficult, "
            f"{np.concatenate([e['gt_truncated'] for e in examples]).mean():.1%} truncated, "
            f"box size min/median/max {sizes.min():.0f}/{np.median(sizes):.0f}/{sizes.max():.0f}"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    formats = ("voc", "coco") if _FORMAT.value == "both" else (_FORMAT.value,)
    start = time.perf_counter()
    by_split = write_dataset(
        _OUTPUT.value,
        formats=formats,
        num_trainval=_NUM_TRAINVAL.value,
        num_test=_NUM_TEST.value,
        seed=_SEED.value,
        workers=_WORKERS.value or os.cpu_count() or 1,
        jpeg_quality=_QUALITY.value,
    )
    print(summary(by_split))
    print(f"wrote {_OUTPUT.value} ({'+'.join(formats)}) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    app.run(main)
