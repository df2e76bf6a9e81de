"""Train/eval iterators: shapes, label formats, determinism, exact resume, host slicing, eval coverage, corrupt files."""

import os
import threading

import jax
import numpy as np
import pytest
import tensorflow as tf
from jax.sharding import Mesh, PartitionSpec

from efficientnetv2_jax.data import input_pipeline, mixing, make_eval_iterator, make_train_iterator, prepare_imagenet21k, sources
from efficientnetv2_jax.data.device_prefetch import DevicePrefetchIterator
from efficientnetv2_jax.data.example_order import TrainOrder
from efficientnetv2_jax.train.losses import dense_labels
from test_filesystem import official_imagenet21k_example

SIZE = 16


@pytest.fixture(autouse=True)
def _fresh_sources():
    sources.open_source.cache_clear()
    yield
    sources.open_source.cache_clear()


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def color_folder(tmp_path_factory):
    """21 PNG/JPEG images whose constant colour i identifies example i, in 3 classes, plus nothing corrupt."""
    root = tmp_path_factory.mktemp("colors")
    for i in range(21):
        cls = f"class{i % 3}"
        os.makedirs(root / cls, exist_ok=True)
        image = np.full((12, 10, 3), 10 * i, np.uint8)
        data = tf.io.encode_png(image) if i % 2 else tf.io.encode_jpeg(image, quality=100)
        tf.io.write_file(str(root / cls / f"{i:02d}.{'png' if i % 2 else 'jpg'}"), data)
    return f"folder:{root}"


@pytest.fixture
def mesh():
    return Mesh(np.array(jax.devices()), ("data",))


def _train_kwargs(dataset, data_dir=None, **overrides):
    kwargs = dict(dataset=dataset, split="train", image_size=SIZE, randaug_magnitude=5.0, mixup_alpha=0.0,
                  cutmix_alpha=0.0, global_batch_size=8, seed=3, data_dir=data_dir, num_threads=2,
                  augment="none")  # constant-colour images keep their colour (= identity) through crop and flip
    kwargs.update(overrides)
    return kwargs


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_train_iterator_gives_sharded_uint8_batches_with_one_hot_labels(digits_dir, mesh):
    it = make_train_iterator(**_train_kwargs("digits", digits_dir, global_batch_size=16, mixup_alpha=0.2,
                                             cutmix_alpha=0.2, augment="randaug"), start_step=0, mesh=mesh)
    batch = next(it)
    it.close()
    assert batch["image"].shape == (16, SIZE, SIZE, 3) and batch["image"].dtype == jax.numpy.uint8
    assert batch["image"].sharding.spec == PartitionSpec("data")
    assert len(batch["image"].sharding.device_set) == 8
    labels, counts = np.asarray(batch["label_indices"]), np.asarray(batch["label_count"])
    assert labels.shape == (16, 1) and labels.dtype == np.int32 and 0 <= labels.min() and labels.max() < 10
    np.testing.assert_array_equal(counts, 1)
    np.testing.assert_array_equal(np.asarray(batch["mask"]), 1.0)
    assert batch["mixup_lambda"].shape == (16,) and batch["mixup_lambda"].dtype == jax.numpy.float32
    assert batch["cutmix_box"].shape == (16, 4) and batch["cutmix_box"].dtype == jax.numpy.int32
    assert 0 < int(np.asarray(batch["image"]).max()) <= 255
    assert it.num_corrupt == 0


def test_apply_mixing_on_a_real_sharded_batch_keeps_label_mass(digits_dir, mesh):
    it = make_train_iterator(**_train_kwargs("digits", digits_dir, global_batch_size=16, mixup_alpha=0.8,
                                             cutmix_alpha=1.0), start_step=0, mesh=mesh)
    batch = next(it)
    it.close()
    assert set(mixing.MIXING_KEYS) <= set(batch)
    images = batch["image"].astype(jax.numpy.float32)
    labels = jax.jit(lambda b: dense_labels(b, 10, normalize=True))(batch)
    mixed_images, mixed_labels = jax.jit(mixing.apply_mixing)(images, labels, batch)
    host = {k: np.asarray(v) for k, v in batch.items()}
    expected_images, expected_labels = mixing.apply_mixing(host["image"].astype(np.float32), np.asarray(labels), host)
    np.testing.assert_allclose(np.asarray(mixed_labels), expected_labels, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(mixed_images), expected_images, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(mixed_labels).sum(-1), 1.0, rtol=1e-6)
    assert (np.asarray(mixed_labels) > 0).sum(-1).max() == 2  # partners' labels were mixed in


def test_batch_must_divide_over_devices_and_hosts(digits_dir, mesh):
    with pytest.raises(ValueError, match="divisible"):
        make_train_iterator(**_train_kwargs("digits", digits_dir, global_batch_size=12), start_step=0, mesh=mesh)
    with pytest.raises(ValueError, match="divisible"):
        input_pipeline.train_host_batches(**_train_kwargs("digits", digits_dir, global_batch_size=9),
                                          process_index=0, process_count=2)


def _host(dataset, start_step=0, process_index=0, process_count=1, **kwargs):
    return input_pipeline.train_host_batches(**_train_kwargs(dataset, **kwargs), start_step=start_step,
                                             process_index=process_index, process_count=process_count)


def _assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_same_seed_same_batches_and_resume_equals_skipping(color_folder):
    # 21 train-or-eval images at batch 8: epochs roll over inside batches 2, 5, ...
    fresh = _take(_host(color_folder, split="all", mixup_alpha=0.5), 6)
    again = _take(_host(color_folder, split="all", mixup_alpha=0.5), 6)
    for a, b in zip(fresh, again):
        _assert_batches_equal(a, b)
    resumed = _take(_host(color_folder, start_step=4, split="all", mixup_alpha=0.5), 2)
    _assert_batches_equal(resumed[0], fresh[4])
    _assert_batches_equal(resumed[1], fresh[5])
    other_seed = next(_host(color_folder, split="all", seed=4))
    assert not np.array_equal(other_seed["image"], fresh[0]["image"])
    # every epoch is a permutation: the first 21 examples are all distinct colours
    first_epoch = np.concatenate([b["image"][:, 0, 0, 0] for b in fresh])[:21]
    assert len(set(first_epoch.tolist())) == 21


def test_two_hosts_slices_concatenate_to_the_one_host_batch(color_folder):
    one = _take(_host(color_folder, split="all", mixup_alpha=0.5, cutmix_alpha=0.5), 3)
    halves = [_take(_host(color_folder, split="all", mixup_alpha=0.5, cutmix_alpha=0.5, process_index=h,
                          process_count=2), 3) for h in range(2)]
    for step in range(3):
        joined = {k: np.concatenate([halves[0][step][k], halves[1][step][k]]) for k in one[step]}
        _assert_batches_equal(joined, one[step])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_every_example_exactly_once(color_folder, process_count):
    hosts = [input_pipeline.eval_host_batches(dataset=color_folder, split="all", image_size=SIZE,
                                              global_batch_size=8, process_index=h, process_count=process_count)
             for h in range(process_count)]
    per_host = [list(h) for h in hosts]
    assert all(len(batches) == len(h) == 3 for batches, h in zip(per_host, hosts))
    seen = []
    for batches in per_host:
        for batch in batches:
            assert batch["image"].shape == (8 // process_count, SIZE, SIZE, 3)
            seen.extend(batch["image"][batch["mask"] == 1][:, 0, 0, 0].tolist())
    assert sorted(round(v / 10) for v in seen) == list(range(21))


def test_eval_iterator_global_batches(digits_dir, mesh):
    it = make_eval_iterator(dataset="digits", split="eval", image_size=SIZE, global_batch_size=64, mesh=mesh,
                            data_dir=digits_dir)
    batches = list(it)
    assert len(batches) == len(it) == 6  # ceil(360 / 64)
    assert sum(float(np.asarray(b["mask"]).sum()) for b in batches) == 360
    assert batches[-1]["image"].shape == (64, SIZE, SIZE, 3)


def test_corrupt_file_is_replaced_masked_and_counted(tmp_path):
    for i in range(7):
        os.makedirs(tmp_path / f"c{i % 2}", exist_ok=True)
        tf.io.write_file(str(tmp_path / f"c{i % 2}" / f"{i}.png"), tf.io.encode_png(np.full((9, 9, 3), 200, np.uint8)))
    (tmp_path / "c1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    host = _host(f"folder:{tmp_path}", split="all")
    batch = next(host)  # batch 8 = the whole epoch of 8 files
    assert batch["image"].shape == (8, SIZE, SIZE, 3)
    broken = batch["mask"] == 0
    assert broken.sum() == 1 and host.num_corrupt == 1
    assert batch["image"][broken].max() == 0 and batch["image"][~broken].min() == 200
    next(host)
    assert host.num_corrupt == 2


def test_batch_of_only_corrupt_files_stays_full_and_masked(tmp_path):
    for i in range(2):
        os.makedirs(tmp_path / f"c{i}")
        (tmp_path / f"c{i}" / "broken.png").write_bytes(b"\x89PNG not really")
    host = _host(f"folder:{tmp_path}", split="all", global_batch_size=2)
    batch = next(host)
    assert batch["image"].shape == (2, SIZE, SIZE, 3) and batch["image"].max() == 0
    np.testing.assert_array_equal(batch["mask"], 0.0)
    np.testing.assert_array_equal(batch["label_count"], 1)
    assert host.num_corrupt == 2


def test_multi_hot_labels_are_normalised_unless_disabled(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with tf.io.TFRecordWriter(str(raw / "imagenet21k-00000")) as writer:
        for i in range(4):
            image = tf.io.encode_png(np.full((8, 8, 3), i, np.uint8)).numpy()
            writer.write(official_imagenet21k_example(image, list(range(i + 1))))
    prepare_imagenet21k.convert(str(raw / "*"), str(tmp_path / "imagenet21k"), eval_files=0, minival_files=0)
    batch = next(_host("imagenet21k", data_dir=str(tmp_path), global_batch_size=4))
    counts = batch["label_count"]
    assert sorted(counts.tolist()) == [1, 2, 3, 4] and batch["label_indices"].shape == (4, 32)
    for normalize in (True, False):
        dense = np.asarray(dense_labels(batch, 21843, normalize))
        assert dense.shape == (4, 21843)
        np.testing.assert_array_equal((dense > 0).sum(-1), counts)
        np.testing.assert_allclose(dense.sum(-1), np.ones(4) if normalize else counts, rtol=1e-6)


def test_train_order_serves_any_epoch_while_readers_run_epochs_ahead():
    """A tiny split is one step per epoch, so parallel readers ask for epochs out of order; none may be lost."""
    order = TrainOrder(num_examples=8, global_batch_size=8, seed=3, process_index=0, process_count=1)
    steps = [s for s in range(40) for _ in range(3)][::-1]
    results = [None] * len(steps)

    def read(worker: int) -> None:  # Plain threads: no concurrent.futures lock shared with earlier tests' readers.
        for index in range(worker, len(steps), 8):
            results[index] = order.host_examples(steps[index])

    threads = [threading.Thread(target=read, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "TrainOrder readers deadlocked"
    for step, (indices, _) in zip(steps, results):
        assert np.array_equal(indices, np.random.default_rng([3, step]).permutation(8))


def test_closing_the_prefetcher_stops_its_thread_and_closes_the_source(mesh):
    """close() returns only once the thread has closed the host-batch source: a stage's input pipeline is torn
    down at the stage switch, not by a garbage collection in the middle of the next stage."""
    closed = []

    def endless_batches():
        try:
            while True:
                yield {"x": np.zeros((8, 2), np.float32)}
        finally:
            closed.append(True)

    prefetcher = DevicePrefetchIterator(endless_batches(), mesh, prefetch=2)
    assert next(prefetcher)["x"].shape == (8, 2)
    prefetcher.close()
    assert closed == [True]
