"""Per-image annotation records of a split, read without decoding images where possible.

Shape shorthand: N boxes of one image.

What dataset statistics (``frcnn_jax.data.stats``) read. A record is any object with the
attributes of ``ImageRecord`` (the voc_dir and coco_json sources' own record types have them).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from frcnn_jax.data import decode
from frcnn_jax.data.index import ExampleIndex, RandomAccessSource


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image's annotations; boxes (ymin, xmin, ymax, xmax) continuous original pixels."""

    image_id: str
    image_size: tuple[int, int]  # (height, width) of the original image
    gt_boxes: np.ndarray  # float32 [N, 4]
    gt_classes: np.ndarray  # int32 [N], 0-based index into the class names
    gt_difficult: np.ndarray  # bool [N]


def from_raw_examples(dataset: tf.data.Dataset) -> list[ImageRecord]:
    """Records of a source's raw examples (decodes every image: the slow, generic path)."""
    found = []
    for example in dataset.as_numpy_iterator():
        image_id = example["image_id"]
        found.append(
            ImageRecord(
                image_id=image_id.decode() if isinstance(image_id, bytes) else str(image_id),
                image_size=tuple(int(d) for d in example["image"].shape[:2]),
                gt_boxes=np.asarray(example["gt_boxes"], np.float32).reshape(-1, 4),
                gt_classes=np.asarray(example["gt_classes"], np.int32),
                gt_difficult=np.asarray(example["gt_difficult"], bool),
            )
        )
    return found


def loader(found):
    """tf function: int64 [] position in ``found`` -> (raw example, decoded bool []).

    ``found`` are records that carry an ``image_path``. The image is decoded by
    ``decode.tf_load_rgb_or_skip`` (one that fails to decode gives ok False and a warning
    naming it).
    """
    row_splits = tf.constant(np.cumsum([0] + [len(r.gt_classes) for r in found]), tf.int64)
    boxes = tf.constant(np.concatenate([r.gt_boxes for r in found]).reshape(-1, 4))
    labels = tf.constant(np.concatenate([r.gt_classes for r in found]).astype(np.int32))
    difficult = tf.constant(np.concatenate([r.gt_difficult for r in found]).astype(bool))
    paths = tf.constant([r.image_path for r in found])
    image_ids = tf.constant([r.image_id for r in found])

    def load(position):
        image, ok = decode.tf_load_rgb_or_skip(paths[position])
        rows = slice(row_splits[position], row_splits[position + 1])
        example = {
            "image": image,
            "image_id": image_ids[position],
            "gt_boxes": boxes[rows],
            "gt_classes": labels[rows],
            "gt_difficult": difficult[rows],
        }
        return example, ok

    return load


def to_dataset(found, *, training: bool, seed: int) -> tf.data.Dataset:
    """Raw examples (``frcnn_jax.data``'s contract) of records that carry an ``image_path``.

    Images are decoded in a parallel map (``loader``; one that fails to decode is skipped). In
    training the order is reshuffled every epoch from ``seed``; otherwise it is the records'
    order.
    """
    positions = tf.data.Dataset.range(len(found))
    if training:
        positions = positions.shuffle(len(found), seed=seed, reshuffle_each_iteration=True)
    dataset = positions.map(loader(found), num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.filter(lambda example, decoded: decoded)
    return dataset.map(lambda example, _: example)


def random_access(found, class_names) -> RandomAccessSource:
    """The records (with ``image_path``) example by example, indexed from their annotations."""
    index = ExampleIndex.from_boxes(
        [r.image_size for r in found],
        [r.gt_boxes for r in found],
        [r.gt_difficult for r in found],
    )
    return RandomAccessSource(index, tuple(class_names), loader(found))
