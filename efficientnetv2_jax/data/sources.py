"""Random-access example sources: read a batch of examples by index inside a tf.data graph.

Every source knows its size and turns a batch of int64 indices into a payload per example (the
encoded image bytes, or a file path for folder datasets) and compact labels: int32 [b, W] class indices
of which the first ``label_count`` [b] are real (W = 1 for single-label datasets; see
``registry.label_width``). The device densifies them inside the step (``train.losses.dense_labels``), so
a 21k batch sends kilobytes, not a [b, 21843] float matrix. Random access is what lets every host
compute its slice of one global, topology-independent example order (see DESIGN.md).

File operations go through ``tf.io.gfile``, so data dirs on gs:// work like local ones. TFDS datasets
are never downloaded unless asked (``download=True``): an unprepared one is a FileNotFoundError saying
where it was looked for and how to prepare it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from efficientnetv2_jax.data import registry
from efficientnetv2_jax.data.folder_source import load_folder_split

IMAGENET21K_FOLDER = "imagenet21k"


def default_data_dir(data_dir: str | None) -> str:
    """The TFDS data dir: ``data_dir``, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


Labels = tuple[tf.Tensor, tf.Tensor]  # int32 [b, W] class indices, int32 [b] how many of them are real


@dataclasses.dataclass
class ExampleSource:
    """One split of one dataset with random access by index."""

    num_examples: int
    num_classes: int
    multi_label: bool
    class_names: tuple[str, ...] | None
    payload_is_path: bool
    _fetch_fn: Any = dataclasses.field(repr=False)

    def fetch(self, indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Graph op: int64 [b] indices -> (string [b] payloads, int32 [b, W] label indices, int32 [b] counts)."""
        payload, (label_indices, label_count) = self._fetch_fn(indices)
        return payload, label_indices, label_count


def _single_labels(labels: tf.Tensor) -> Labels:
    """int [b] class ids as width-1 compact labels."""
    labels = tf.cast(labels, tf.int32)
    return labels[:, None], tf.ones_like(labels)


def _multi_labels(labels: tf.SparseTensor, path_hint: str) -> Labels:
    """A [b, ?] sparse label list as fixed-width compact labels (-1 padded); more than W labels is an error."""
    width = registry.label_width(multi_label=True)
    ragged = tf.RaggedTensor.from_sparse(labels)
    count = tf.cast(ragged.row_lengths(), tf.int32)
    check = tf.debugging.assert_less_equal(
        count, width, message=f"an example in {path_hint} has more than {width} labels "
                              "(registry.MULTI_LABEL_WIDTH)")
    with tf.control_dependencies([check]):
        indices = tf.cast(ragged.to_tensor(default_value=-1, shape=[None, width]), tf.int32)
    return indices, count


class _LockedRecords:
    """Serialises batched reads of an ArrayRecord data source shared by tf.data's threads."""

    def __init__(self, records: Any):
        self._records = records
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._records)

    def read(self, indices: np.ndarray) -> np.ndarray:
        with self._lock:
            return np.asarray(self._records.__getitems__([int(i) for i in indices]), dtype=object)


def _record_source(records: Any, *, image_key: str, label_key: str, num_classes: int, multi_label: bool,
                   class_names: Sequence[str] | None, path_hint: str) -> ExampleSource:
    """Source over serialized tf.train.Examples, parsed in-graph with ``tf.io.parse_example``."""
    locked = _LockedRecords(records)
    label_feature = tf.io.VarLenFeature(tf.int64) if multi_label else tf.io.FixedLenFeature([], tf.int64)
    spec = {image_key: tf.io.FixedLenFeature([], tf.string), label_key: label_feature}

    def fetch(indices: tf.Tensor) -> tuple[tf.Tensor, Labels]:
        serialized = tf.numpy_function(locked.read, [indices], tf.string, stateful=False)
        serialized.set_shape(indices.shape)
        parsed = tf.io.parse_example(serialized, spec)
        labels = parsed[label_key]
        return parsed[image_key], _multi_labels(labels, path_hint) if multi_label else _single_labels(labels)

    return ExampleSource(
        num_examples=len(locked),
        num_classes=num_classes,
        multi_label=multi_label,
        class_names=tuple(class_names) if class_names else None,
        payload_is_path=False,
        _fetch_fn=fetch,
    )


def _check_manual_download(spec: registry.DatasetSpec, data_dir: str) -> None:
    manual_dir = os.path.join(data_dir, "downloads", "manual")
    missing = [f for f in spec.manual_download_files if not tf.io.gfile.exists(os.path.join(manual_dir, f))]
    if missing:
        raise FileNotFoundError(
            f"{spec.name} must be downloaded by hand: put {', '.join(spec.manual_download_files)} into "
            f"{manual_dir} (missing: {', '.join(missing)}); it is prepared as ArrayRecord on the next run. "
            "Pass data_dir=... or set $TFDS_DATA_DIR to use another directory."
        )


def _not_prepared_error(spec: registry.DatasetSpec, root: str) -> FileNotFoundError:
    manual = (f" after putting {', '.join(spec.manual_download_files)} into {os.path.join(root, 'downloads', 'manual')}"
              if spec.manual_download_files else "")
    return FileNotFoundError(
        f"{spec.tfds_name} is not prepared in {root}: prepare it once{manual} with `tfds build {spec.tfds_name} "
        f"--data_dir={root} --file_format=array_record`, or let a training run download and prepare it "
        "(--config.dataset.download=true). Another data dir: --config.dataset.data_dir (evaluate: --data-dir) or "
        "$TFDS_DATA_DIR.")


def _tfds_builder(spec: registry.DatasetSpec, data_dir: str | None, download: bool):
    """The TFDS builder of ``spec``, prepared as ArrayRecord (downloaded and prepared first only if ``download``)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    if spec.tfds_name == registry.DIGITS_TFDS_NAME:
        from efficientnetv2_jax.data.digits import digits_builder  # pylint: disable=g-import-not-at-top

        return digits_builder(data_dir)
    root = default_data_dir(data_dir)
    builder = tfds.builder(spec.tfds_name, data_dir=root, file_format="array_record")
    if not builder.is_prepared():
        if not download:
            raise _not_prepared_error(spec, root)
        if spec.manual_download_files:
            _check_manual_download(spec, root)
        builder.download_and_prepare(file_format="array_record")
    elif builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        raise ValueError(
            f"{spec.tfds_name} in {root} was prepared as {builder.info.file_format.value}, but random access needs "
            f"ArrayRecord: run `tfds convert_format --root_data_dir={root} --dataset_dir=... "
            "--out_file_format=array_record` or prepare it again with file_format='array_record'."
        )
    return builder


def _first_feature_key(features, kind) -> str | None:
    return next((k for k, f in features.items() if isinstance(f, kind)), None)


def _tfds_source(spec: registry.DatasetSpec, split: str, data_dir: str | None, download: bool) -> ExampleSource:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    builder = _tfds_builder(spec, data_dir, download)
    features = builder.info.features
    image_key = spec.image_key if spec.image_key in features else _first_feature_key(features, tfds.features.Image)
    label_key = spec.label_key if spec.label_key in features else _first_feature_key(features, tfds.features.ClassLabel)
    if image_key is None or label_key is None:
        raise ValueError(f"TFDS dataset {spec.tfds_name!r} has no Image/ClassLabel features ({list(features)}); "
                         "only image classification datasets are supported.")
    label = features[label_key]
    records = builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    return _record_source(records, image_key=image_key, label_key=label_key, num_classes=label.num_classes,
                          multi_label=False, class_names=label.names, path_hint=spec.tfds_name)


def imagenet21k_files(data_dir: str | None, split: str) -> list[str]:
    """ArrayRecord files of one ImageNet-21k split written by ``prepare_imagenet21k``."""
    folder = os.path.join(default_data_dir(data_dir), IMAGENET21K_FOLDER, split)
    files = sorted(tf.io.gfile.glob(os.path.join(folder, "*.array_record")))
    if not files:
        raise FileNotFoundError(
            f"No ImageNet-21k ArrayRecord files in {folder}. Convert the official TFRecords once with "
            f"`python -m efficientnetv2_jax.data.prepare_imagenet21k --input 'DIR/imagenet21k*' "
            f"--output {os.path.dirname(folder)}`."
        )
    return files


def _imagenet21k_source(spec: registry.DatasetSpec, split: str, data_dir: str | None) -> ExampleSource:
    from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top

    files = imagenet21k_files(data_dir, split)
    records = array_record_data_source.ArrayRecordDataSource(files)
    return _record_source(records, image_key=spec.image_key, label_key=spec.label_key,
                          num_classes=spec.num_classes, multi_label=True, class_names=None,
                          path_hint=os.path.dirname(files[0]))


def _folder_source(spec: registry.DatasetSpec, split: str) -> ExampleSource:
    folder = load_folder_split(spec.path, split)
    paths = tf.constant(folder.paths)
    labels = tf.constant(folder.labels, dtype=tf.int64)

    def fetch(indices: tf.Tensor) -> tuple[tf.Tensor, Labels]:
        return tf.gather(paths, indices), _single_labels(tf.gather(labels, indices))

    return ExampleSource(
        num_examples=len(folder.paths),
        num_classes=len(folder.class_names),
        multi_label=False,
        class_names=folder.class_names,
        payload_is_path=True,
        _fetch_fn=fetch,
    )


@functools.lru_cache(maxsize=32)
def open_source(name: str, split: str, data_dir: str | None = None, download: bool = False) -> ExampleSource:
    """Opens split ``split`` (an alias such as 'train'/'eval'/'minival' or a TFDS split) of dataset ``name``.

    A TFDS dataset that is not prepared in the data dir raises FileNotFoundError (naming the dir and how to
    prepare it) unless ``download`` is set, which downloads and prepares it first.
    """
    spec = registry.get_dataset_spec(name)
    source_split = spec.resolve_split(split)
    if spec.source == "folder":
        return _folder_source(spec, source_split)
    if spec.source == "imagenet21k":
        return _imagenet21k_source(spec, source_split, data_dir)
    return _tfds_source(spec, source_split, data_dir, download)
