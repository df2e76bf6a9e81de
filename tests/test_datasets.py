"""Dataset registry, the digits builder, folder datasets, ImageNet-21k conversion and their errors."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from efficientnetv2_jax.data import get_dataset_info, prepare_imagenet21k, registry, sources
from efficientnetv2_jax.data.folder_source import load_folder_split
from test_filesystem import official_imagenet21k_example


@pytest.fixture(autouse=True)
def _fresh_sources():
    sources.open_source.cache_clear()
    yield
    sources.open_source.cache_clear()


def _fetch(source, indices):
    """(payloads, int32 [b, W] label indices, int32 [b] label counts) as numpy."""
    return tuple(t.numpy() for t in source.fetch(tf.constant(indices, tf.int64)))


def _write_image(path, value, fmt="png", size=(10, 12)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.full(size + (3,), value, np.uint8)
    data = tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image)
    tf.io.write_file(path, data)


def test_unknown_names_and_splits_raise_helpful_errors():
    with pytest.raises(ValueError, match="digits"):
        registry.get_dataset_spec("no_such_dataset_xyz")
    with pytest.raises(ValueError, match="folder:"):
        registry.get_dataset_spec("folder:")
    with pytest.raises(ValueError, match="minival"):
        registry.get_dataset_spec("cifar10").resolve_split("minival")
    assert registry.get_dataset_spec("imagenet2012").resolve_split("minival") == "train[98%:]"
    assert registry.get_dataset_spec("mnist").resolve_split("eval") == "test"


def test_digits_dataset_is_built_offline_with_fixed_stratified_split(tmp_path):
    info = get_dataset_info("digits", data_dir=str(tmp_path))
    assert info.num_classes == 10 and not info.multi_label
    assert info.split_sizes == {"train": 1437, "eval": 360}
    assert info.class_names == tuple(str(d) for d in range(10))
    source = sources.open_source("digits", "eval", str(tmp_path))
    payload, labels, counts = _fetch(source, range(360))
    images = np.stack([tf.io.decode_png(p).numpy() for p in payload])
    assert images.shape == (360, 8, 8, 3) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    assert labels.shape == (360, 1) and labels.dtype == np.int32 and np.all(counts == 1)
    per_class = collections.Counter(labels[:, 0].tolist())
    assert min(per_class.values()) >= 35 and max(per_class.values()) <= 37


def test_folder_with_split_subfolders(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("zebra", "ant"):
            for i in range(n):
                _write_image(str(tmp_path / split / cls / f"{i}.png"), i)
    train = load_folder_split(str(tmp_path), "train")
    assert train.class_names == ("ant", "zebra")
    assert len(train.paths) == 6 and train.labels == (0, 0, 0, 1, 1, 1)
    evaluation = load_folder_split(str(tmp_path), "eval")
    assert len(evaluation.paths) == 4 and all("/test/" in p for p in evaluation.paths)
    info = get_dataset_info(f"folder:{tmp_path}")
    assert info.split_sizes == {"train": 6, "eval": 4} and info.class_names == ("ant", "zebra")


def test_flat_folder_holdout_is_deterministic_and_disjoint(tmp_path):
    for cls in ("a", "b"):
        for i in range(40):
            _write_image(str(tmp_path / cls / f"img{i}.jpg"), i, fmt="jpg")
    train, evaluation, everything = (load_folder_split(str(tmp_path), s) for s in ("train", "eval", "all"))
    assert set(train.paths).isdisjoint(evaluation.paths)
    assert sorted(train.paths + evaluation.paths) == sorted(everything.paths)
    assert 0 < len(evaluation.paths) < len(train.paths)
    assert load_folder_split(str(tmp_path), "eval") == evaluation


def test_folder_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_folder_split(str(tmp_path / "missing"), "train")
    with pytest.raises(FileNotFoundError, match="class sub-folders"):
        load_folder_split(str(tmp_path), "train")
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("no images")
    with pytest.raises(FileNotFoundError, match="No"):
        load_folder_split(str(tmp_path), "all")


def test_imagenet2012_missing_manual_files_tells_where_to_put_them(tmp_path):
    for download in (False, True):
        with pytest.raises(FileNotFoundError, match="ILSVRC2012_img_train.tar") as error:
            sources.open_source("imagenet2012", "train", str(tmp_path), download)
        assert os.path.join(str(tmp_path), "downloads", "manual") in str(error.value)


def test_unprepared_tfds_dataset_fails_at_once_unless_download_is_asked(tmp_path, monkeypatch):
    """Issue 17: no silent download; one message naming the data dir, the prepare command and the opt-in."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    def no_download(*args, **kwargs):
        raise AssertionError("download_and_prepare called without download=True")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    with pytest.raises(FileNotFoundError) as error:
        get_dataset_info("cifar10", str(tmp_path / "data"))
    message = str(error.value)
    assert "cifar10 is not prepared in " + str(tmp_path / "data") in message
    assert "tfds build cifar10" in message and "--config.dataset.download=true" in message
    with pytest.raises(AssertionError, match="without download=True"):  # The opt-in reaches TFDS.
        sources.open_source("cifar10", "train", str(tmp_path / "data"), download=True)


@pytest.fixture
def mocked_tfds(monkeypatch):
    """tfds.testing.mock_data, with its batched `__getitems__` (which it binds without `self`) fixed."""
    from tensorflow_datasets.testing import mocking  # pylint: disable=g-import-not-at-top

    monkeypatch.setattr(mocking, "_getitems", lambda keys, generator: [generator[k] for k in keys])
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("imagenet2012", 1000)])
def test_tfds_datasets_read_by_index(mocked_tfds, tmp_path, name, num_classes):
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    for f in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
        (manual / f).write_bytes(b"")
    source = sources.open_source(name, "train", str(tmp_path), download=True)
    assert source.num_examples == 12 and source.num_classes == num_classes
    payload, labels, counts = _fetch(source, [3, 0, 11])
    assert labels.shape == (3, 1) and np.all(counts == 1) and np.all((labels >= 0) & (labels < num_classes))
    assert tf.io.decode_image(payload[0]).shape[-1] == 3


def _write_imagenet21k_tfrecords(folder, num_files=3, per_file=4):
    rng = np.random.default_rng(0)
    expected = {}
    for f in range(num_files):
        path = os.path.join(folder, f"imagenet21k-{f:05d}")
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(per_file):
                labels = sorted(rng.choice(registry.IMAGENET21K_NUM_CLASSES, size=1 + i % 3, replace=False).tolist())
                image = tf.io.encode_jpeg(np.full((16, 20, 3), 10 * f + i, np.uint8)).numpy()
                writer.write(official_imagenet21k_example(image, labels, f"{f}_{i}"))
                expected[(f, i)] = labels
    return expected


def test_imagenet21k_conversion_and_multi_hot_labels(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    expected = _write_imagenet21k_tfrecords(str(raw))
    with pytest.raises(FileNotFoundError, match="prepare_imagenet21k"):
        sources.open_source("imagenet21k", "train", str(tmp_path / "data"))
    prepare_imagenet21k.main(["--input", str(raw / "imagenet21k*"), "--output", str(tmp_path / "data" / "imagenet21k"),
                              "--eval_files", "1", "--minival_files", "1"])
    info = get_dataset_info("imagenet21k", str(tmp_path / "data"))
    assert info.multi_label and info.num_classes == 21843
    assert info.split_sizes == {"train": 4, "eval": 4, "minival": 4}
    train = sources.open_source("imagenet21k", "train", str(tmp_path / "data"))
    payload, labels, counts = _fetch(train, [2, 0])
    assert labels.shape == (2, registry.MULTI_LABEL_WIDTH) and labels.dtype == np.int32
    for row, count, i in zip(labels, counts, (2, 0)):
        assert row[:count].tolist() == expected[(2, i)]  # the train split is the third file
        assert np.all(row[count:] == -1)
    assert tf.io.decode_jpeg(payload[1]).numpy().mean() == pytest.approx(20, abs=2)
