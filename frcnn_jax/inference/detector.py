"""Detection for users: ``Detector.from_checkpoint(workdir).predict(images)``.

Shape shorthand: B batch, Hb, Wb padded bucket size, D detections per image (model
``max_detections``), n detections of one image kept after the score threshold.

Images of any size are preprocessed exactly as the evaluation pipeline does (the same
``frcnn_jax.data.pipeline.preprocess``: min/max-size resize, zero padding to a bucket), grouped
by bucket and run in fixed-shape batches, so a program is compiled once per (batch, bucket)
shape and reused for every later call. Boxes come back in the pixels of the image as given.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from frcnn_jax import workdir as workdir_lib
from frcnn_jax.data import pipeline
from frcnn_jax.inference.predict_fn import make_predict_fn, to_original_pixels
from frcnn_jax.models.faster_rcnn import FasterRCNN

DEFAULT_SCORE_THRESHOLD = 0.5


class ImageReadError(ValueError):
    """An input image that cannot be read or understood; ``source`` names it."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"cannot read image {source}: {reason}")
        self.source = source


@dataclasses.dataclass(frozen=True)
class Detections:
    """The detections of one image, by descending score.

    boxes: float32 ``[n, 4]`` (ymin, xmin, ymax, xmax) continuous pixels of the input image.
    classes: int32 ``[n]`` 0-based; class_names: their names; scores: float32 ``[n]``.
    image_size: the input image's (height, width); source: its path, if it was read from one.
    """

    boxes: np.ndarray
    classes: np.ndarray
    class_names: tuple[str, ...]
    scores: np.ndarray
    image_size: tuple[int, int]
    source: str | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def to_dict(self) -> dict:
        """JSON-ready: boxes as ``[[ymin, xmin, ymax, xmax], ...]`` rounded to 0.01 px."""
        return {
            "source": self.source,
            "image_size": list(self.image_size),
            "box_format": "ymin, xmin, ymax, xmax (pixels)",
            "detections": [
                {
                    "box": [round(float(v), 2) for v in box],
                    "class": int(c),
                    "class_name": n,
                    "score": round(float(s), 5),
                }
                for box, c, n, s in zip(self.boxes, self.classes, self.class_names, self.scores)
            ],
        }


def load_image(image, source: str | None = None) -> np.ndarray:
    """A path, PIL image or NumPy array -> uint8 RGB ``[H, W, 3]``.

    Grayscale (``[H, W]``, ``[H, W, 1]``, mode "L"), RGBA and palette images are converted;
    alpha is dropped. Raises ``ImageReadError`` naming the image.
    """
    if isinstance(image, (str, os.PathLike)):
        source = os.fspath(image)
        try:
            with Image.open(source) as pil:
                image = pil.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise ImageReadError(source, f"{type(e).__name__}: {e}") from e
    source = source or "<array>"
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise ImageReadError(
            source, f"expected a path, PIL image or NumPy array, got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise ImageReadError(source, f"NumPy images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ImageReadError(source, f"expected shape [H, W], [H, W, 1|3|4], got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageReadError(source, f"empty image of shape {image.shape}")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _is_single(images) -> bool:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return True
    return isinstance(images, np.ndarray) and images.ndim in (2, 3)


class Detector:
    """A trained Faster R-CNN ready to detect objects in images of any size.

    Example::

        det = Detector.from_checkpoint("runs/synthetic")
        result = det.predict("image.png")          # one Detections
        results = det.predict([array, pil_image])  # a list, in input order
    """

    def __init__(
        self,
        model: FasterRCNN,
        variables: dict,
        class_names: Sequence[str],
        *,
        min_size: int,
        max_size: int,
        buckets: Sequence[Sequence[int]] | None = None,
        batch_size: int = 8,
        step: int | None = None,
    ):
        if len(class_names) != model.num_classes:
            raise ValueError(
                f"{len(class_names)} class names for a model of {model.num_classes} classes"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.variables = variables
        self.class_names = tuple(class_names)
        self.batch_size = batch_size
        self.step = step
        self.buckets = pipeline.bucket_shapes(
            min_size=int(min_size), max_size=int(max_size), buckets=buckets or None
        )
        self._predict_fn = make_predict_fn(model)
        self._preprocess_fn = _make_preprocess_fn(
            min_size=int(min_size), max_size=int(max_size), buckets=self.buckets
        )

    @classmethod
    def from_checkpoint(cls, workdir: str, step: int | None = None, *, batch_size: int = 8):
        """The model of a ``train.py`` workdir at checkpoint ``step`` (default: the latest).

        Raises:
          workdir_lib.WorkdirError: (a FileNotFoundError, ValueError or RuntimeError) naming the
          missing file or step (with the steps that exist), or the weights that do not fit.
        """
        model, variables, config, class_names, step = workdir_lib.load_model(workdir, step=step)
        return cls(
            model,
            variables,
            class_names,
            min_size=config.data.min_size,
            max_size=config.data.max_size,
            buckets=config.data.get("buckets"),
            batch_size=batch_size,
            step=step,
        )

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 ``[H, W, 3]`` -> (padded uint8 ``[Hb, Wb, 3]``, int32 (h, w), float32 (sy, sx))."""
        padded, size, scales = self._preprocess_fn(tf.convert_to_tensor(image))
        return padded.numpy(), size.numpy(), scales.numpy()

    def predict(self, images, *, score_threshold: float = DEFAULT_SCORE_THRESHOLD):
        """Detects objects in one image or a list of images.

        Args:
          images: a path, PIL image or uint8 NumPy array ``[H, W]`` / ``[H, W, 1|3|4]``, or a
            list of them (a ``[N, H, W, 3]`` array counts as a list).
          score_threshold: keep detections scoring at least this (the model itself already
            drops those below its ``score_threshold``, 0.05 by default).

        Returns:
          ``Detections`` for a single image, else a list of them in input order.

        Raises:
          ImageReadError: naming the first image that cannot be read.
        """
        single = _is_single(images)
        items = [images] if single else list(images)
        if not items:
            raise ValueError("predict() got an empty list of images")
        arrays, sources = [], []
        for i, item in enumerate(items):
            source = os.fspath(item) if isinstance(item, (str, os.PathLike)) else None
            arrays.append(load_image(item, source=source or f"<input {i}>"))
            sources.append(source)
        results = self._predict_arrays(arrays)
        results = [dataclasses.replace(r, source=s) for r, s in zip(results, sources)]
        results = [_threshold(r, score_threshold) for r in results]
        return results[0] if single else results

    def _predict_arrays(self, arrays: list[np.ndarray]) -> list[Detections]:
        prepared = [self.preprocess(a) for a in arrays]
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for i, (padded, _, _) in enumerate(prepared):
            by_bucket.setdefault(padded.shape[:2], []).append(i)
        results: list[Detections | None] = [None] * len(arrays)
        for bucket, indices in by_bucket.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = _batch(
                    [prepared[i] for i in chunk],
                    [arrays[i].shape[:2] for i in chunk],
                    bucket=bucket,
                    batch_size=_padded_batch(len(chunk), self.batch_size),
                )
                out = self._predict_fn(
                    self.variables, batch["images"], batch["image_sizes"], batch["scales"]
                )
                out = {k: np.asarray(v) for k, v in out.items()}
                boxes = to_original_pixels(out["boxes"], batch["scales"], batch["orig_sizes"])
                for row, i in enumerate(chunk):
                    keep = out["valid"][row]
                    ids = out["classes"][row][keep].astype(np.int32)
                    results[i] = Detections(
                        boxes=boxes[row][keep].astype(np.float32),
                        classes=ids,
                        class_names=tuple(self.class_names[c] for c in ids),
                        scores=out["scores"][row][keep].astype(np.float32),
                        image_size=tuple(int(s) for s in arrays[i].shape[:2]),
                    )
        return results


def _threshold(result: Detections, score_threshold: float) -> Detections:
    keep = result.scores >= score_threshold
    return dataclasses.replace(
        result,
        boxes=result.boxes[keep],
        classes=result.classes[keep],
        scores=result.scores[keep],
        class_names=tuple(n for n, k in zip(result.class_names, keep) if k),
    )


def _padded_batch(n: int, batch_size: int) -> int:
    """The smallest power of two >= n (capped at batch_size): few shapes, little waste."""
    return min(1 << (n - 1).bit_length(), batch_size)


def _batch(prepared, orig_sizes, *, bucket, batch_size: int) -> dict:
    """Stacks preprocessed images into the batch contract, filling up with padding examples.

    Padding examples are as the eval pipeline's: zero image, image size = bucket, scale 1.
    """
    fill = batch_size - len(prepared)
    zeros = np.zeros((*bucket, 3), np.uint8)
    return {
        "images": np.stack([p[0] for p in prepared] + [zeros] * fill),
        "image_sizes": np.stack([p[1] for p in prepared] + [np.array(bucket)] * fill).astype(
            np.int32
        ),
        "scales": np.stack([p[2] for p in prepared] + [np.ones(2)] * fill).astype(np.float32),
        "orig_sizes": np.array(list(orig_sizes) + [bucket] * fill, np.int32),
    }


def _make_preprocess_fn(*, min_size: int, max_size: int, buckets):
    """The eval pipeline's per-example ``preprocess`` (no flip, no boxes) as a tf.function."""

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def preprocess(image):
        return pipeline.preprocess_image(
            image, min_size=min_size, max_size=max_size, buckets=buckets
        )

    return preprocess
