"""Batches planned on a split's index (``sampler``) and read by random access (``index``).

Shape shorthand: B global batch (all processes), b = B / P this process's share, Hb x Wb the
bucket (padded image) shape of a batch, G max gt boxes.

The batch contract is ``frcnn_jax.data``'s, with these properties the tf.data stream pipeline
(``pipeline.batch_examples``) lacks:
- Topology independent: global batch k holds the same images, flips and padded shape whatever
  the number of processes; process p decodes only slots [p * b, (p + 1) * b) of it.
- Instant resume: ``start_step=K`` plans batch K directly (one permutation of the index) and
  loads nothing of batches 0..K-1.
- Several buckets in multi-process training: all processes agree on the bucket of every batch.
Padding slots (evaluation's last batch of each bucket) and examples whose image fails to decode
(a warning names the file) become padding examples: example_mask False, zero image and gt,
image_sizes = orig_sizes = (Hb, Wb), scales = (1, 1), image_ids b"". In training such an example
stays in its batch (the step sees one image without objects) so that no batch changes shape.
Images are decoded and preprocessed in a parallel, order-preserving tf.data map.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from frcnn_jax.data import pipeline, sampler
from frcnn_jax.data.index import RandomAccessSource


def fill_element(bucket, *, max_boxes: int) -> dict[str, tf.Tensor]:
    """A padding example of bucket int32 [2] (Hb, Wb) (module docstring), unbatched."""
    zeros_g = tf.zeros([max_boxes], tf.bool)
    return {
        "images": tf.zeros(tf.concat([bucket, [3]], 0), tf.uint8),
        "image_sizes": bucket,
        "orig_sizes": bucket,
        "scales": tf.ones([2], tf.float32),
        "gt_boxes": tf.zeros([max_boxes, 4], tf.float32),
        "gt_classes": tf.zeros([max_boxes], tf.int32),
        "gt_mask": zeros_g,
        "gt_difficult": zeros_g,
        "gt_valid": zeros_g,
        "example_mask": tf.constant(False),
        "gt_dropped": tf.constant(0, tf.int32),
        "image_ids": tf.constant(b""),
    }


def _slot_stream(plan, *, process_index, process_count, buckets, sizes):
    """Generator factory: this process's slots of each batch as arrays (one Python step each).

    Yields (indices int64 [b], flips bool [b], bucket int32 [2], sizes int32 [b, 2]); padding
    slots have index -1 and size (0, 0).
    """
    buckets = np.asarray(buckets, np.int32).reshape(-1, 2)
    sizes = np.concatenate([np.asarray(sizes, np.int32).reshape(-1, 2), [[0, 0]]])  # [-1] = pad

    def slots():
        for batch in plan():
            part = batch.process_slice(process_index, process_count)
            yield part.indices, part.flips, buckets[part.bucket], sizes[part.indices]

    return slots


def indexed_batches(
    source: RandomAccessSource,
    *,
    training: bool,
    batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    start_step: int,
    min_size: int,
    max_size: int,
    max_boxes: int,
    buckets,
    flip: bool,
    exclude_difficult: bool,
    skip_empty: bool,
) -> tf.data.Dataset:
    """This process's batches (dicts of tf tensors, first axis b = ``batch_size``).

    Training: endless, starting at global batch ``start_step``. Evaluation: one pass, every
    example of the split exactly once over all processes (``start_step`` must be 0).
    Other arguments as in ``pipeline.batch_examples``; ``seed`` gives the order and flips.
    """
    index = source.index
    bucket_of = sampler.bucket_ids(
        index.sizes, min_size=min_size, max_size=max_size, buckets=buckets
    )
    global_batch = batch_size * process_count
    if training:
        eligible = index.eligible(
            training=True, skip_empty=skip_empty, exclude_difficult=exclude_difficult
        )
        train_sampler = sampler.TrainingSampler(
            bucket_of, eligible, batch_size=global_batch, seed=seed, flip=flip
        )

        def plan():
            if train_sampler.batches_per_epoch == 0:
                return  # an empty stream: DetectionDataset names the split
            step = start_step
            while True:
                yield train_sampler.batch(step)
                step += 1

    else:
        if start_step:
            raise ValueError(f"start_step={start_step} is for training streams only")
        eval_plan = sampler.evaluation_batches(bucket_of, batch_size=global_batch)

        def plan():
            yield from eval_plan

    slots = tf.data.Dataset.from_generator(
        _slot_stream(
            plan,
            process_index=process_index,
            process_count=process_count,
            buckets=[tuple(int(d) for d in shape) for shape in buckets],
            sizes=index.sizes,
        ),
        output_signature=(
            tf.TensorSpec([batch_size], tf.int64),
            tf.TensorSpec([batch_size], tf.bool),
            tf.TensorSpec([2], tf.int32),
            tf.TensorSpec([batch_size, 2], tf.int32),
        ),
    ).flat_map(
        lambda indices, flips, bucket, sizes: tf.data.Dataset.from_tensor_slices(
            (indices, flips, tf.tile(bucket[None], [batch_size, 1]), sizes)
        )
    )

    def element(example_index, flip_it, bucket, size):
        # Loaded outside any tf.cond (a padding slot loads example 0 and drops it): stateful
        # loads inside a cond branch make TensorFlow's loop optimizer warn on every pipeline.
        raw, ok = source.load(tf.maximum(example_index, 0))
        real = (example_index >= 0) & ok
        decoded = tf.shape(raw["image"])[:2]
        # A stale index (files replaced after it was built) would misplace the padding.
        same = tf.debugging.Assert(
            ~real | tf.reduce_all(decoded == size),
            ["image", raw["image_id"], "decoded as", decoded, "but the index says", size],
        )
        example = dict(raw)
        with tf.control_dependencies([same]):
            example["image"] = tf.identity(raw["image"])

        def preprocess():
            return pipeline.preprocess(
                example,
                flip=flip_it,
                min_size=min_size,
                max_size=max_size,
                max_boxes=max_boxes,
                buckets=buckets,
                exclude_difficult=exclude_difficult,
                bucket=bucket,
            )

        return tf.cond(real, preprocess, lambda: fill_element(bucket, max_boxes=max_boxes))

    batches = slots.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return batches.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)


def create_batches(module, data_config, *, split, training, batch_size, seed, process_index,
                   process_count, start_step, buckets):  # fmt: skip
    """(batches, class names) through ``module.random_access``; None if the source has none.

    Reads data.{min_size, max_size, max_boxes, flip, exclude_difficult, skip_empty}.
    """
    access = getattr(module, "random_access", None)
    source = access(data_config, split=split, training=training) if access else None
    if source is None:
        return None
    batches = indexed_batches(
        source,
        training=training,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        start_step=start_step,
        min_size=int(data_config.min_size),
        max_size=int(data_config.max_size),
        max_boxes=int(data_config.max_boxes),
        buckets=buckets,
        flip=bool(data_config.flip) and training,
        exclude_difficult=bool(data_config.exclude_difficult),
        skip_empty=bool(data_config.skip_empty),
    )
    return batches, source.class_names
