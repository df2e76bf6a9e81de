"""Compact labels (class ids + count on the wire, densified on the device) give the dense path's targets and loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficientnetv2_jax.data import registry
from efficientnetv2_jax.train import losses

NUM_CLASSES = 50


def _multi_hot_batch(rng, batch_size=8, width=6):
    """Compact labels with 1..width ids per example (duplicates included, padding set to garbage) and the dense
    multi-hot matrix the former host path built (one 1 per distinct class, like tf.sparse.to_indicator)."""
    counts = rng.integers(1, width + 1, size=batch_size).astype(np.int32)
    indices = rng.integers(-5, NUM_CLASSES, size=(batch_size, width)).astype(np.int32)  # beyond count: garbage
    dense = np.zeros((batch_size, NUM_CLASSES), np.float32)
    for row, count in enumerate(counts):
        indices[row, :count] = rng.integers(0, NUM_CLASSES, size=count)
        indices[row, count - 1] = indices[row, 0]  # a duplicate id counts once
        dense[row, indices[row, :count]] = 1.0
    return {"label_indices": indices, "label_count": counts}, dense


def test_dense_labels_match_the_host_multi_hot_and_loss_to_1e6():
    rng = np.random.default_rng(0)
    batch, dense = _multi_hot_batch(rng)
    logits = jnp.asarray(rng.normal(size=(8, NUM_CLASSES)).astype(np.float32))
    mask = jnp.asarray([1, 1, 1, 1, 1, 1, 0, 1], jnp.float32)
    normalized = dense / dense.sum(-1, keepdims=True)
    targets = jax.jit(lambda b: losses.dense_labels(b, NUM_CLASSES, normalize=True))(batch)
    np.testing.assert_allclose(targets, normalized, rtol=1e-6)
    np.testing.assert_array_equal(losses.dense_labels(batch, NUM_CLASSES, normalize=False), dense)
    for kind, host_targets, device_targets in (("softmax", normalized, targets),
                                               ("sigmoid", dense, losses.dense_labels(batch, NUM_CLASSES, False))):
        for smoothing in (0.0, 0.1):
            expected = losses.classification_loss(logits, jnp.asarray(host_targets), mask, smoothing, kind)
            got = losses.classification_loss(logits, device_targets, mask, smoothing, kind)
            np.testing.assert_allclose(got, expected, rtol=1e-6)
    counts = losses.eval_counts(logits, targets, mask, multi_label=True)
    expected_counts = losses.eval_counts(logits, jnp.asarray(normalized), mask, multi_label=True)
    for key, value in expected_counts.items():
        np.testing.assert_allclose(counts[key], value, rtol=1e-6)


def test_single_label_width_one_is_one_hot():
    ids = np.array([[3], [0], [49]], np.int32)
    batch = {"label_indices": ids, "label_count": np.ones(3, np.int32)}
    np.testing.assert_array_equal(losses.dense_labels(batch, NUM_CLASSES, normalize=True),
                                  np.eye(NUM_CLASSES, dtype=np.float32)[ids[:, 0]])


def test_compact_label_shapes_are_what_the_wire_carries():
    shapes = losses.compact_label_shapes(4096, multi_label=True)
    assert shapes["label_indices"].shape == (4096, registry.MULTI_LABEL_WIDTH)
    assert shapes["label_indices"].dtype == shapes["label_count"].dtype == jnp.int32
    assert losses.compact_label_shapes(8, multi_label=False)["label_indices"].shape == (8, 1)
    wire_bytes = sum(np.prod(s.shape) * s.dtype.itemsize for s in shapes.values())
    assert wire_bytes < 1e6 < 4096 * registry.IMAGENET21K_NUM_CLASSES * 4


@pytest.mark.parametrize("multi_label", [False, True])
def test_dense_labels_shard_over_the_batch(multi_label):
    """Densified inside a jit with batch-sharded inputs, the targets stay sharded over 'data' (no global gather)."""
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    shapes = losses.compact_label_shapes(jax.device_count() * 2, multi_label, sharding)
    out = jax.jit(lambda b: losses.dense_labels(b, NUM_CLASSES, True)).lower(shapes).compile()
    assert out.output_shardings.spec[0] == "data"
