"""Turn host-local numpy batches into global sharded jax.Arrays, a few batches ahead, in a background thread.

The thread keeps ``prefetch`` batches already on the devices so that the host prepares batch k+1
while the devices run step k; neither side waits on the other in steady state.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

_DONE = object()
CLOSE_TIMEOUT_SECONDS = 60.0  # Longer than any one host batch takes to prepare.

logger = logging.getLogger(__name__)


def to_global_arrays(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each host's slice into one global array sharded over the mesh's 'data' axis."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


class DevicePrefetchIterator:
    """Iterator of global batches filled by a daemon thread; errors in the thread re-raise in ``next``."""

    def __init__(self, host_batches: Iterator[dict[str, np.ndarray]], mesh: Mesh, prefetch: int = 2,
                 transform: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None):
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}.")
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(host_batches, mesh, transform), daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, host_batches, mesh, transform) -> None:
        try:
            for batch in host_batches:
                if transform is not None:
                    batch = transform(batch)
                if not self._put(to_global_arrays(batch, mesh)):
                    return
            self._put(_DONE)
        except Exception as error:  # pylint: disable=broad-except  # handed to the consumer thread
            self._put(error)
        finally:
            if hasattr(host_batches, "close"):
                host_batches.close()  # Tear the source (e.g. a tf.data iterator) down here, in this thread.

    def __iter__(self) -> "DevicePrefetchIterator":
        return self

    def __next__(self) -> dict[str, jax.Array]:
        item = self._queue.get()
        if item is _DONE or isinstance(item, Exception):
            self._queue.put(item)  # stay finished (or failed) on later calls
        if item is _DONE:
            raise StopIteration
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        """Stops the background thread and waits (bounded) until it has finished its batch and closed the source."""
        self._stop.set()
        self._thread.join(CLOSE_TIMEOUT_SECONDS)
        if self._thread.is_alive():
            logger.warning("The input thread did not stop within %.0f s; it is left to finish on its own.",
                           CLOSE_TIMEOUT_SECONDS)
