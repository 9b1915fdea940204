"""A local folder in Pascal VOC layout, with any class names, as a detection source.

Layout (the VOC devkit's, also written by LabelImg and most annotation tools):
  ROOT/JPEGImages/<id>.jpg (or .jpeg/.png/.bmp, or the XML <filename>)
  ROOT/Annotations/<id>.xml
  ROOT/ImageSets/Main/<split>.txt     one image id per line; "trainval+test" reads both files
  ROOT/classes.txt                    one class name per line (optional, see below)

Config: data.root, data.classes ("a,b,c", a list, "voc" for the 20 VOC classes, or empty); the
split string comes from data.train_split / data.eval_split. Class names (index = label) come from
data.classes, else ROOT/classes.txt, else the sorted names found in ROOT/Annotations/*.xml (every
file, whatever the split, so that training and evaluation agree; logged).

Boxes: the XML holds 1-based inclusive pixel indices; a box covering a W x H image is
xmin=1..xmax=W. In continuous 0-based coordinates (the project's convention) pixel i spans
[i - 1, i], so ymin = ymin_px - 1, xmin = xmin_px - 1, ymax = ymax_px, xmax = xmax_px.

Annotations are parsed once on the host (thread pool): the whole split for `random_access` (the
index-planned batches of `frcnn_jax.data.indexed`), this process's shard for the stream `source`;
images are decoded in a parallel tf.data map by `decode.tf_load_rgb_or_skip` (Pillow; failures
name the file).

Bad input policy (every skip is counted and logged with example file names via absl):
  error   missing ROOT, ROOT/Annotations or ROOT/JPEGImages, missing or empty split file, no
          class names,
          malformed XML, an object with an unknown class or missing/non-numeric coordinates,
          nothing left after skipping
  skip    examples whose annotation file or image is missing, or whose image header is unreadable
          or zero-size; images that fail to decode at run time (truncated, corrupt)
  fix     boxes reaching outside the image are clipped to it; boxes with xmax < xmin or
          ymax < ymin, or with no area left after clipping, are dropped
Grayscale, palette and 4-channel images are converted to RGB. The image's own header size wins
over the XML <size> (a mismatch is counted).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from frcnn_jax.data import decode, image_records
from frcnn_jax.data.errors import DataError
from frcnn_jax.data.index import RandomAccessSource

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")
_NUM_SCAN_THREADS = 8
_MAX_NAMED_FILES = 5
_BNDBOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


class VocDirError(DataError):
    """A problem with the dataset folder that the user must fix; the message names the file."""


@dataclasses.dataclass(frozen=True)
class VocRecord:
    """One parsed example; boxes (ymin, xmin, ymax, xmax) continuous 0-based pixels, clipped."""

    image_id: str
    image_path: str
    image_size: tuple[int, int]  # (height, width) from the image header
    gt_boxes: np.ndarray  # float32 [N, 4]
    gt_classes: np.ndarray  # int32 [N], index into class_names
    gt_difficult: np.ndarray  # bool [N]
    gt_truncated: np.ndarray  # bool [N]


class Problems:
    """Counts of skipped or fixed inputs by kind, with the first few offending files."""

    def __init__(self):
        self.counts = collections.Counter()
        self.files = collections.defaultdict(list)

    def add(self, kind: str, file: str) -> None:
        self.counts[kind] += 1
        if len(self.files[kind]) < _MAX_NAMED_FILES:
            self.files[kind].append(file)

    def merge(self, other: Problems) -> None:
        for kind, count in other.counts.items():
            self.counts[kind] += count
            room = _MAX_NAMED_FILES - len(self.files[kind])
            self.files[kind].extend(other.files[kind][:room])

    def log(self, where: str, *, source: str = "voc_dir") -> None:
        for kind, count in sorted(self.counts.items()):
            logging.warning("%s %s: %d x %s, e.g. %s", source, where, count, kind, self.files[kind])


def _root(data_config) -> str:
    root = data_config.get("root") or ""
    if not root:
        raise VocDirError("data.root is not set: pass --config.data.root=/path/to/voc-folder")
    if not os.path.isdir(root):
        raise VocDirError(f"voc_dir data.root={root} is not a folder (does it exist?).")
    return root


def _names_in_annotations(root: str) -> tuple[str, ...]:
    """Sorted object names over every ROOT/Annotations/*.xml file."""
    folder = os.path.join(root, "Annotations")
    if not os.path.isdir(folder):
        raise VocDirError(f"voc_dir folder {folder} does not exist.")
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".xml"))

    def names(path):
        return {(obj.findtext("name") or "").strip() for obj in _read_xml(path).findall("object")}

    with concurrent.futures.ThreadPoolExecutor(_NUM_SCAN_THREADS) as pool:
        found = set().union(*pool.map(names, paths)) - {""}
    return tuple(sorted(found))


def class_names(data_config) -> tuple[str, ...]:
    """Class names from data.classes ("a,b,c" | list | "voc"), data.root/classes.txt or the XMLs."""
    root = _root(data_config)
    classes = data_config.get("classes") or ()
    if isinstance(classes, str):
        classes = VOC_CLASSES if classes.strip() == "voc" else classes.split(",")
    names = tuple(name.strip() for name in classes if name.strip())
    origin = "data.classes"
    if not names:
        path = os.path.join(root, "classes.txt")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                names = tuple(line.strip() for line in f if line.strip())
            origin = path
            if not names:
                raise VocDirError(f"{path} lists no class names (expected one name per line).")
        else:
            names = _names_in_annotations(root)
            if not names:
                raise VocDirError(
                    f"No class names for voc_dir {root}: its Annotations/*.xml name no object; "
                    f"set --config.data.classes=a,b,c or write {path} (one name per line)."
                )
            logging.info("voc_dir %s: no classes.txt; classes from the XML files: %s", root, names)
    duplicates = sorted(name for name, n in collections.Counter(names).items() if n > 1)
    if duplicates:
        raise VocDirError(f"Duplicate class names in {origin}: {duplicates}")
    return names


def read_split_ids(root: str, split: str, problems: Problems) -> list[str]:
    """Image ids listed in ROOT/ImageSets/Main/<s>.txt for each s in split.split("+"), in order."""
    image_ids = []
    for name in split.split("+"):
        path = os.path.join(root, "ImageSets", "Main", f"{name.strip()}.txt")
        if not os.path.isfile(path):
            raise VocDirError(f"Split file {path} does not exist (split {split!r}).")
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
        for number, line in enumerate(lines, start=1):
            if len(line.split()) > 1:
                raise VocDirError(f"{path} line {number}: expected one image id, got {line!r}.")
        ids = [line for line in lines if line]
        if not ids:
            raise VocDirError(f"Split file {path} lists no image ids.")
        image_ids.extend(ids)
    unique_ids = list(dict.fromkeys(image_ids))
    for _ in range(len(image_ids) - len(unique_ids)):
        problems.add("duplicate image id in split (kept once)", split)
    return unique_ids


def _coordinate(bndbox, tag: str, where: str) -> float:
    element = bndbox.find(tag)
    try:
        return float(element.text)
    except (AttributeError, TypeError, ValueError):
        text = None if element is None else element.text
        raise VocDirError(f"{where}: bndbox/{tag} is missing or not a number ({text!r}).") from None


def _flag(obj, tag: str) -> bool:
    element = obj.find(tag)
    return element is not None and (element.text or "").strip() in ("1", "true", "True")


def _read_xml(xml_path: str) -> ElementTree.Element:
    try:
        return ElementTree.parse(xml_path).getroot()
    except ElementTree.ParseError as error:
        raise VocDirError(f"Malformed annotation XML {xml_path}: {error}") from error


def _size_in_xml(annotation: ElementTree.Element) -> tuple[int, int] | None:
    try:
        size = annotation.find("size")
        return int(float(size.findtext("height"))), int(float(size.findtext("width")))
    except (AttributeError, TypeError, ValueError):
        return None


def _objects(
    annotation: ElementTree.Element,
    *,
    xml_path: str,
    class_names: Sequence[str],
    image_size: tuple[int, int],
    problems: Problems,
) -> dict[str, np.ndarray]:
    """Objects of one VOC XML file as arrays, boxes converted and clipped to `image_size` (h, w).

    Returns {"gt_boxes": float32 [N, 4] (ymin, xmin, ymax, xmax) continuous 0-based pixels,
    "gt_classes": int32 [N], "gt_difficult": bool [N], "gt_truncated": bool [N]}.
    """
    height, width = image_size
    if _size_in_xml(annotation) not in (None, image_size):
        problems.add("XML <size> differs from the image header (header used)", xml_path)
    label_of = {name: index for index, name in enumerate(class_names)}
    boxes, labels, difficult, truncated = [], [], [], []
    for number, obj in enumerate(annotation.findall("object"), start=1):
        where = f"{xml_path} object {number}"
        name = (obj.findtext("name") or "").strip()
        if name not in label_of:
            close = [known for known in class_names if known.lower() == name.lower()]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise VocDirError(
                f"{where}: class {name!r} is not in the class names {list(class_names)}{hint}; "
                "add it to data.classes / classes.txt."
            )
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise VocDirError(f"{where}: no <bndbox>.")
        xmin, ymin, xmax, ymax = (_coordinate(bndbox, tag, where) for tag in _BNDBOX_TAGS)
        if xmax < xmin or ymax < ymin:
            problems.add("box with xmax < xmin or ymax < ymin dropped", where)
            continue
        box = np.array([ymin - 1.0, xmin - 1.0, ymax, xmax])  # 1-based inclusive -> continuous
        clipped = np.clip(box, 0.0, [height, width, height, width])
        if not np.array_equal(box, clipped):
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                problems.add("box entirely outside the image dropped", where)
                continue
            problems.add("box clipped to the image", where)
        boxes.append(clipped)
        labels.append(label_of[name])
        difficult.append(_flag(obj, "difficult"))
        truncated.append(_flag(obj, "truncated"))
    return {
        "gt_boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "gt_classes": np.asarray(labels, np.int32),
        "gt_difficult": np.asarray(difficult, bool),
        "gt_truncated": np.asarray(truncated, bool),
    }


def _image_path(root: str, image_id: str, annotation: ElementTree.Element) -> str | None:
    """JPEGImages/<id>.<ext> as in the devkit, else the XML <filename> (LabelImg style)."""
    candidates = [os.path.join(root, "JPEGImages", image_id + ext) for ext in _IMAGE_EXTENSIONS]
    filename = (annotation.findtext("filename") or "").strip()
    if filename:
        candidates.append(os.path.join(root, "JPEGImages", filename))
    return next((path for path in candidates if os.path.isfile(path)), None)


def _scan_one(root: str, image_id: str, class_names: Sequence[str]):
    problems = Problems()
    xml_path = os.path.join(root, "Annotations", image_id + ".xml")
    if not os.path.isfile(xml_path):
        problems.add("missing annotation file (example skipped)", xml_path)
        return None, problems
    annotation = _read_xml(xml_path)
    image_path = _image_path(root, image_id, annotation)
    if image_path is None:
        problems.add("missing image (example skipped)", f"{root}/JPEGImages/{image_id}.*")
        return None, problems
    try:
        image_size = decode.read_image_size(image_path)
    except decode.ImageError as error:
        problems.add("unreadable or zero-size image (example skipped)", str(error))
        return None, problems
    arrays = _objects(
        annotation,
        xml_path=xml_path,
        class_names=class_names,
        image_size=image_size,
        problems=problems,
    )
    return VocRecord(image_id, image_path, image_size, **arrays), problems


def scan_split(
    root: str,
    split: str,
    *,
    class_names: Sequence[str],
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[list[VocRecord], Problems]:
    """Parses this process's contiguous shard of the split's ids; returns (records, problems)."""
    for folder in ("Annotations", "JPEGImages"):
        if not os.path.isdir(os.path.join(root, folder)):
            raise VocDirError(f"voc_dir folder {os.path.join(root, folder)} does not exist.")
    problems = Problems()
    image_ids = read_split_ids(root, split, problems)
    shard = np.array_split(np.asarray(image_ids, dtype=object), process_count)[process_index]
    records = []
    with concurrent.futures.ThreadPoolExecutor(_NUM_SCAN_THREADS) as pool:
        for record, found in pool.map(lambda i: _scan_one(root, i, class_names), shard):
            problems.merge(found)
            if record is not None:
                records.append(record)
    return records, problems


def records(data_config, split: str) -> list[VocRecord]:
    """Every usable example of ``split`` as parsed records (image headers only, no decode)."""
    root = _root(data_config)
    found, problems = scan_split(root, split, class_names=class_names(data_config))
    problems.log(root)
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
    """Raw examples of ROOT's `split` for this process, and the class names.

    Elements: the raw examples of ``frcnn_jax.data``'s docstring (RGB images). In training the
    example order is reshuffled every epoch from `seed`; otherwise it follows the split file.
    """
    root = _root(data_config)
    names = class_names(data_config)
    found, problems = scan_split(
        root,
        split,
        class_names=names,
        process_index=process_index,
        process_count=process_count,
    )
    problems.log(root)
    if not found:
        raise VocDirError(f"No usable examples in {root} split {split!r} (see warnings above).")
    logging.info(
        "voc_dir %s split %r: %d examples on process %d.", root, split, len(found), process_index
    )
    return image_records.to_dataset(found, training=training, seed=seed), names


def count_training_examples(
    data_config, *, split: str, exclude_difficult: bool, skip_empty: bool
) -> int:
    """Examples of ``split`` a training epoch visits (``frcnn_jax.data.count_training_examples``),
    from the annotations and image headers only. Boxes left after scanning have positive area."""
    found = records(data_config, split)
    if not skip_empty:
        return len(found)
    if exclude_difficult:
        return sum(bool(np.any(~r.gt_difficult)) for r in found)
    return sum(len(r.gt_classes) > 0 for r in found)


def random_access(data_config, *, split: str, training: bool) -> RandomAccessSource:
    """ROOT's ``split`` example by example (every process scans the whole split's annotations)."""
    del training
    root = _root(data_config)
    found = records(data_config, split)
    if not found:
        raise VocDirError(f"No usable examples in {root} split {split!r} (see warnings above).")
    logging.info("voc_dir %s split %r: %d examples.", root, split, len(found))
    return image_records.random_access(found, class_names(data_config))
