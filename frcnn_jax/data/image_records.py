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


def to_dataset(found, *, training: bool, seed: int) -> tf.data.Dataset:
    """Raw examples (``frcnn_jax.data``'s contract) of records that carry an ``image_path``.

    Images are decoded by ``decode.tf_load_rgb_or_skip`` in a parallel map (one that fails to
    decode is skipped with a warning naming it). In training the order is reshuffled every
    epoch from ``seed``; otherwise it is the records' order.
    """
    row_splits = np.cumsum([0] + [len(r.gt_classes) for r in found])
    boxes = tf.constant(np.concatenate([r.gt_boxes for r in found]).reshape(-1, 4))
    labels = tf.constant(np.concatenate([r.gt_classes for r in found]).astype(np.int32))
    difficult = tf.constant(np.concatenate([r.gt_difficult for r in found]).astype(bool))
    index = tf.data.Dataset.from_tensor_slices(
        {
            "image_path": [r.image_path for r in found],
            "image_id": [r.image_id for r in found],
            "start": row_splits[:-1],
            "end": row_splits[1:],
        }
    )
    if training:
        index = index.shuffle(len(found), seed=seed, reshuffle_each_iteration=True)

    def load(entry):
        image, ok = decode.tf_load_rgb_or_skip(entry["image_path"])
        rows = slice(entry["start"], entry["end"])
        example = {
            "image": image,
            "image_id": entry["image_id"],
            "gt_boxes": boxes[rows],
            "gt_classes": labels[rows],
            "gt_difficult": difficult[rows],
        }
        return example, ok

    dataset = index.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.filter(lambda example, decoded: decoded)
    return dataset.map(lambda example, _: example)
