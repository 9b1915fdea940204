"""Prepared tfds datasets read example by example, with an index built once and cached.

Shape shorthand: N examples of a split (all parts of a union, one after another).

Record access, by the format the dataset was prepared in (``builder.info.file_format``):
  array_record  tfds' random-access format (``tfds build NAME --file_format=array_record``):
                array_record's ArrayRecordDataSource over the split's file instructions.
  tfrecord      tfds' default: a TFRecord file is a sequence of (uint64 length, uint32 crc,
                payload, uint32 crc) frames, so walking the 12-byte headers (the payloads are
                skipped) finds every record's offset; a record is then one seek and one read.
  other         (parquet, riegeli): no random access here; ``random_access`` returns None and
                the dataset is read as a stream (``pipeline.batch_examples``).
Records are parsed with the builder's own features (``deserialize_example``) and turned into
raw examples by ``tfds_source._to_raw``, exactly as the stream source does.

Index: tfds stores no image sizes, so one pass reads every record, takes the size from the
image header (JPEG; other encodings are decoded) and the box flags from the annotations, in a
parallel tf.data map; minutes for COCO train, seconds for VOC. The index and the record
offsets are cached as .npz, keyed by dataset, version, split and files, in
``data.index_cache_dir`` if set, else ``DATA_DIR/frcnn_jax_index`` next to the prepared data,
else (read-only data dir) ``~/.cache/frcnn_jax/tfds_index``. Every process builds or reads it on
its own; writes are atomic. For a multi-host job on a read-only data dir, build it once ahead
(e.g. run ``python -m benchmarks.input_bench`` with the config for a moment) where
``data.index_cache_dir`` points to shared storage.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import struct
import threading

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from frcnn_jax.data import tfds_source
from frcnn_jax.data.index import ExampleIndex, RandomAccessSource

_INDEX_VERSION = 1
_HEADER = 12  # uint64 length + uint32 masked crc of the length
_FOOTER = 4  # uint32 masked crc of the payload


def record_offsets(filename: str, *, skip: int, take: int) -> np.ndarray:
    """int64 [take]: byte offsets of records skip..skip+take-1 of a TFRecord file (headers only)."""
    offsets = np.empty(take, np.int64)
    with tf.io.gfile.GFile(filename, "rb") as f:
        position = 0
        for record in range(skip + take):
            f.seek(position)
            header = f.read(_HEADER)
            if len(header) != _HEADER:
                raise ValueError(f"{filename}: {record} records, expected at least {skip + take}")
            if record >= skip:
                offsets[record - skip] = position
            position += _HEADER + struct.unpack("<Q", header[:8])[0] + _FOOTER
    return offsets


def tf_bytes(data: bytes) -> np.ndarray:
    """``data`` as a tf.numpy_function result for a tf.string: a 0-d object array.

    np.bytes_ (and np.asarray(bytes)) drop trailing NUL bytes, which would cut a serialized
    example that happens to end in one.
    """
    return np.array(data, dtype=object)


class TfrecordRecords:
    """Records of tfds file instructions (TFRecord files) by position; thread-safe.

    ``offsets``: int64 [N] from ``record_offsets`` of each instruction, concatenated (computed
    when None).
    """

    def __init__(self, instructions, offsets: np.ndarray | None = None):
        self._files = [instruction.filename for instruction in instructions]
        takes = [instruction.take for instruction in instructions]
        self._starts = np.r_[0, np.cumsum(takes)].tolist()
        if offsets is None:
            offsets = np.concatenate(
                [np.zeros(0, np.int64)]
                + [record_offsets(i.filename, skip=i.skip, take=i.take) for i in instructions]
            )
        self.offsets = np.asarray(offsets, np.int64)
        self._local = threading.local()  # open files per tf.data thread

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, position: int) -> bytes:
        file_index = bisect.bisect_right(self._starts, position) - 1
        handles = self._local.__dict__.setdefault("handles", {})
        if file_index not in handles:
            handles[file_index] = tf.io.gfile.GFile(self._files[file_index], "rb")
        handle = handles[file_index]
        handle.seek(int(self.offsets[position]))
        length = struct.unpack("<Q", handle.read(_HEADER)[:8])[0]
        return handle.read(length)


def _records(builder, instructions, offsets):
    """A positional reader of the split's serialized examples, or None (no random access)."""
    file_format = builder.info.file_format or tfds.core.FileFormat.TFRECORD
    if file_format == tfds.core.FileFormat.ARRAY_RECORD:
        from array_record.python import array_record_data_source  # noqa: PLC0415

        return array_record_data_source.ArrayRecordDataSource(instructions)
    if file_format == tfds.core.FileFormat.TFRECORD:
        return TfrecordRecords(instructions, offsets)
    return None


def _image_size(contents):
    """int32 [2] (H, W) of an encoded image: the JPEG header, else a decode."""
    return tf.cond(
        tf.io.is_jpeg(contents),
        lambda: tf.io.extract_jpeg_shape(contents)[:2],
        lambda: tf.shape(tf.io.decode_image(contents, channels=3, expand_animations=False))[:2],
    )


def _facts(features, serialized, *, one_based: bool):
    """(size int32 [2], has_boxes, has_easy_boxes) of one serialized example (index.py)."""
    example = features.deserialize_example(
        serialized, decoders={"image": tfds.decode.SkipDecoding()}
    )
    size = _image_size(example["image"])
    objects = example["objects"]
    boxes = tfds_source.normalized_to_pixels(
        objects["bbox"], height=size[0], width=size[1], one_based_inclusive=one_based
    )
    usable = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if "is_crowd" in objects:  # training drops crowd boxes
        usable &= ~tf.cast(objects["is_crowd"], tf.bool)
    easy = usable
    if "is_difficult" in objects:
        easy &= ~tf.cast(objects["is_difficult"], tf.bool)
    return size, tf.reduce_any(usable), tf.reduce_any(easy)


def _build_index(records, features, *, one_based: bool, description: str) -> ExampleIndex:
    logging.info("indexing %s (%d examples, once; then cached)...", description, len(records))

    def read(position):
        return tf_bytes(records[int(position)])

    def facts(position):
        serialized = tf.numpy_function(read, [position], tf.string, stateful=False)
        return _facts(features, tf.reshape(serialized, []), one_based=one_based)

    passes = tf.data.Dataset.range(len(records)).map(
        facts, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    sizes, has_boxes, has_easy = [], [], []
    for size, boxes, easy in passes.batch(256).as_numpy_iterator():
        sizes.append(size)
        has_boxes.append(boxes)
        has_easy.append(easy)
    if not sizes:
        return ExampleIndex(np.zeros((0, 2), np.int32), np.zeros(0, bool), np.zeros(0, bool))
    return ExampleIndex(np.concatenate(sizes), np.concatenate(has_boxes), np.concatenate(has_easy))


def _cache_dirs(data_config, builder) -> list[str]:
    explicit = data_config.get("index_cache_dir") or ""
    if explicit:
        return [explicit]
    default = os.path.join(os.path.expanduser("~"), ".cache", "frcnn_jax", "tfds_index")
    return [os.path.join(builder.data_dir, "frcnn_jax_index"), default]


def _part(data_config, builder, split: str):
    """(records, index) of one (dataset, split) part, the index from cache when it is there."""
    instructions = builder.info.splits[split].file_instructions
    file_format = builder.info.file_format or tfds.core.FileFormat.TFRECORD
    key = {
        "version": _INDEX_VERSION,
        "dataset": builder.info.full_name,
        "split": split,
        "format": str(file_format.value),
        "files": [[os.path.basename(i.filename), i.skip, i.take] for i in instructions],
    }
    name = f"{builder.info.full_name.replace('/', '_')}-{split}-"
    digest = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:16]
    filename = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name) + digest + ".npz"
    for directory in _cache_dirs(data_config, builder):
        cached = ExampleIndex.load(os.path.join(directory, filename), key=key)
        if cached is not None:
            index, extra = cached
            return _records(builder, instructions, extra.get("offsets")), index
    records = _records(builder, instructions, None)
    if records is None:
        return None, None
    one_based = builder.name in tfds_source._ONE_BASED_INCLUSIVE
    index = _build_index(
        records, builder.info.features, one_based=one_based, description=f"{name}{split}"
    )
    extra = {"offsets": records.offsets} if isinstance(records, TfrecordRecords) else {}
    for directory in _cache_dirs(data_config, builder):
        try:
            index.save(os.path.join(directory, filename), key=key, extra=extra)
            logging.info("index of %s %s cached in %s", builder.info.full_name, split, directory)
            break
        except OSError as error:
            logging.warning("cannot cache the index in %s: %s", directory, error)
    return records, index


def random_access(data_config, *, split: str, training: bool) -> RandomAccessSource | None:
    """The tfds split (syntax of ``tfds_source``) example by example; None without random access.

    Training drops COCO crowd boxes, evaluation keeps them as difficult (``tfds_source``).
    """
    data_dir = data_config.get("tfds_data_dir") or None
    parts, label_names = [], None
    for name, part_split in tfds_source.parse_split_spec(data_config.get("tfds_name") or "", split):
        builder = tfds_source._prepared_builder(name, data_dir, jax.process_count())
        names = tfds_source._class_names(builder)
        if label_names is not None and names != label_names:
            raise tfds_source.TfdsSourceError(f"{name} has other class names: {names}")
        label_names = names
        try:
            records, index = _part(data_config, builder, part_split)
        except ValueError as error:
            available = sorted(builder.info.splits.keys())
            raise tfds_source.TfdsSourceError(
                f"Bad split {part_split!r} for {name} (available: {available}): {error}"
            ) from error
        if records is None:
            logging.warning(
                "tfds %s is stored as %s, which has no random access here: reading it as a "
                "stream (multi-host training then needs one bucket; resuming replays batches). "
                "Prepare it with --file_format=array_record or tfrecord for index-planned batches.",
                name,
                builder.info.file_format,
            )
            return None
        parts.append((builder, records, index))

    starts = np.cumsum([0] + [len(index) for _, _, index in parts]).tolist()

    def read(position):
        position = int(position)
        part = bisect.bisect_right(starts, position) - 1
        return np.int32(part), tf_bytes(parts[part][1][position - starts[part]])

    def decoder(builder):
        one_based = builder.name in tfds_source._ONE_BASED_INCLUSIVE

        def to_raw(serialized):
            example = builder.info.features.deserialize_example(serialized)
            return tfds_source._to_raw(example, one_based_inclusive=one_based, drop_crowd=training)

        return to_raw

    decoders = [decoder(builder) for builder, _, _ in parts]

    def load(position):
        part, serialized = tf.numpy_function(read, [position], (tf.int32, tf.string))
        serialized = tf.reshape(serialized, [])
        if len(decoders) == 1:
            raw = decoders[0](serialized)
        else:
            raw = tf.switch_case(
                tf.reshape(part, []), [lambda d=d: d(serialized) for d in decoders]
            )
        return raw, tf.constant(True)

    index = ExampleIndex.concatenate([index for _, _, index in parts])
    return RandomAccessSource(index, tuple(label_names), load)
