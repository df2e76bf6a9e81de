"""ImageNet-21k pretraining then a 1k-style finetune, end to end on generated data in the official layout.

Everything lives in a gs:// bucket of the loopback fake GCS (tests/fake_gcs.py): the official-layout TFRecords
(features ``image``, ``labels``: several class ids per image), the ArrayRecord files ``prepare_imagenet21k``
converts them to, the 21k workdir (Orbax checkpoints, metrics, summary), the finetune folder dataset and the
finetune workdir that starts from the 21k one with ``init_from``. Each GCS client of the process (TensorFlow's
gfile, the ArrayRecord reader, Orbax's tensorstore) reads and writes them through the fake, and a local-OS
file call on a bucket path fails the test (see test_filesystem.py). Only the compilation cache is local.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2_jax.checkpoint import restore_variables
from efficientnetv2_jax.data import prepare_imagenet21k, registry
from test_filesystem import official_imagenet21k_example, write_class_folders
from test_filesystem import fake_gcs_server, gcs_bucket, local_os_calls  # noqa: F401  pylint: disable=unused-import

TINY = dict(width=0.25, depth=0.25)
SIZE = 32


def _config(spec: str, **fields):
    """configs/<file>.py:<arg> shrunk to seconds: tiny model, 32 px, batch 8, a few steps."""
    name, _, arg = spec.partition(":")
    config = importlib.import_module(f"configs.{name}").get_config(arg)
    config.model.update(TINY)
    config.update(dict(batch_size=8, eval_batch_size=8, total_steps=2, min_steps=0, eval_image_size=SIZE,
                       log_every_steps=1, checkpoint_every_steps=0, **fields))
    config.progressive.train_image_size = SIZE
    return config


def _write_official_tfrecords(folder: str, classes=(5, 9, 21842, 77), files=3, per_file=8) -> None:
    """imagenet21k-0000N files of tf.train.Examples with a JPEG and 1-3 labels among a few classes."""
    rng = np.random.default_rng(0)
    for f in range(files):
        with tf.io.TFRecordWriter(f"{folder}/imagenet21k-{f:05d}") as writer:
            for i in range(per_file):
                labels = sorted(rng.choice(classes, size=1 + i % 3, replace=False).tolist())
                image = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
                writer.write(official_imagenet21k_example(tf.io.encode_jpeg(image).numpy(), labels, f"n{f}_{i}"))


def test_imagenet21k_pretraining_then_finetune_from_it(gcs_bucket, fake_gcs_server, tmp_path):  # noqa: F811
    from efficientnetv2_jax.train import train  # pylint: disable=import-outside-toplevel

    raw = f"{gcs_bucket}/imagenet21k_tfrecords"
    tf.io.gfile.makedirs(raw)
    _write_official_tfrecords(raw)
    data_dir = f"{gcs_bucket}/tensorflow_datasets"
    counts = prepare_imagenet21k.convert(f"{raw}/imagenet21k*", f"{data_dir}/imagenet21k", eval_files=1,
                                         minival_files=1)
    assert counts == {"eval": 8, "minival": 8, "train": 8}

    cache = str(tmp_path / "jax_cache")
    pretrain = _config("imagenet21k:b0", seed=1, compilation_cache_dir=cache)
    pretrain.dataset.data_dir = data_dir
    summary = train.train_and_evaluate(pretrain, f"{gcs_bucket}/b0-21k")
    assert summary["steps"] == 2 and summary["dataset"] == "imagenet21k"
    assert 0.0 <= summary["eval_precision_at_1"] <= 1.0 and summary["eval_examples"] == 8
    pretrained = restore_variables(f"{gcs_bucket}/b0-21k", ema=True)
    assert pretrained["params"]["classifier"]["kernel"].shape[-1] == registry.IMAGENET21K_NUM_CLASSES

    pets = f"{gcs_bucket}/pets"
    write_class_folders(f"{pets}/train", per_class=4, shape=(40, 50, 3), step=70)
    write_class_folders(f"{pets}/eval", per_class=2, shape=(40, 50, 3), step=70)
    finetune = _config(f"finetune:b0,folder:{pets}", seed=0, compilation_cache_dir=cache,
                       init_from=f"{gcs_bucket}/b0-21k")
    finetune.lr.base = 0.0  # Parameters stay as loaded, so the carried-over backbone can be compared exactly.
    summary = train.train_and_evaluate(finetune, f"{gcs_bucket}/b0-ft")
    assert summary["steps"] == 2 and summary["eval_examples"] == 6
    tuned = restore_variables(f"{gcs_bucket}/b0-ft", ema=False)
    head, old_head = tuned["params"].pop("classifier"), pretrained["params"].pop("classifier")
    assert head["kernel"].shape == (old_head["kernel"].shape[0], 3)
    # A fresh official init U(+-1/sqrt(3)), not zeros, not columns of the 21k head (U(+-1/sqrt(21843)) at init).
    assert 0.3 < np.abs(head["kernel"]).max() <= 1 / np.sqrt(3) and not np.any(head["bias"])
    assert np.abs(old_head["kernel"]).max() < 0.05
    leaves = jax_leaves(tuned["params"]), jax_leaves(pretrained["params"])
    assert len(leaves[0]) == len(leaves[1]) > 20
    for got, want in zip(*leaves):  # The backbone is the 21k run's EMA weights (seed 1), not a seed-0 init.
        np.testing.assert_array_equal(got, want)
    with tf.io.gfile.GFile(f"{gcs_bucket}/b0-ft/summary.json") as f:
        assert json.loads(f.read())["model"] == "efficientnetv2-b0"
    assert tf.io.gfile.listdir(f"{gcs_bucket}/b0-ft/checkpoints")
    # The C++ clients too went through the fake (TensorFlow's gfile could not reach gs:// any other way): the
    # ArrayRecord reader read the converted train files, tensorstore wrote both runs' checkpoints.
    served = [path for _, host, path, _ in fake_gcs_server.requests() if host == "127.0.0.1"]
    bucket_name = gcs_bucket[len("gs://"):]
    assert any(f"/b/{bucket_name}/o/tensorflow_datasets%2Fimagenet21k%2Ftrain%2F" in p for p in served)
    for run in ("b0-21k", "b0-ft"):
        assert any(f"/b/{bucket_name}/o?uploadType=media&name={run}%2Fcheckpoints%2F" in p for p in served), run


def jax_leaves(tree) -> list[np.ndarray]:
    """The leaves of a nested dict in a fixed (sorted key) order."""
    import jax  # pylint: disable=import-outside-toplevel

    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


@pytest.mark.parametrize("num_labels,ok", [(registry.MULTI_LABEL_WIDTH, True), (registry.MULTI_LABEL_WIDTH + 1, False)])
def test_more_labels_than_the_wire_width_is_an_error_not_a_truncation(tmp_path, num_labels, ok):
    from efficientnetv2_jax.data import sources  # pylint: disable=import-outside-toplevel

    raw = tmp_path / "raw"
    raw.mkdir()
    with tf.io.TFRecordWriter(str(raw / "imagenet21k-00000")) as writer:
        writer.write(official_imagenet21k_example(b"x", list(range(num_labels))))
    prepare_imagenet21k.convert(str(raw / "*"), str(tmp_path / "imagenet21k"), eval_files=0, minival_files=0)
    sources.open_source.cache_clear()
    source = sources.open_source("imagenet21k", "train", str(tmp_path))
    if ok:
        _, indices, count = source.fetch(tf.constant([0], tf.int64))
        assert count.numpy().tolist() == [num_labels] and indices.numpy()[0].tolist() == list(range(num_labels))
    else:
        with pytest.raises(tf.errors.InvalidArgumentError, match="more than 32 labels"):
            source.fetch(tf.constant([0], tf.int64))
    sources.open_source.cache_clear()
