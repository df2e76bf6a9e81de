"""Per-example map that replaces an example whose processing fails (e.g. a corrupt JPEG) by a fallback.

tf.data has no try/except for one element: ``ignore_errors`` drops it, which would shrink a batch
and put hosts out of step. Here each element runs in its own one-element dataset,
``from_tensors(x).map(fn).ignore_errors()`` followed by ``from_tensors(fallback(x))``, and
``take(1)`` keeps whichever comes first; ``interleave`` runs these in parallel and, with one element
per inner dataset and ``deterministic=True``, keeps the input order. Batches stay full and every host
keeps the same number of steps.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

Example = dict[str, tf.Tensor]


def map_with_fallback(dataset: tf.data.Dataset, fn: Callable[[Example], Example],
                      fallback: Callable[[Example], Example], num_parallel_calls: int = tf.data.AUTOTUNE,
                      cycle_length: int | None = None) -> tf.data.Dataset:
    """``dataset.map(fn)`` in order, but an element whose ``fn`` raises becomes ``fallback(element)``."""

    def guarded(example: Example) -> tf.data.Dataset:
        one = tf.data.Dataset.from_tensors(example)
        ok = one.map(fn).ignore_errors()
        return ok.concatenate(tf.data.Dataset.from_tensors(fallback(example))).take(1)

    return dataset.interleave(
        guarded,
        cycle_length=cycle_length or tf.data.AUTOTUNE,
        block_length=1,
        num_parallel_calls=num_parallel_calls,
        deterministic=True,
    )
