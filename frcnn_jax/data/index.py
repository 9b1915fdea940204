"""What a sampler needs to know about a split without decoding it, and random access to it.

Shape shorthand: N examples of the split.

A source that supports random access (``random_access(data_config, *, split, training)`` in its
module) returns a ``RandomAccessSource``: the split's ``ExampleIndex`` (original image sizes and
whether an example has a box training would use, from annotations and image headers) and a
``load`` function that reads example i alone. The sampler plans batches on the index; only the
examples a process's batches need are ever loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class ExampleIndex:
    """Per-example facts of a split, position i = example i.

    Attributes:
      sizes: int32 [N, 2] original (H, W) of each image.
      has_boxes: bool [N] some box survives clipping to the image with a positive area (and is
        kept in training: COCO crowd boxes are not).
      has_easy_boxes: bool [N] such a box that is also not marked difficult.
    """

    sizes: np.ndarray
    has_boxes: np.ndarray
    has_easy_boxes: np.ndarray

    def __post_init__(self):
        n = len(self.sizes)
        if (
            np.shape(self.sizes) != (n, 2)
            or not len(self.has_boxes) == len(self.has_easy_boxes) == n
        ):
            raise ValueError(
                f"inconsistent index: sizes {np.shape(self.sizes)}, has_boxes "
                f"{len(self.has_boxes)}, has_easy_boxes {len(self.has_easy_boxes)}"
            )

    def __len__(self) -> int:
        return len(self.sizes)

    def eligible(self, *, training: bool, skip_empty: bool, exclude_difficult: bool) -> np.ndarray:
        """bool [N]: examples a pass may use (training with skip_empty: those with a box)."""
        if not (training and skip_empty):
            return np.ones(len(self), bool)
        return self.has_easy_boxes if exclude_difficult else self.has_boxes

    @classmethod
    def from_boxes(cls, sizes, boxes, difficult) -> ExampleIndex:
        """Index from per-example float [N_i, 4] boxes (ymin, xmin, ymax, xmax) original pixels.

        A box counts when it keeps a positive area after clipping to its image (the rule of
        ``pipeline.usable_boxes``); ``difficult`` is bool [N_i] per example.
        """
        has_boxes, has_easy = [], []
        for (height, width), box, hard in zip(sizes, boxes, difficult):
            box = np.clip(np.asarray(box, np.float32).reshape(-1, 4), 0.0, [height, width] * 2)
            usable = (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
            has_boxes.append(usable.any())
            has_easy.append((usable & ~np.asarray(hard, bool)).any())
        return cls(
            np.asarray(sizes, np.int32).reshape(-1, 2),
            np.asarray(has_boxes, bool),
            np.asarray(has_easy, bool),
        )

    def save(self, path: str, *, key: dict, extra: dict[str, np.ndarray] | None = None) -> None:
        """Writes the index, what it describes (``key``) and ``extra`` arrays to ``path`` (.npz).

        Atomic: a reader sees the old file or the whole new one, never a partial write, so
        processes that build the same index at once do no harm.
        """
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npz.tmp")
        arrays = {f"extra_{name}": value for name, value in (extra or {}).items()}
        try:
            with os.fdopen(fd, "wb") as f:
                key_text = json.dumps(key, sort_keys=True)
                np.savez(f, key=key_text, **dataclasses.asdict(self), **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    @classmethod
    def load(cls, path: str, *, key: dict) -> tuple[ExampleIndex, dict[str, np.ndarray]] | None:
        """(index, extra arrays) saved at ``path`` for ``key``; None if absent, bad or stale."""
        try:
            with np.load(path) as saved:
                if str(saved["key"]) != json.dumps(key, sort_keys=True):
                    return None
                index = cls(saved["sizes"], saved["has_boxes"], saved["has_easy_boxes"])
                extra = {
                    n[len("extra_") :]: saved[n] for n in saved.files if n.startswith("extra_")
                }
                return index, extra
        except (OSError, KeyError, ValueError):
            return None

    @classmethod
    def concatenate(cls, parts) -> ExampleIndex:
        """The index of the parts' examples one after another."""
        return cls(
            np.concatenate([p.sizes for p in parts]).reshape(-1, 2),
            np.concatenate([p.has_boxes for p in parts]),
            np.concatenate([p.has_easy_boxes for p in parts]),
        )


@dataclasses.dataclass(frozen=True)
class RandomAccessSource:
    """A split readable example by example.

    Attributes:
      index: the split's ExampleIndex.
      class_names: names of the labels (index = 0-based label).
      load: traceable in tf.data: int64 [] example index -> (raw example of the contract in
        ``frcnn_jax.data``, ok bool []); ok False for an example that cannot be decoded (its
        image is then [0, 0, 3]; the source has logged why).
    """

    index: ExampleIndex
    class_names: tuple[str, ...]
    load: Callable[[tf.Tensor], tuple[dict, tf.Tensor]]
