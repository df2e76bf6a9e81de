"""Input pipeline: dataset registry, preprocessing, mixing, per-host sharded train/eval iterators.

TensorFlow only runs the host-side pipeline here, so it is kept off every accelerator (its GPU
allocator would otherwise grab the memory JAX needs).
"""

import tensorflow as _tf


def _hide_accelerators_from_tensorflow() -> None:
    """Makes TensorFlow CPU-only; harmless when TF's runtime was already initialised elsewhere."""
    try:
        _tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialised: TF was set up by the caller
        pass


_hide_accelerators_from_tensorflow()

from efficientnetv2_jax.data.input_pipeline import (  # noqa: E402  pylint: disable=g-import-not-at-top
    DatasetInfo,
    get_dataset_info,
    make_eval_iterator,
    make_train_iterator,
)
from efficientnetv2_jax.data.registry import registered_names  # noqa: E402  pylint: disable=g-import-not-at-top

__all__ = ["DatasetInfo", "get_dataset_info", "make_eval_iterator", "make_train_iterator", "registered_names"]
