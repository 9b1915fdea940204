"""tensorflow-datasets detection datasets (Pascal VOC, COCO) as a source, incl. unions ("07+12").

Config syntax:
  data.tfds_name     one or more tfds names, comma separated: "voc/2007", "voc/2007,voc/2012",
                     "coco/2017"; a version may be pinned the tfds way ("voc/2007:5.0.0").
  split              (data.train_split / data.eval_split) comma-separated entries. "SPLIT" applies
                     to every dataset of data.tfds_name; "NAME:SPLIT" to dataset NAME only (NAME
                     need not be listed in data.tfds_name). SPLIT is any tfds split string
                     ("train+validation", "train[:10%]"); entries for one dataset are joined by "+".
  data.tfds_data_dir where prepared datasets live; None/"" = tfds' default: TFDS_DATA_DIR as set
                     when the process starts (tfds reads it on import), else ~/tensorflow_datasets.
  VOC 07+12:  tfds_name="voc/2007,voc/2012", train_split="train+validation",
              eval_split="voc/2007:test" (VOC2012's test split has no annotations).
  COCO:       tfds_name="coco/2017", train_split="train", eval_split="validation".
A dataset that is not prepared is downloaded and prepared on first use (single process only);
where that fails the error says how to prepare it by hand.

Boxes: tfds stores `objects/bbox` as tfds.features.BBox (ymin, xmin, ymax, xmax) divided by the
image height/width (VOC: the XML <size>, equal to the JPEG's in the devkit; the decoded image's
size is used to undo it). They are converted once, by `normalized_to_pixels`, to the project's
continuous 0-based pixels of the original image:
  voc   the builder (tensorflow_datasets/object_detection/voc.py) divides the devkit's 1-based
        inclusive pixel indices as they are: bbox = (ymin_px/H, xmin_px/W, ymax_px/H, xmax_px/W).
        Pixel i spans [i - 1, i], so ymin = bbox_ymin * H - 1, xmin = bbox_xmin * W - 1,
        ymax = bbox_ymax * H, xmax = bbox_xmax * W: devkit xmin=1..xmax=W covers [0, W].
  coco  the builder divides COCO's continuous [x, y, w, h]: bbox = (y/H, x/W, (y+h)/H, (x+w)/W),
        so boxes are bbox * (H, W, H, W) with no offset. Other tfds detection datasets are
        assumed to be continuous like COCO.
  Boxes are clipped to the image (a devkit xmin of 0, which occurs in VOC2012, would give -1).
Labels: `objects/label` (0-based). Flags: VOC `objects/is_difficult` -> gt_difficult. COCO crowd
boxes (`objects/is_crowd`) are dropped in training, as detectron2 does, so they are neither
positives nor matched gt; in evaluation they are kept as gt_difficult, so the VOC-style evaluator
ignores detections on them and a COCO evaluator can pass them on as iscrowd=1.
Image ids: `image/filename` without extension ("000005", "000000397133"), else `image/id`.
"""

from __future__ import annotations

import re

import jax
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from frcnn_jax.data import pipeline

# Builders whose boxes are devkit 1-based inclusive pixel indices divided by the image size.
_ONE_BASED_INCLUSIVE = frozenset({"voc"})
# "NAME:SPLIT" with NAME a tfds name (optionally /config and :version); "train[:10%]" is no match.
_NAMED_ENTRY = re.compile(r"^(?P<name>[a-z0-9_]+(?:/[\w.\-]+)?(?::[\d.*]+)?):(?P<split>[^:\[].*)$")


class TfdsSourceError(ValueError):
    """A tfds dataset that cannot be used as configured; the message says what to do."""


def parse_split_spec(tfds_names: str, split: str) -> list[tuple[str, str]]:
    """[(tfds name, tfds split string)] for data.tfds_name and a split string (syntax above).

    Example: parse_split_spec("voc/2007,voc/2012", "train+validation")
      == [("voc/2007", "train+validation"), ("voc/2012", "train+validation")].
    """
    names = [name.strip() for name in (tfds_names or "").split(",") if name.strip()]
    splits_by_name: dict[str, list[str]] = {}
    for entry in (entry.strip() for entry in split.split(",")):
        if not entry:
            continue
        match = _NAMED_ENTRY.match(entry)
        if match:
            splits_by_name.setdefault(match["name"], []).append(match["split"])
            continue
        if not names:
            raise TfdsSourceError(
                f"Split entry {entry!r} names no dataset and data.tfds_name is empty: set "
                "data.tfds_name (e.g. 'voc/2007') or write 'NAME:SPLIT' (e.g. 'voc/2007:test')."
            )
        for name in names:
            splits_by_name.setdefault(name, []).append(entry)
    if not splits_by_name:
        raise TfdsSourceError(f"Empty split {split!r} for tfds datasets {tfds_names!r}.")
    return [(name, "+".join(splits)) for name, splits in splits_by_name.items()]


def normalized_to_pixels(bbox, *, height, width, one_based_inclusive: bool) -> tf.Tensor:
    """float32 [N, 4] (ymin, xmin, ymax, xmax) continuous 0-based pixels, clipped to the image.

    `bbox` is tfds' normalised [N, 4] (ymin, xmin, ymax, xmax); `height`/`width` are the image's.
    `one_based_inclusive`: the builder divided devkit 1-based inclusive indices (VOC), so the
    minimum corners move back by one pixel. Example (VOC, H=40, W=60): devkit box x 1..60,
    y 11..40 is stored as (0.275, 1/60, 1.0, 1.0) and becomes (10, 0, 40, 60).
    """
    size = tf.cast(tf.stack([height, width, height, width]), tf.float32)  # [4]
    boxes = tf.cast(bbox, tf.float32) * size  # [N, 4]
    if one_based_inclusive:
        boxes = boxes - tf.constant([1.0, 1.0, 0.0, 0.0])
    return tf.clip_by_value(boxes, 0.0, size)


def _image_id(example) -> tf.Tensor:
    if "image/filename" in example:
        return tf.strings.regex_replace(example["image/filename"], r"\.[^./]*$", "")
    return tf.strings.as_string(example["image/id"])


def _to_raw(example, *, one_based_inclusive: bool, drop_crowd: bool):
    """tfds example -> raw example of the data contract (frcnn_jax.data)."""
    image = example["image"]  # uint8 [H, W, 3]
    objects = example["objects"]
    shape = tf.shape(image)
    boxes = normalized_to_pixels(
        objects["bbox"], height=shape[0], width=shape[1], one_based_inclusive=one_based_inclusive
    )
    labels = tf.cast(objects["label"], tf.int32)
    difficult = tf.zeros_like(labels, tf.bool)
    if "is_difficult" in objects:
        difficult = objects["is_difficult"]
    if "is_crowd" in objects:
        crowd = objects["is_crowd"]
        if drop_crowd:
            keep = tf.logical_not(crowd)
            boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
            difficult = tf.boolean_mask(difficult, keep)
        else:
            difficult = tf.logical_or(difficult, crowd)
    return {
        "image": image,
        "image_id": _image_id(example),
        "gt_boxes": tf.reshape(boxes, [-1, 4]),
        "gt_classes": labels,
        "gt_difficult": difficult,
    }


def _prepared_builder(name: str, data_dir: str | None, process_count: int):
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise TfdsSourceError(f"Unknown tfds dataset {name!r} (data.tfds_name): {error}") from error
    if builder.is_prepared():
        return builder
    how = (
        f"Prepare it where the internet is reachable with `tfds build {name} --data_dir=DIR` "
        f"(or python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
        "data_dir='DIR').download_and_prepare()\"), copy DIR here and set "
        "--config.data.tfds_data_dir=DIR or TFDS_DATA_DIR=DIR. For Pascal VOC you can also use an "
        "extracted devkit directly: --config.data.name=voc_dir "
        "--config.data.root=.../VOCdevkit/VOC2007 --config.data.classes=voc."
    )
    if process_count > 1:
        raise TfdsSourceError(
            f"tfds dataset {name!r} is not prepared in {builder.data_dir} and several processes "
            f"would download it at once. {how}"
        )
    logging.info("tfds dataset %s is not prepared in %s: downloading it.", name, builder.data_dir)
    try:
        builder.download_and_prepare()
    except Exception as error:  # Any download/extract failure gets the same advice.
        raise TfdsSourceError(
            f"Could not download and prepare tfds dataset {name!r} into {builder.data_dir}: "
            f"{type(error).__name__}: {error}. {how}"
        ) from error
    return builder


def _class_names(builder) -> tuple[str, ...]:
    features = builder.info.features
    if "image" not in features or "objects" not in features:
        raise TfdsSourceError(f"tfds dataset {builder.info.full_name} has no image and objects.")
    objects = features["objects"]
    if "bbox" not in objects or "label" not in objects:
        raise TfdsSourceError(f"tfds dataset {builder.info.full_name} has no objects/bbox+label.")
    return tuple(objects["label"].names)


def class_names(data_config) -> tuple[str, ...]:
    """Label names of the first dataset that data.train_split / data.eval_split read."""
    splits = [data_config.get(key) or "" for key in ("train_split", "eval_split")]
    name = parse_split_spec(data_config.get("tfds_name") or "", ",".join(splits))[0][0]
    builder = _prepared_builder(name, data_config.get("tfds_data_dir") or None, jax.process_count())
    return _class_names(builder)


def _header_sized(example):
    """The example with its encoded image replaced by an empty [H, W, 0] tensor of its size
    (JPEG: read from the header, nothing decoded; other formats are decoded)."""
    encoded = example["image"]
    shape = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.image.extract_jpeg_shape(encoded),
        lambda: tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False)),
    )
    return {**example, "image": tf.zeros(tf.stack([shape[0], shape[1], 0]), tf.uint8)}


def count_training_examples(
    data_config, *, split: str, exclude_difficult: bool, skip_empty: bool
) -> int:
    """Examples of ``split`` a training epoch visits (``frcnn_jax.data.count_training_examples``):
    the tfds split sizes, or with ``skip_empty`` a pass over the annotations (crowd boxes
    dropped, as in training) with image sizes from the JPEG headers."""
    data_dir = data_config.get("tfds_data_dir") or None
    total = 0
    for name, part_split in parse_split_spec(data_config.get("tfds_name") or "", split):
        builder = _prepared_builder(name, data_dir, 1)
        dataset = builder.as_dataset(
            split=part_split, decoders={"image": tfds.decode.SkipDecoding()}
        )
        if not skip_empty:
            total += int(dataset.cardinality())
            continue
        one_based = builder.name in _ONE_BASED_INCLUSIVE

        def usable(example, one_based=one_based):
            raw = _to_raw(_header_sized(example), one_based_inclusive=one_based, drop_crowd=True)
            return pipeline.has_training_boxes(raw, exclude_difficult=exclude_difficult)

        dataset = dataset.filter(usable)
        total += int(dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))
    return total


def source(
    data_config,
    *,
    split: str,
    training: bool,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[tf.data.Dataset, tuple[str, ...]]:
    """Raw examples of the tfds dataset(s) for this process's shard, and the class names.

    Elements: the raw examples of ``frcnn_jax.data``'s docstring (RGB images). Training shuffles
    files with `seed` and mixes a union by sampling in proportion to the datasets' sizes;
    evaluation reads in order, one after another.
    """
    data_dir = data_config.get("tfds_data_dir") or None
    parts = parse_split_spec(data_config.get("tfds_name") or "", split)
    datasets, sizes, label_names = [], [], None
    for index, (name, part_split) in enumerate(parts):
        builder = _prepared_builder(name, data_dir, process_count)
        names = _class_names(builder)
        if label_names is not None and names != label_names:
            raise TfdsSourceError(f"{name} has other class names than {parts[0][0]}: {names}")
        label_names = names
        shard = tfds.split_for_jax_process(
            part_split, process_index=process_index, process_count=process_count
        )
        read_config = tfds.ReadConfig(shuffle_seed=seed + index)
        try:
            dataset = builder.as_dataset(
                split=shard, shuffle_files=training, read_config=read_config
            )
        except ValueError as error:
            available = sorted(builder.info.splits.keys())
            raise TfdsSourceError(
                f"Bad split {part_split!r} for {name} (available: {available}): {error}"
            ) from error
        sizes.append(int(dataset.cardinality()))
        one_based = builder.name in _ONE_BASED_INCLUSIVE

        def to_raw(example, one_based=one_based):
            return _to_raw(example, one_based_inclusive=one_based, drop_crowd=training)

        datasets.append(dataset.map(to_raw, num_parallel_calls=tf.data.AUTOTUNE))
        logging.info(
            "tfds %s %r: %d examples on process %d", name, part_split, sizes[-1], process_index
        )
    if len(datasets) == 1:
        return datasets[0], label_names
    if training:
        # Sizes are known for tfds splits; equal weights only if a size is not (-1, -2).
        weights = [size / sum(sizes) for size in sizes] if min(sizes) > 0 else None
        mixed = tf.data.Dataset.sample_from_datasets(
            datasets, weights=weights, seed=seed, rerandomize_each_iteration=True
        )
        return mixed, label_names
    combined = datasets[0]
    for dataset in datasets[1:]:
        combined = combined.concatenate(dataset)
    return combined, label_names


def random_access(data_config, *, split: str, training: bool):
    """The split example by example (``frcnn_jax.data.tfds_random_access``), or None."""
    from frcnn_jax.data import tfds_random_access  # noqa: PLC0415 (it imports this module)

    return tfds_random_access.random_access(data_config, split=split, training=training)
