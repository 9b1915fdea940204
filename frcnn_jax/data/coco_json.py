"""COCO-format JSON annotations (what labelling tools export) and a folder of images as a source.

Shape shorthand: N boxes of one image.

Config: data.train_annotations and data.eval_annotations (JSON files), data.images (the folder
each image's "file_name" is relative to). The split whose name is data.train_split reads
data.train_annotations, the one named data.eval_split reads data.eval_annotations.

Format (the parts that are read):
  "categories": [{"id", "name"}]   ids need not start at 0 or 1 nor be contiguous; the class names
                                   and their order (label = index) are the categories sorted by id
  "images": [{"id", "file_name"}]  ids of any JSON type; "width"/"height" are checked against the
                                   image header, which wins (a mismatch is counted)
  "annotations": [{"image_id", "category_id", "bbox": [x, y, w, h], "iscrowd"}]
Class names come from data.train_annotations; data.eval_annotations must list the same categories.
Boxes: bbox [x, y, w, h] in continuous pixels -> (ymin, xmin, ymax, xmax) = (y, x, y + h, x + w).
"iscrowd" boxes are dropped in training and kept as gt_difficult (ignored: neither a hit nor a
miss) in evaluation, like VOC's difficult boxes. Images without annotations are examples.
image_id of a raw example is str(the JSON image id).

Bad input policy (skips and fixes are counted and logged with examples, as in voc_dir):
  error   unset data.* field, missing file or folder, malformed JSON, no or malformed categories,
          duplicate category ids or names, duplicate image ids, an image without id or
          file_name, an annotation with an unknown category id or a malformed bbox, the eval
          file's categories differing from the training file's, nothing left after skipping
  skip    images whose file is missing, unreadable or zero-size (header read up front);
          images that fail to decode at run time; annotations of an image id not in "images"
  fix     boxes reaching outside the image are clipped; boxes with w <= 0 or h <= 0, or with
          no area left after clipping, are dropped
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os

import numpy as np
import tensorflow as tf
from absl import logging

from frcnn_jax.data import decode, image_records
from frcnn_jax.data.errors import DataError
from frcnn_jax.data.voc_dir import Problems

_NUM_SCAN_THREADS = 8


class CocoJsonError(DataError):
    """A problem with the annotation file or image folder; the message names the file."""


@dataclasses.dataclass(frozen=True)
class CocoRecord:
    """One image; boxes (ymin, xmin, ymax, xmax) continuous pixels, clipped to the image."""

    image_id: str
    image_path: str
    image_size: tuple[int, int]  # (height, width) from the image header
    gt_boxes: np.ndarray  # float32 [N, 4]
    gt_classes: np.ndarray  # int32 [N], index into class_names
    gt_difficult: np.ndarray  # bool [N], the iscrowd boxes


@dataclasses.dataclass(frozen=True)
class _Parsed:
    """The read parts of one JSON file."""

    categories: tuple[tuple[int, str], ...]  # (id, name) sorted by id
    images: tuple[tuple[object, str, object], ...]  # (JSON id, file_name, (h, w) or None)
    annotations: tuple[tuple[object, int, tuple[float, ...], bool, str], ...]  # image id,
    # category id, bbox, iscrowd, "where" for messages


def _field(data_config, name: str) -> str:
    value = data_config.get(name) or ""
    if not value:
        raise CocoJsonError(f"data.{name} is not set: pass --config.data.{name}=...")
    return str(value)


def _annotation_file(data_config, split: str) -> tuple[str, str]:
    """(config field, path) of the JSON file that holds ``split``."""
    if split == data_config.get("train_split"):
        field = "train_annotations"
    elif split == data_config.get("eval_split"):
        field = "eval_annotations"
    else:
        raise CocoJsonError(
            f"coco_json split {split!r} is neither data.train_split "
            f"({data_config.get('train_split')!r}) nor data.eval_split "
            f"({data_config.get('eval_split')!r})."
        )
    path = _field(data_config, field)
    if not os.path.isfile(path):
        raise CocoJsonError(f"data.{field}={path} does not exist.")
    return field, path


def _int_id(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise CocoJsonError(f"{where}: id {value!r} is not an integer.")
    return int(value)


def _parse_categories(coco: dict, path: str) -> tuple[tuple[int, str], ...]:
    categories = coco.get("categories")
    if not isinstance(categories, list) or not categories:
        raise CocoJsonError(
            f"{path} has no categories (its 'categories' list is missing or empty)."
        )
    pairs = []
    for number, category in enumerate(categories):
        where = f"{path} categories[{number}]"
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise CocoJsonError(f"{where}: expected an object with 'id' and 'name'.")
        name = str(category["name"]).strip()
        if not name:
            raise CocoJsonError(f"{where}: empty name.")
        pairs.append((_int_id(category["id"], where), name))
    for index, what in ((0, "ids"), (1, "names")):
        values = [pair[index] for pair in pairs]
        duplicates = sorted({v for v in values if values.count(v) > 1}, key=str)
        if duplicates:
            raise CocoJsonError(f"{path}: duplicate category {what} {duplicates}.")
    return tuple(sorted(pairs))


def _parse_bbox(annotation: dict, where: str) -> tuple[float, ...]:
    bbox = annotation.get("bbox")
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4 or not np.all(np.isfinite(values)):
        raise CocoJsonError(f"{where}: bbox {bbox!r} is not [x, y, width, height] numbers.")
    return values


@functools.lru_cache(maxsize=4)
def _parse_file(path: str, mtime_ns: int, size: int) -> _Parsed:
    """The parsed file (cached per path and modification: train and eval runs read it again)."""
    del mtime_ns, size  # cache key only
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except json.JSONDecodeError as error:
        raise CocoJsonError(f"Malformed JSON in {path}: {error}") from error
    except UnicodeDecodeError as error:
        raise CocoJsonError(f"{path} is not UTF-8 text: {error}") from error
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise CocoJsonError(f"{path} is not COCO JSON: expected an object with an 'images' list.")
    categories = _parse_categories(coco, path)
    images, seen = [], set()
    for number, image in enumerate(coco["images"]):
        where = f"{path} images[{number}]"
        if not isinstance(image, dict) or "id" not in image or not image.get("file_name"):
            raise CocoJsonError(f"{where}: expected an object with 'id' and 'file_name'.")
        key = _image_key(image["id"])
        if key in seen:
            raise CocoJsonError(f"{path}: duplicate image id {image['id']!r} ({where}).")
        seen.add(key)
        size = (image.get("height"), image.get("width"))
        images.append((image["id"], str(image["file_name"]), size if all(size) else None))
    if not isinstance(coco.get("annotations"), list):
        logging.warning("coco_json %s has no 'annotations' list: every image is empty.", path)
    annotations = []
    for number, annotation in enumerate(coco.get("annotations") or ()):
        where = f"{path} annotations[{number}] (id {annotation.get('id')!r})"
        if not isinstance(annotation, dict) or "image_id" not in annotation:
            raise CocoJsonError(f"{where}: expected an object with 'image_id'.")
        category_id = _int_id(annotation.get("category_id"), f"{where} category_id")
        bbox = _parse_bbox(annotation, where)
        crowd = bool(annotation.get("iscrowd", 0))
        annotations.append((annotation["image_id"], category_id, bbox, crowd, where))
    return _Parsed(categories, tuple(images), tuple(annotations))


def _image_key(image_id) -> str:
    return json.dumps(image_id)  # 1 and "1" stay distinct, any JSON type hashes


def _read(path: str) -> _Parsed:
    stat = os.stat(path)
    return _parse_file(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


def class_names(data_config) -> tuple[str, ...]:
    """Category names of data.train_annotations sorted by category id (index = label)."""
    _, path = _annotation_file(data_config, data_config.train_split)
    return tuple(name for _, name in _read(path).categories)


def _check_categories(data_config, field: str, parsed: _Parsed, path: str) -> None:
    if field == "train_annotations":
        return
    _, train_path = _annotation_file(data_config, data_config.train_split)
    train = _read(train_path).categories
    if parsed.categories != train:
        raise CocoJsonError(
            f"data.{field}={path} lists categories {list(parsed.categories)} but "
            f"data.train_annotations={train_path} lists {list(train)}; both must be the same."
        )


def _scan_image(images_dir: str, file_name: str):
    """((path, (h, w)) or None, (problem kind, detail) or None) of one image file."""
    path = os.path.join(images_dir, file_name)
    if not os.path.isfile(path):
        return None, ("missing image (skipped)", path)
    try:
        return (path, decode.read_image_size(path)), None
    except decode.ImageError as error:
        return None, ("unreadable or zero-size image (skipped)", str(error))


def _boxes(parsed_boxes, size: tuple[int, int], problems: Problems):
    """(boxes float32 [N, 4], kept bool [N]) of [(bbox, where)]: converted, clipped, dropped."""
    height, width = size
    boxes, kept = [], []
    for (x, y, w, h), where in parsed_boxes:
        box = np.array([y, x, y + h, x + w])
        clipped = np.clip(box, 0.0, [height, width, height, width])
        ok = w > 0 and h > 0 and clipped[2] > clipped[0] and clipped[3] > clipped[1]
        if not (w > 0 and h > 0):
            problems.add("box with width or height <= 0 dropped", where)
        elif not ok:
            problems.add("box entirely outside the image dropped", where)
        elif not np.array_equal(box, clipped):
            problems.add("box clipped to the image", where)
        boxes.append(clipped)
        kept.append(ok)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(kept, bool)


def scan(
    data_config,
    split: str,
    *,
    training: bool,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[list[CocoRecord], tuple[str, ...], Problems, str]:
    """(this process's records of ``split``, class names, problems, JSON path).

    ``training`` drops iscrowd boxes; otherwise they are kept with gt_difficult True.
    """
    field, path = _annotation_file(data_config, split)
    images_dir = _field(data_config, "images")
    if not os.path.isdir(images_dir):
        raise CocoJsonError(f"data.images={images_dir} is not a folder (does it exist?).")
    parsed = _read(path)
    _check_categories(data_config, field, parsed, path)
    label_of = {category_id: index for index, (category_id, _) in enumerate(parsed.categories)}
    problems = Problems()
    by_image = {_image_key(image[0]): [] for image in parsed.images}
    for image_id, category_id, bbox, crowd, where in parsed.annotations:
        if category_id not in label_of:
            raise CocoJsonError(
                f"{where}: category_id {category_id} is not among the category ids "
                f"{sorted(label_of)}."
            )
        if _image_key(image_id) not in by_image:
            problems.add("annotation of an image id not in 'images' (skipped)", where)
            continue
        if crowd and training:
            continue
        by_image[_image_key(image_id)].append((bbox, where, label_of[category_id], crowd))
    shard = np.array_split(np.arange(len(parsed.images)), process_count)[process_index]
    with concurrent.futures.ThreadPoolExecutor(_NUM_SCAN_THREADS) as pool:
        found = list(pool.map(lambda i: _scan_image(images_dir, parsed.images[i][1]), shard))
    records = []
    for i, (header, problem) in zip(shard, found):
        if header is None:
            problems.add(*problem)
            continue
        image_id, _, json_size = parsed.images[i]
        if json_size is not None and tuple(json_size) != header[1]:
            problems.add("JSON height/width differ from the image header (header used)", header[0])
        rows = by_image[_image_key(image_id)]
        boxes, kept = _boxes([(r[0], r[1]) for r in rows], header[1], problems)
        records.append(
            CocoRecord(
                image_id=str(image_id),
                image_path=header[0],
                image_size=header[1],
                gt_boxes=boxes[kept],
                gt_classes=np.asarray([r[2] for r in rows], np.int32)[kept],
                gt_difficult=np.asarray([r[3] for r in rows], bool)[kept],
            )
        )
    names = tuple(name for _, name in parsed.categories)
    return records, names, problems, path


def records(data_config, split: str) -> list[CocoRecord]:
    """Every usable image of ``split`` (iscrowd boxes as difficult), from headers only."""
    found, _, problems, path = scan(data_config, split, training=False)
    problems.log(path, source="coco_json")
    return found


def source(
    data_config,
    *,
    split: str,
    training: bool,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[tf.data.Dataset, tuple[str, ...]]:
    """Raw examples of ``split`` for this process, and the class names.

    Elements: the raw examples of ``frcnn_jax.data``'s docstring (RGB images). In training the
    order is reshuffled every epoch from ``seed``; otherwise it follows the JSON "images" list.
    """
    found, names, problems, path = scan(
        data_config,
        split,
        training=training,
        process_index=process_index,
        process_count=process_count,
    )
    problems.log(path, source="coco_json")
    if not found:
        raise CocoJsonError(f"No usable images in {path} (see warnings above).")
    logging.info("coco_json %s: %d images on process %d.", path, len(found), process_index)
    return image_records.to_dataset(found, training=training, seed=seed), names


def random_access(data_config, *, split: str, training: bool):
    """``split`` example by example (``frcnn_jax.data.index.RandomAccessSource``); every process
    scans the whole annotation file. In training crowd boxes are dropped, as in ``source``."""
    found, names, problems, path = scan(data_config, split, training=training)
    problems.log(path, source="coco_json")
    if not found:
        raise CocoJsonError(f"No usable images in {path} (see warnings above).")
    logging.info("coco_json %s: %d images.", path, len(found))
    return image_records.random_access(found, names)
