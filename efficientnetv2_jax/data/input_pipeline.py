"""Train and eval iterators: global example order, per-host tf.data decoding, global sharded batches.

Per step every host (1) computes its slice of the global batch from the seeded per-epoch order
(``example_order``), (2) reads those examples by index (``sources``), (3) decodes and augments them
in parallel with per-example stateless seeds (``preprocessing``), replacing undecodable images by a
blank with ``mask`` 0 (``corrupt_guard``), (4) batches to the host batch as uint8, and (5) a
background thread turns it into global ``jax.Array``s sharded over the mesh's 'data' axis
(``device_prefetch``). Mixup/CutMix parameters come from ``mixing.mixing_params`` seeded by
(seed, step) for the whole global batch, each host keeping its slice.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

import jax
import numpy as np
import tensorflow as tf
from jax.sharding import Mesh

from efficientnetv2_jax.data import example_order, registry
from efficientnetv2_jax.data.corrupt_guard import map_batches_with_fallback
from efficientnetv2_jax.data.device_prefetch import DevicePrefetchIterator
from efficientnetv2_jax.data.sources import ExampleSource, open_source

_MAX_STEPS = 2**62
HostBatch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a training run needs to know about a dataset before reading it."""

    name: str
    num_classes: int
    multi_label: bool
    class_names: tuple[str, ...] | None
    split_sizes: dict[str, int]


def get_dataset_info(name: str, data_dir: str | None = None, download: bool = False) -> DatasetInfo:
    """Number of classes, label format, class names and the size of each split alias of ``name``.

    A TFDS dataset that is not prepared in ``data_dir`` is a FileNotFoundError saying how to prepare it, unless
    ``download`` is set: then it is downloaded and prepared first.
    """
    spec = registry.get_dataset_spec(name)
    source = open_source(name, "train", data_dir, download)
    sizes = {}
    for alias in spec.split_aliases:
        if alias in ("train", "eval", "minival"):
            sizes[alias] = open_source(name, alias, data_dir).num_examples
    return DatasetInfo(name=name, num_classes=source.num_classes, multi_label=source.multi_label,
                       class_names=source.class_names, split_sizes=sizes)


def tf_data_options(num_threads: int | None = None) -> tf.data.Options:
    """tf.data settings for a many-core host: own thread pool, 1 intra-op thread, no injected RAM buffers."""
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = num_threads or os.cpu_count() or 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = True
    options.experimental_optimization.inject_prefetch = False
    return options


def _decoded_batches(steps: tf.data.Dataset, source: ExampleSource, image_fn: Callable[[tf.Tensor, dict], tf.Tensor],
                     image_size: int, host_batch: int, inputs: tuple[str, ...]) -> tf.data.Dataset:
    """Per-step dicts of [b] examples -> host batches with uint8 ``image`` (blank where undecodable) and ``mask``."""

    def process(example):
        payload = example["payload"]
        encoded = tf.io.read_file(payload) if source.payload_is_path else payload
        return tf.ensure_shape(tf.cast(image_fn(encoded, example), tf.uint8), [image_size, image_size, 3])

    batches = map_batches_with_fallback(steps, process, inputs=("payload",) + inputs, batch_size=host_batch,
                                        image_shape=(image_size, image_size, 3))
    return batches.prefetch(2)


def _host_layout(global_batch_size: int, mesh: Mesh | None, process_index: int | None,
                 process_count: int | None) -> tuple[int, int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    devices = mesh.shape["data"] if mesh is not None else count
    if not 0 <= index < count:
        raise ValueError(f"process_index={index} must be in [0, {count}).")
    return index, count, example_order.host_batch_size(global_batch_size, count, devices)


class HostBatches:
    """Iterator of this host's numpy batches; counts the examples replaced because they failed to decode."""

    def __init__(self, dataset: tf.data.Dataset, finish: Callable[[HostBatch, int], HostBatch], first_step: int,
                 num_steps: int | None):
        self._iterator = dataset.as_numpy_iterator()
        self._finish = finish
        self._step = first_step
        self.num_steps = num_steps
        self.num_corrupt = 0

    def count_corrupt(self, num: int) -> None:
        """Adds ``num`` replaced examples to the counter and logs a warning."""
        if num:
            self.num_corrupt += num
            logging.warning("Replaced %d undecodable image(s) by blanks with mask 0 (%d so far on this host).",
                            num, self.num_corrupt)

    def __iter__(self) -> "HostBatches":
        return self

    def __next__(self) -> HostBatch:
        batch = self._finish(next(self._iterator), self._step)
        self._step += 1
        return batch

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("The train iterator is endless.")
        return self.num_steps


def train_host_batches(*, dataset: str, split: str, image_size: int, randaug_magnitude: float, mixup_alpha: float,
                       cutmix_alpha: float, global_batch_size: int, seed: int, start_step: int = 0,
                       augment: str = "randaug", data_dir: str | None = None,
                       area_range: tuple[float, float] = (0.05, 1.0), randaug_layers: int = 2,
                       random_flip: bool = True, jpeg_downscale: bool = False,
                       mesh: Mesh | None = None, process_index: int | None = None,
                       process_count: int | None = None, num_threads: int | None = None) -> HostBatches:
    """This host's numpy train batches from ``start_step`` on (simulate hosts with process_index/count)."""
    from efficientnetv2_jax.data import mixing, preprocessing  # pylint: disable=g-import-not-at-top

    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    index, count, host_batch = _host_layout(global_batch_size, mesh, process_index, process_count)
    source = open_source(dataset, split, data_dir)
    order = example_order.TrainOrder(source.num_examples, global_batch_size, seed, index, count)

    def read_step(step):
        indices, seeds = tf.numpy_function(order.host_examples, [step], [tf.int64, tf.int64], stateful=False)
        indices = tf.ensure_shape(indices, [host_batch])
        payload, label_indices, label_count = source.fetch(indices)
        return {"payload": payload, "label_indices": label_indices, "label_count": label_count,
                "seed": tf.ensure_shape(seeds, [host_batch, 2])}

    def image_fn(encoded, example):
        return preprocessing.train_image(encoded, example["seed"], image_size=image_size, augment=augment,
                                         randaug_magnitude=randaug_magnitude, randaug_layers=randaug_layers,
                                         area_range=area_range, random_flip=random_flip,
                                         jpeg_downscale=jpeg_downscale)

    steps = tf.data.Dataset.range(start_step, _MAX_STEPS).map(read_step)
    batches = _decoded_batches(steps, source, image_fn, image_size, host_batch, inputs=("seed",))
    batches = batches.with_options(tf_data_options(num_threads))
    use_mixing = mixup_alpha > 0 or cutmix_alpha > 0
    host_slice = slice(index * host_batch, (index + 1) * host_batch)

    def finish(batch: HostBatch, step: int) -> HostBatch:
        host_batches.count_corrupt(int(np.sum(batch["mask"] == 0)))
        if use_mixing:
            # Each example's draws are keyed by its global index, so this host draws its own slice only.
            batch.update(mixing.mixing_params(np.array([seed, step], np.int64), host_batch, image_size,
                                              mixup_alpha, cutmix_alpha, first_index=host_slice.start))
        return batch

    host_batches = HostBatches(batches, finish, start_step, None)
    return host_batches


def eval_host_batches(*, dataset: str, split: str, image_size: int, global_batch_size: int,
                      data_dir: str | None = None, resize_method: str = "bilinear", crop_rule: str = "v2",
                      jpeg_downscale: bool = False, mesh: Mesh | None = None, process_index: int | None = None,
                      process_count: int | None = None, num_threads: int | None = None) -> HostBatches:
    """This host's numpy eval batches: the whole split once, padded, the same number of steps on every host."""
    from efficientnetv2_jax.data import preprocessing  # pylint: disable=g-import-not-at-top

    index, count, host_batch = _host_layout(global_batch_size, mesh, process_index, process_count)
    source = open_source(dataset, split, data_dir)
    indices, is_padding = example_order.eval_host_examples(source.num_examples, global_batch_size, index, count)

    def read_step(step_indices):
        payload, label_indices, label_count = source.fetch(step_indices)
        return {"payload": payload, "label_indices": label_indices, "label_count": label_count}

    def image_fn(encoded, example):
        del example
        return preprocessing.eval_image(encoded, image_size=image_size, resize_method=resize_method,
                                        crop_rule=crop_rule, jpeg_downscale=jpeg_downscale)

    steps = tf.data.Dataset.from_tensor_slices(indices).map(read_step)
    batches = _decoded_batches(steps, source, image_fn, image_size, host_batch, inputs=())
    batches = batches.with_options(tf_data_options(num_threads))

    def finish(batch: HostBatch, step: int) -> HostBatch:
        real = ~is_padding[step]
        host_batches.count_corrupt(int(np.sum((batch["mask"] == 0) & real)))
        batch["mask"] = batch["mask"] * real.astype(np.float32)
        return batch

    host_batches = HostBatches(batches, finish, 0, len(indices))
    return host_batches


class GlobalBatches:
    """Iterator of global batches (dicts of sharded jax.Arrays) prefetched to the devices."""

    def __init__(self, host_batches: HostBatches, mesh: Mesh, prefetch: int):
        self._host_batches = host_batches
        self._prefetched = DevicePrefetchIterator(host_batches, mesh, prefetch)

    @property
    def num_corrupt(self) -> int:
        """Undecodable examples this host replaced by blanks so far (counted when read, ahead of use)."""
        return self._host_batches.num_corrupt

    def __iter__(self) -> "GlobalBatches":
        return self

    def __next__(self) -> dict[str, jax.Array]:
        return next(self._prefetched)

    def __len__(self) -> int:
        return len(self._host_batches)

    def close(self) -> None:
        """Stops the background prefetch thread."""
        self._prefetched.close()


def make_train_iterator(*, dataset: str, split: str, image_size: int, randaug_magnitude: float, mixup_alpha: float,
                        cutmix_alpha: float, global_batch_size: int, seed: int, start_step: int, mesh: Mesh,
                        augment: str = "randaug", data_dir: str | None = None,
                        area_range: tuple[float, float] = (0.05, 1.0), randaug_layers: int = 2,
                        random_flip: bool = True, jpeg_downscale: bool = False, prefetch: int = 2,
                        num_threads: int | None = None) -> GlobalBatches:
    """Endless train batches for one progressive stage, from global step ``start_step`` on.

    Keys: image uint8 [B,S,S,3], label_indices int32 [B,W] and label_count int32 [B] (compact labels, densified
    on the device by ``train.losses.dense_labels``), mask float32 [B] and, when mixup or cutmix is on,
    mixup_lambda float32 [B] and cutmix_box int32 [B,4]; all sharded over ``mesh``'s 'data' axis.
    """
    host = train_host_batches(dataset=dataset, split=split, image_size=image_size,
                              randaug_magnitude=randaug_magnitude, mixup_alpha=mixup_alpha,
                              cutmix_alpha=cutmix_alpha, global_batch_size=global_batch_size, seed=seed,
                              start_step=start_step, augment=augment, data_dir=data_dir, area_range=area_range,
                              random_flip=random_flip, jpeg_downscale=jpeg_downscale,
                              randaug_layers=randaug_layers, mesh=mesh, num_threads=num_threads)
    return GlobalBatches(host, mesh, prefetch)


def make_eval_iterator(*, dataset: str, split: str, image_size: int, global_batch_size: int, mesh: Mesh,
                       data_dir: str | None = None, resize_method: str = "bilinear", crop_rule: str = "v2",
                       jpeg_downscale: bool = False, prefetch: int = 2,
                       num_threads: int | None = None) -> GlobalBatches:
    """One pass over the whole split: keys image, label_indices, label_count, mask (0 = padding or corrupt);
    ``len()`` = steps."""
    host = eval_host_batches(dataset=dataset, split=split, image_size=image_size,
                             global_batch_size=global_batch_size, data_dir=data_dir, resize_method=resize_method,
                             crop_rule=crop_rule, jpeg_downscale=jpeg_downscale, mesh=mesh,
                             num_threads=num_threads)
    return GlobalBatches(host, mesh, prefetch)

