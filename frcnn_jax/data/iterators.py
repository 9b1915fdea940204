"""Host iteration of tf.data pipelines as NumPy, and prefetching batches onto devices.

Shape shorthand: B batch (per process).
"""

from __future__ import annotations

import atexit
import collections
import itertools
import weakref
from collections.abc import Iterator

import jax
import numpy as np
import tensorflow as tf

from frcnn_jax.data.errors import DataError


class NumpyIterator:
    """Iterates a tf.data.Dataset as NumPy structures; closed when the interpreter exits.

    A live tf.data iterator whose threads run Python (``tf.numpy_function``: the synthetic
    source, Pillow decoding) deadlocks interpreter shutdown: its threads wait for the GIL while
    finalisation waits for them. Dropping the tf iterator at exit stops them first.
    """

    _live: weakref.WeakSet = weakref.WeakSet()

    def __init__(self, dataset: tf.data.Dataset, *, empty_error: str | None = None):
        self._iterator = dataset.as_numpy_iterator()
        self._empty_error = empty_error  # raised (DataError) if the very first next() stops
        NumpyIterator._live.add(self)

    def __iter__(self):
        return self

    def __next__(self):
        if self._iterator is None:
            raise StopIteration
        try:
            element = next(self._iterator)
        except StopIteration:
            if self._empty_error:
                raise DataError(self._empty_error) from None
            raise
        self._empty_error = None
        return element

    def close(self) -> None:
        """Releases the tf.data iterator (and its threads); later ``next`` calls stop."""
        self._iterator = None


@atexit.register
def _close_live_iterators() -> None:
    for iterator in list(NumpyIterator._live):
        iterator.close()


def prefetch_to_device(
    iterator: Iterator[dict], size: int = 2, sharding: jax.sharding.Sharding | None = None
) -> Iterator[dict]:
    """Yields the batches of ``iterator`` with their arrays already on device, ``size`` ahead.

    ``jax.device_put`` is asynchronous, so keeping ``size`` batches in flight overlaps the
    host-to-device copy with the running step. Every key but "image_ids" (host-only strings)
    is transferred. Without ``sharding`` arrays go to the default device; with one (e.g. a
    NamedSharding splitting axis 0 over a data mesh axis) each process's batch becomes its part
    of a global array (``jax.make_array_from_process_local_data``), which also covers multi-host.
    """

    def put(batch):
        out = dict(batch)
        for key, value in batch.items():
            if key == "image_ids":
                continue
            if sharding is None:
                out[key] = jax.device_put(value)
            else:
                out[key] = jax.make_array_from_process_local_data(sharding, np.asarray(value))
        return out

    iterator = iter(iterator)
    queue = collections.deque()
    for batch in itertools.islice(iterator, size):
        queue.append(put(batch))
    while queue:
        yield queue.popleft()
        for batch in itertools.islice(iterator, 1):
            queue.append(put(batch))
