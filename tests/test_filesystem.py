"""Data paths on a bucket: every file operation of the data layer goes through tf.io.gfile.

Two stand-ins for a bucket, both without a network: TensorFlow's in-memory ``ram://`` filesystem (``bucket``,
fast, for the Python-level data layer) and real ``gs://`` paths served by the loopback fake GCS of
fake_gcs.py (``gcs_bucket``, for everything that also needs the C++ GCS clients: the ArrayRecord reader and
Orbax's tensorstore). Both fixtures make every local-OS file call (open, stat, listdir, scandir, makedirs,
rename, remove, ...) fail when it is given a bucket path, so a test passes only if no code path treats a
bucket path as a local file.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import uuid

import fake_gcs
import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2_jax.data import get_dataset_info, input_pipeline, prepare_imagenet21k, sources
from efficientnetv2_jax.data.folder_source import load_folder_split

_OS_FILE_CALLS = ("stat", "lstat", "listdir", "scandir", "makedirs", "mkdir", "replace", "rename", "remove",
                  "unlink", "rmdir", "open", "access")


BUCKET_SCHEMES = ("ram:", "gs:")


def _touches_bucket(args) -> bool:
    return any(scheme in os.fsdecode(a) for a in args if isinstance(a, (str, bytes, os.PathLike))
               for scheme in BUCKET_SCHEMES)


@pytest.fixture
def local_os_calls(monkeypatch):
    """Local-OS file calls on bucket paths raise, and are recorded here (the guard catches swallowed ones too)."""
    calls = []

    def guard(name, real):
        def guarded(*args, **kwargs):
            if _touches_bucket(args):
                calls.append(f"{name}{args}")
                raise AssertionError(f"local OS call {name}{args} on a bucket path")
            return real(*args, **kwargs)
        return guarded

    for name in _OS_FILE_CALLS:
        monkeypatch.setattr(os, name, guard(f"os.{name}", getattr(os, name)))
    monkeypatch.setattr(builtins, "open", guard("open", builtins.open))
    monkeypatch.setattr(io, "open", guard("io.open", io.open))
    return calls


def _guarded_bucket(url: str, local_os_calls: list, monkeypatch, tmp_path):
    """Yields ``url``; afterwards no guarded call was made and no local folder was named like a bucket path."""
    monkeypatch.chdir(tmp_path)
    sources.open_source.cache_clear()
    yield url
    sources.open_source.cache_clear()
    assert not local_os_calls, local_os_calls
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("ram", "gs"))], \
        "a bucket path was created as a local folder"


@pytest.fixture
def bucket(local_os_calls, monkeypatch, tmp_path):
    """A fresh ram:// 'bucket' URL under the guard."""
    yield from _guarded_bucket(f"ram://bucket-{uuid.uuid4().hex[:8]}", local_os_calls, monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def fake_gcs_server():
    """The loopback fake GCS, with every GCS client of this process pointed at it while the module runs."""
    with fake_gcs.serve() as server, pytest.MonkeyPatch.context() as patch:
        for key, value in server.environment.items():
            patch.setenv(key, value)
        yield server


@pytest.fixture
def gcs_bucket(fake_gcs_server, local_os_calls, monkeypatch, tmp_path):  # pylint: disable=redefined-outer-name
    """A fresh gs:// bucket URL on the fake GCS, under the guard."""
    del fake_gcs_server
    yield from _guarded_bucket(f"gs://bucket-{uuid.uuid4().hex[:8]}", local_os_calls, monkeypatch, tmp_path)


def write_class_folders(root: str, per_class: int = 4, classes=("cat", "dog", "eel"), shape=(40, 30, 3),
                        step: int = 60) -> None:
    """`root/<class>/<i>.png` through gfile (any filesystem): flat images of value step x label + i."""
    for label, name in enumerate(classes):
        tf.io.gfile.makedirs(f"{root}/{name}")
        for i in range(per_class):
            tf.io.write_file(f"{root}/{name}/{i}.png", tf.io.encode_png(np.full(shape, step * label + i, np.uint8)))


def test_the_guard_catches_a_local_call(local_os_calls):
    with pytest.raises(AssertionError, match="local OS call"):
        os.path.exists("ram://bucket/x")
    with pytest.raises(AssertionError, match="local OS call"):
        open("ram://bucket/x", encoding="utf-8")
    with pytest.raises(AssertionError, match="local OS call"):
        os.listdir("gs://bucket/x")
    assert os.path.exists("/")  # Local paths are untouched.
    assert len(local_os_calls) == 3


def test_folder_dataset_on_a_bucket_lists_and_reads_through_gfile(bucket):
    root = f"{bucket}/pets"
    write_class_folders(root)
    split = load_folder_split(root, "all")
    assert split.class_names == ("cat", "dog", "eel") and len(split.paths) == 12
    assert all(p.startswith(root + "/") for p in split.paths)
    info = get_dataset_info(f"folder:{root}")
    assert info.num_classes == 3 and info.split_sizes["train"] + info.split_sizes["eval"] == 12
    batch = next(input_pipeline.train_host_batches(
        dataset=f"folder:{root}", split="trainval", image_size=16, randaug_magnitude=0.0, mixup_alpha=0.0,
        cutmix_alpha=0.0, global_batch_size=4, seed=0, augment="none", process_index=0, process_count=1,
        num_threads=2))
    assert batch["image"].shape == (4, 16, 16, 3) and np.all(batch["mask"] == 1)
    values = batch["image"].reshape(4, -1).mean(-1)
    np.testing.assert_allclose(values, 60 * batch["label_indices"][:, 0] + np.round(values % 60), atol=1)


def official_imagenet21k_example(image: bytes, labels: list[int], example_id: str | None = None) -> bytes:
    """One serialized tf.train.Example in the layout of the official ImageNet-21k TFRecords."""
    feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
               "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=labels))}
    if example_id is not None:
        feature["id"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[example_id.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_raw_imagenet21k(raw: str, files: int = 3) -> None:
    """Official-layout TFRecord files of 2 examples each; example i of file f has labels [f, 10 + i]."""
    tf.io.gfile.makedirs(raw)
    for f in range(files):
        with tf.io.TFRecordWriter(f"{raw}/imagenet21k-{f:05d}") as writer:
            for i in range(2):
                image = tf.io.encode_png(np.full((8, 8, 3), i, np.uint8)).numpy()
                writer.write(official_imagenet21k_example(image, [f, 10 + i]))


def test_imagenet21k_converter_reads_and_writes_a_bucket(bucket):
    raw = f"{bucket}/raw"
    _write_raw_imagenet21k(raw)
    output = f"{bucket}/tensorflow_datasets/imagenet21k"
    counts = prepare_imagenet21k.convert(f"{raw}/imagenet21k*", output, eval_files=1, minival_files=1)
    assert counts == {"eval": 2, "minival": 2, "train": 2}
    with tf.io.gfile.GFile(f"{output}/splits.json") as f:
        assert json.loads(f.read()) == counts
    assert sources.imagenet21k_files(f"{bucket}/tensorflow_datasets", "train") == [
        f"{output}/train/imagenet21k-00002.array_record"]
    assert tf.io.gfile.stat(f"{output}/eval/imagenet21k-00000.array_record").length > 0
    assert not tf.io.gfile.glob(f"{output}/*/*.tmp")


def test_array_record_reader_reads_imagenet21k_from_gcs(gcs_bucket, fake_gcs_server):  # noqa: F811
    _write_raw_imagenet21k(f"{gcs_bucket}/raw", files=2)
    prepare_imagenet21k.convert(f"{gcs_bucket}/raw/*", f"{gcs_bucket}/tfds/imagenet21k", eval_files=1,
                                minival_files=0)
    source = sources.open_source("imagenet21k", "train", f"{gcs_bucket}/tfds")
    assert source.num_examples == 2
    payload, indices, count = source.fetch(tf.constant([1, 0], tf.int64))
    assert indices.numpy()[:, :2].tolist() == [[1, 11], [1, 10]] and count.numpy().tolist() == [2, 2]
    assert tf.io.decode_png(payload[0]).numpy().max() == 1
    # google-cloud-cpp's own requests (the emulator endpoint, not TensorFlow's proxied ones) read the file.
    train_file = "tfds%2Fimagenet21k%2Ftrain%2Fimagenet21k-00001.array_record"
    assert any(host == "127.0.0.1" and f"/o/{train_file}?alt=media" in path
               for _, host, path, _ in fake_gcs_server.requests())


def test_converter_cli_reports_an_empty_bucket_in_one_line(bucket, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare_imagenet21k.main(["--input", f"{bucket}/none/imagenet21k*", "--output", f"{bucket}/out"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No TFRecord files match") and err.count("\n") == 1


def test_missing_imagenet21k_on_a_bucket_says_how_to_convert(bucket):
    with pytest.raises(FileNotFoundError, match="prepare_imagenet21k") as error:
        sources.imagenet21k_files(f"{bucket}/tfds", "train")
    assert f"{bucket}/tfds/imagenet21k/train" in str(error.value)
