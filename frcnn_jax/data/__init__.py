"""Detection data: sources of raw examples and the tf.data pipeline that batches them.

Shape shorthand: B batch (per process), G max gt boxes (data.max_boxes), N boxes of one raw
example, Hb x Wb a bucket (padded image) shape.

A source (``data.name``: "synthetic", "tfds", "voc_dir", "coco_json") yields unbatched raw examples:
  "image" uint8 [H, W, 3] RGB, "image_id" tf.string [], "gt_boxes" float32 [N, 4] (ymin, xmin, ymax,
  xmax) continuous pixels of the original image, "gt_classes" int32 [N] 0-based,
  "gt_difficult" bool [N].

``create_dataset(...)`` returns a ``DetectionDataset`` (``.info`` is a ``DatasetInfo``) whose
iteration yields NumPy batches (rules in ``frcnn_jax.data.pipeline``):
  "images" uint8 [B, Hb, Wb, 3], "image_sizes" int32 [B, 2], "orig_sizes" int32 [B, 2],
  "scales" float32 [B, 2] (resized = orig * scale), "gt_boxes" float32 [B, G, 4] resized pixels,
  "gt_classes" int32 [B, G], "gt_mask" / "gt_difficult" / "gt_valid" bool [B, G],
  "example_mask" bool [B], "image_ids" bytes object [B] (host only).
``prefetch_to_device`` moves every array but "image_ids" to devices ahead of the step.

A dataset the user must fix raises ``DataError`` (one line naming the file or field); entry
scripts print it instead of a traceback. ``records(data_config, split)`` gives the split's
annotations without decoding images (where the source allows) for ``frcnn_jax.data.stats``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from frcnn_jax.data import image_records, indexed, pipeline
from frcnn_jax.data.errors import DataError
from frcnn_jax.data.iterators import NumpyIterator, prefetch_to_device
from frcnn_jax.data.pipeline import bucket_shapes

__all__ = [
    "DataError",
    "DatasetInfo",
    "DetectionDataset",
    "NumpyIterator",
    "bucket_shapes",
    "count_training_examples",
    "create_dataset",
    "create_source",
    "get_class_names",
    "prefetch_to_device",
    "records",
]

# data.name -> module exposing source(data_config, *, split, training, seed, process_index,
# process_count) and optionally class_names(data_config) and records(data_config, split);
# imported on use so that a missing optional dependency only breaks its own source.
_SOURCES = {
    "synthetic": "frcnn_jax.data.synthetic",
    "tfds": "frcnn_jax.data.tfds_source",
    "voc_dir": "frcnn_jax.data.voc_dir",
    "coco_json": "frcnn_jax.data.coco_json",
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model needs to know about a dataset: its classes and batch geometry."""

    class_names: tuple[str, ...]
    bucket_shapes: tuple[tuple[int, int], ...]
    max_boxes: int

    @property
    def num_classes(self) -> int:
        """Number of object classes, background excluded."""
        return len(self.class_names)


@dataclasses.dataclass(frozen=True)
class DetectionDataset:
    """Batches of the data contract; iterating yields dicts of NumPy arrays.

    Every ``iter()`` starts a fresh pass (an evaluation dataset can be iterated once per eval).
    ``dataset`` is the underlying tf.data.Dataset of tf tensors.
    """

    dataset: tf.data.Dataset
    info: DatasetInfo
    split: str
    # Planned on the split's index (``frcnn_jax.data.indexed``): topology independent, instant
    # resume. False: a per-process stream (``pipeline.batch_examples``).
    indexed: bool = False

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        # An empty split (or, in training, one without a usable box) would otherwise surface as
        # a bare StopIteration somewhere in the training or evaluation loop.
        empty_error = f"split {self.split!r} yields no batch: no images or no usable boxes"
        return NumpyIterator(self.dataset, empty_error=empty_error)


def source_module(data_config):
    """The module of data.name's source (``source``, and optionally ``records``,
    ``class_names``, ``random_access``, ``count_training_examples``)."""
    return _source_module(data_config)


def _source_module(data_config):
    name = data_config.name
    if name not in _SOURCES:
        raise ValueError(f"data.name={name!r} unknown; expected one of {sorted(_SOURCES)}")
    return importlib.import_module(_SOURCES[name])


def get_class_names(data_config) -> tuple[str, ...]:
    """Class names of the dataset ``data_config`` describes (index = 0-based label)."""
    module = _source_module(data_config)
    if hasattr(module, "class_names"):  # cheap path: no dataset is built
        return tuple(module.class_names(data_config))
    _, names = module.source(
        data_config,
        split=data_config.eval_split,
        training=False,
        seed=0,
        process_index=0,
        process_count=1,
    )
    return tuple(names)


def records(data_config, split: str) -> list:
    """Per-image annotation records of ``split`` (``image_records.ImageRecord`` fields).

    Sources that know their boxes and image sizes without decoding (voc_dir, coco_json,
    synthetic) answer directly; any other source is read through its raw examples.
    """
    module = _source_module(data_config)
    if hasattr(module, "records"):
        return list(module.records(data_config, split))
    dataset, _ = create_source(data_config, split=split, training=False, seed=0)
    return image_records.from_raw_examples(dataset)


def create_source(
    data_config,
    *,
    split: str,
    training: bool,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[tf.data.Dataset, tuple[str, ...]]:
    """(raw examples of this process's shard of ``split``, class names) from data.name's source."""
    return _source_module(data_config).source(
        data_config,
        split=split,
        training=training,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )


def create_dataset(
    data_config,
    *,
    split: str,
    training: bool,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
) -> DetectionDataset:
    """This process's batches of ``split`` (batch_size is per process) and the DatasetInfo.

    ``start_step`` (training) resumes the stream: the first batch is the one an uninterrupted
    run would have seen at that step, so a restarted run sees the same data. Sources with random
    access (a ``random_access`` function: synthetic, voc_dir, tfds) are read through
    ``frcnn_jax.data.indexed``: global batch k (all processes together) is the same whatever the
    number of processes, and resuming decodes nothing before batch K. Other sources are batched
    as a stream per process, and resuming replays the skipped batches on the host.

    Reads data.{name, min_size, max_size, max_boxes, flip, exclude_difficult, skip_empty,
    shuffle_buffer} and optionally data.buckets; the source reads its own fields.
    """
    if batch_size < 1:
        raise ValueError(f"per-process batch size must be >= 1, got {batch_size}")
    if data_config.max_boxes < 1:
        raise ValueError(f"data.max_boxes must be >= 1, got {data_config.max_boxes}")
    buckets = data_config.get("buckets", None)
    shapes = pipeline.bucket_shapes(
        min_size=int(data_config.min_size),
        max_size=int(data_config.max_size),
        buckets=None if not buckets else buckets,
    )
    planned = indexed.create_batches(
        _source_module(data_config),
        data_config,
        split=split,
        training=training,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        start_step=start_step,
        buckets=shapes,
    )
    if planned is not None:  # the source has random access
        batches, class_names = planned
        info = DatasetInfo(tuple(class_names), shapes, int(data_config.max_boxes))
        return DetectionDataset(batches, info, split, indexed=True)
    raw, class_names = create_source(
        data_config,
        split=split,
        training=training,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )
    # Hosts shuffle and flip their shards with different streams.
    process_seed = int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])
    batches = pipeline.batch_examples(
        raw,
        training=training,
        batch_size=batch_size,
        seed=process_seed,
        min_size=int(data_config.min_size),
        max_size=int(data_config.max_size),
        max_boxes=int(data_config.max_boxes),
        buckets=shapes,
        flip=bool(data_config.flip),
        exclude_difficult=bool(data_config.exclude_difficult),
        skip_empty=bool(data_config.skip_empty),
        shuffle_buffer=int(data_config.shuffle_buffer),
        start_step=start_step,
    )
    info = DatasetInfo(tuple(class_names), shapes, int(data_config.max_boxes))
    return DetectionDataset(batches, info, split)


def count_training_examples(data_config) -> int:
    """Images of ``data.train_split`` that one training epoch visits, over all processes.

    Every image, or with ``data.skip_empty`` those with at least one training box (a usable
    box, not difficult when ``data.exclude_difficult``), as ``create_dataset`` filters them.
    Sources that can count from their annotations do (``count_training_examples`` in the
    source module: voc_dir, tfds; no image is decoded); otherwise one pass over the raw source.
    """
    module = _source_module(data_config)
    options = {
        "split": data_config.train_split,
        "exclude_difficult": bool(data_config.exclude_difficult),
        "skip_empty": bool(data_config.skip_empty),
    }
    if hasattr(module, "count_training_examples"):
        return int(module.count_training_examples(data_config, **options))
    raw, _ = module.source(
        data_config,
        split=options["split"],
        training=True,  # crowd boxes are dropped as in training
        seed=0,
        process_index=0,
        process_count=1,
    )
    if options["skip_empty"]:
        exclude = options["exclude_difficult"]
        raw = raw.filter(lambda ex: pipeline.has_training_boxes(ex, exclude_difficult=exclude))
    return int(raw.reduce(np.int64(0), lambda count, _: count + 1))
