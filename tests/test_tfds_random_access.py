"""Tests for frcnn_jax/data/tfds_random_access.py on the real tfds VOC builder (fake archives).

The datasets are prepared as in test_tfds_source.py, once as tfrecord (tfds' default) and once
as array_record (tfds' random-access format).
"""

import fake_voc
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from frcnn_jax import data
from frcnn_jax.data import tfds_random_access, tfds_source


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    archives = fake_voc.make_voc_devkit(tmp_path_factory.mktemp("voc_archives"))
    dirs = {}

    def download_and_extract(self, url_or_urls):
        return {key: archives for key in url_or_urls}

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
        for file_format, names in (("tfrecord", ("voc/2007", "voc/2012")), ("array_record", ())):
            dirs[file_format] = data_dir = tmp_path_factory.mktemp(file_format)
            for name in names or ("voc/2007",):
                tfds.builder(
                    name, data_dir=str(data_dir), file_format=file_format
                ).download_and_prepare(
                    download_dir=str(data_dir / "downloads"),
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False),
                )
    return {key: str(value) for key, value in dirs.items()}


def _config(data_dir, tfds_name="voc/2007", **fields):
    return ml_collections.ConfigDict(
        {"name": "tfds", "tfds_name": tfds_name, "tfds_data_dir": data_dir, **fields}
    )


def _loaded(source):
    out = {}
    for position in range(len(source.index)):
        raw, ok = source.load(tf.constant(position, tf.int64))
        assert bool(ok)
        raw = {key: value.numpy() for key, value in raw.items()}
        np.testing.assert_array_equal(raw["image"].shape[:2], source.index.sizes[position])
        out[raw["image_id"]] = raw
    return out


def _assert_same_examples(got, want):
    assert got.keys() == want.keys()
    for image_id, example in want.items():
        for key in ("image", "gt_boxes", "gt_classes", "gt_difficult"):
            np.testing.assert_array_equal(got[image_id][key], example[key], err_msg=key)


@pytest.mark.parametrize(
    "tfds_name, split",
    [("voc/2007", "train+validation"), ("voc/2007", "train[1:2]"),
     ("voc/2007,voc/2012", "train+validation")],
)  # fmt: skip
def test_examples_equal_the_stream_source(data_dirs, tfds_name, split):
    config = _config(data_dirs["tfrecord"], tfds_name)
    source = tfds_random_access.random_access(config, split=split, training=True)
    stream, names = tfds_source.source(config, split=split, training=False, seed=0)
    want = {example["image_id"]: example for example in stream.as_numpy_iterator()}
    _assert_same_examples(_loaded(source), want)
    assert source.class_names == names
    # Every fake image has a non-difficult box, but 000001's person is difficult.
    assert source.index.has_boxes.all() and source.index.has_easy_boxes.all()


def test_array_record_equals_tfrecord(data_dirs):
    split = "train+validation"
    source = tfds_random_access.random_access(
        _config(data_dirs["array_record"]), split=split, training=False
    )
    reference = tfds_random_access.random_access(
        _config(data_dirs["tfrecord"]), split=split, training=False
    )
    _assert_same_examples(_loaded(source), _loaded(reference))
    np.testing.assert_array_equal(source.index.sizes, reference.index.sizes)


def test_index_is_cached_and_keyed_by_split(data_dirs, tmp_path, monkeypatch):
    config = _config(data_dirs["tfrecord"], index_cache_dir=str(tmp_path))
    first = tfds_random_access.random_access(config, split="train", training=True)
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def no_pass(*args, **kwargs):
        raise AssertionError("the cached index was not used")

    monkeypatch.setattr(tfds_random_access, "_build_index", no_pass)
    again = tfds_random_access.random_access(config, split="train", training=True)
    np.testing.assert_array_equal(again.index.sizes, first.index.sizes)
    _assert_same_examples(_loaded(again), _loaded(first))  # offsets came from the cache too
    with pytest.raises(AssertionError, match="cached index was not used"):
        tfds_random_access.random_access(config, split="validation", training=True)


def test_record_offsets_walk_the_frames(tmp_path):
    path = str(tmp_path / "records.tfrecord")
    payloads = [b"a", b"", b"x" * 1000, b"bc\x00"]
    with tf.io.TFRecordWriter(path) as writer:
        for payload in payloads:
            writer.write(payload)
    # Each frame: 8-byte length, 4-byte crc, payload, 4-byte crc.
    offsets = tfds_random_access.record_offsets(path, skip=1, take=3)
    np.testing.assert_array_equal(offsets, [17, 33, 1049])
    records = tfds_random_access.TfrecordRecords(
        [tfds.core.utils.shard_utils.FileInstruction(path, skip=1, take=3, examples_in_shard=4)]
    )
    assert [records[i] for i in range(len(records))] == payloads[1:]
    # Through tf.numpy_function the trailing NUL byte survives (np.bytes_ would drop it).
    read = tf.numpy_function(lambda: tfds_random_access.tf_bytes(records[2]), [], tf.string)
    assert read.numpy() == b"bc\x00"
    with pytest.raises(ValueError, match="4 records, expected at least 5"):
        tfds_random_access.record_offsets(path, skip=0, take=5)


def test_create_dataset_batches_do_not_depend_on_processes(data_dirs):
    config = _config(
        data_dirs["tfrecord"], "voc/2007,voc/2012", min_size=40, max_size=80, max_boxes=2,
        flip=True, exclude_difficult=True, skip_empty=True, shuffle_buffer=4,
        buckets=((64, 64), (64, 96), (96, 64)),
    )  # fmt: skip

    def take(n, **kwargs):
        iterator = iter(
            data.create_dataset(config, split="train+validation", training=True, seed=0, **kwargs)
        )
        batches = [next(iterator) for _ in range(n)]
        iterator.close()
        return batches

    whole = take(4, batch_size=2)
    halves = [take(4, batch_size=1, process_index=p, process_count=2) for p in range(2)]
    for k in range(4):
        for key in whole[k]:
            joined = np.concatenate([halves[0][k][key], halves[1][k][key]])
            np.testing.assert_array_equal(whole[k][key], joined, err_msg=key)
