"""Decode a batch of examples in parallel, replacing any image whose decoding fails by a blank with mask 0.

tf.data has no try/except for one element, and ``ignore_errors`` drops the element, which would
shrink a batch and put hosts out of step. So each step's examples form one small dataset,
``from_tensor_slices(step).map(fn, parallel, deterministic).ignore_errors().batch(b)``, whose
elements carry their position in the batch; the survivors are scattered back into a blank batch
and ``mask`` marks them. Only one dataset per batch is created (not one per example), and a
parallel interleave keeps two steps in flight so that the cores stay busy at batch boundaries.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

Example = dict[str, tf.Tensor]


def _fill_blanks(positions: tf.Tensor, images: tf.Tensor, batch_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(images [n, ...] at ``positions``) -> (images [b, ...] with zeros elsewhere, float32 mask [b])."""
    mask = tf.scatter_nd(positions[:, None], tf.ones_like(positions, tf.float32), [batch_size])
    shape = tf.concat([[batch_size], tf.shape(images)[1:]], 0)
    full = tf.cond(tf.size(positions) == batch_size, lambda: images,
                   lambda: tf.scatter_nd(positions[:, None], images, shape))
    return tf.ensure_shape(full, [batch_size] + images.shape[1:].as_list()), mask


def map_batches_with_fallback(steps: tf.data.Dataset, fn: Callable[[Example], tf.Tensor], *, inputs: tuple[str, ...],
                              batch_size: int, image_shape: tuple[int, ...], dtype: tf.DType = tf.uint8,
                              steps_in_flight: int = 2) -> tf.data.Dataset:
    """Each step dict of [b, ...] tensors gains ``image`` = fn(example) per example (zeros where fn raised)
    and ``mask`` float32 [b] (0 there); the keys in ``inputs`` are consumed, order is kept."""

    def decode_step(step: Example) -> tf.data.Dataset:
        per_example = {key: step[key] for key in inputs}
        positions = tf.range(batch_size, dtype=tf.int32)
        decoded = (tf.data.Dataset.from_tensor_slices((positions, per_example))
                   .map(lambda position, example: (position, fn(example)),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                   .ignore_errors()
                   .batch(batch_size))
        nothing = tf.data.Dataset.from_tensors((tf.zeros([0], tf.int32), tf.zeros((0,) + image_shape, dtype)))
        rest = {key: value for key, value in step.items() if key not in inputs}

        def assemble(positions: tf.Tensor, images: tf.Tensor) -> Example:
            images, mask = _fill_blanks(positions, images, batch_size)
            return {**rest, "image": images, "mask": mask}

        return decoded.concatenate(nothing).take(1).map(assemble)

    return steps.interleave(decode_step, cycle_length=steps_in_flight, block_length=1,
                            num_parallel_calls=steps_in_flight, deterministic=True)
