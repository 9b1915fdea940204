"""Fixed-size examples kept in TensorFlow memory once loaded, read back inside the graph.

Shape shorthand: n examples, H x W image size, M max boxes per example.

For sources whose examples are costly to make and small enough to keep (the synthetic shapes: a
2,000-image split of 128 x 128 takes 100 MB): a later read is a gather in the tf.data graph, with
no Python call and no GIL, so parallel map threads scale.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


class ExampleCache:
    """Examples kept in a TF variable once drawn: later reads stay in the graph (no Python, GIL).

    One uint8 row per example: the image's H * W * 3 bytes, then the bytes of boxes float32
    [M, 4], labels int32 [M] and the object count int32 (M = max_objects; count -1 = not drawn
    yet). A row is written by one scatter and read by one gather, which exclude each other on
    the variable's lock, so a reader never sees half a row (separate variables would need an
    order between writes); two threads drawing the same example write the same row.
    """

    def __init__(self, num_images, *, image_size, max_objects):
        self._shape = (*image_size, 3)
        self._m = max_objects
        self._image_bytes = int(np.prod(self._shape))
        row = self._image_bytes + 4 * (4 * max_objects + max_objects + 1)
        empty = np.zeros((num_images, row), np.uint8)
        empty[:, -4:] = np.frombuffer(np.int32(-1).tobytes(), np.uint8)
        self.rows = tf.Variable(empty, trainable=False)

    def _as_bytes(self, values, dtype):
        return tf.reshape(tf.bitcast(tf.cast(values, dtype), tf.uint8), [-1])

    def get(self, index, draw):
        """(image uint8 [H, W, 3], boxes float32 [N, 4], labels int32 [N]) of example ``index``.

        From the cache, else from ``draw()`` (a function returning those three tensors, N <= M),
        which is then kept. ``index``: int64 [].
        """
        row = tf.gather(self.rows, index)  # [row]
        count = tf.bitcast(tf.reshape(row[-4:], [1, 4]), tf.int32)[0]

        def cached():
            image = tf.reshape(row[: self._image_bytes], self._shape)
            numbers = tf.bitcast(tf.reshape(row[self._image_bytes : -4], [-1, 4]), tf.int32)
            boxes = tf.bitcast(numbers[: 4 * self._m], tf.float32)
            labels = numbers[4 * self._m :]
            return image, tf.reshape(boxes, [-1, 4])[:count], labels[:count]

        image, boxes, labels = tf.cond(count >= 0, cached, draw)
        n = tf.shape(labels)[0]
        parts = [
            tf.reshape(image, [-1]),
            self._as_bytes(tf.pad(boxes, [[0, self._m - n], [0, 0]]), tf.float32),
            self._as_bytes(tf.pad(labels, [[0, self._m - n]]), tf.int32),
            self._as_bytes(n[None], tf.int32),
        ]
        # Written every time (a cached row with the same bytes): a stateful op inside the cond
        # would make TensorFlow's loop optimizer warn on every pipeline. The function's
        # automatic control dependencies run it.
        self.rows.scatter_update(tf.IndexedSlices(tf.concat(parts, 0)[None], index[None]))
        return image, boxes, labels
