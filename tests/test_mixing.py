"""Mixup/CutMix: official label mass, image weights, halves semantics and sharding independence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from efficientnetv2_jax.data.mixing import apply_mixing, mixing_params

SIZE = 16


def constant_batch(batch_size, num_classes=10):
    """Image i is filled with value i; its label is one-hot class i % num_classes."""
    images = jnp.broadcast_to(jnp.arange(batch_size, dtype=jnp.float32)[:, None, None, None],
                              (batch_size, SIZE, SIZE, 3))
    labels = jax.nn.one_hot(jnp.arange(batch_size) % num_classes, num_classes)
    return images, labels


def test_halves_semantics_when_both_are_on():
    params = mixing_params(np.array([1, 2]), 8, SIZE, mixup_alpha=0.5, cutmix_alpha=0.5)
    np.testing.assert_array_equal(params["mix_partner"], [3, 2, 1, 0, 7, 6, 5, 4])
    assert np.all(params["mixup_lambda"][:4] >= 0.5) and np.all(params["mixup_lambda"][4:] == 1.0)
    boxes = params["cutmix_box"]
    assert np.all(boxes[:4] == 0)
    assert np.all(boxes[:, 0] <= boxes[:, 2]) and np.all(boxes[:, 1] <= boxes[:, 3]) and boxes.max() <= SIZE


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.8, 0.0), (0.0, 1.0)])
def test_single_method_covers_whole_batch_with_reversed_partner(mixup_alpha, cutmix_alpha):
    params = mixing_params(np.array([4, 5]), 6, SIZE, mixup_alpha, cutmix_alpha)
    np.testing.assert_array_equal(params["mix_partner"], [5, 4, 3, 2, 1, 0])
    if mixup_alpha:
        assert np.all(params["cutmix_box"] == 0) and np.all(params["mixup_lambda"] >= 0.5)
    else:
        assert np.all(params["mixup_lambda"] == 1.0) and np.any(params["cutmix_box"] != 0)


def test_mixing_params_are_a_pure_function_of_the_seed():
    a = mixing_params(np.array([7, 8]), 16, SIZE, 0.2, 0.2)
    b = mixing_params(np.array([7, 8]), 16, SIZE, 0.2, 0.2)
    c = mixing_params(np.array([7, 9]), 16, SIZE, 0.2, 0.2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["mixup_lambda"], c["mixup_lambda"])
    with pytest.raises(ValueError, match="alpha"):
        mixing_params(np.array([0, 0]), 4, SIZE, -1.0, 0.0)


def test_label_mass_and_weights_match_image_weights():
    batch_size = 16
    images, labels = constant_batch(batch_size, num_classes=batch_size)
    params = mixing_params(np.array([3, 1]), batch_size, SIZE, mixup_alpha=1.0, cutmix_alpha=1.0)
    mixed, mixed_labels = jax.jit(apply_mixing)(images, labels, params)
    mixed, mixed_labels = np.asarray(mixed), np.asarray(mixed_labels)
    np.testing.assert_allclose(mixed_labels.sum(axis=1), 1.0, rtol=1e-6)
    for i, partner in enumerate(params["mix_partner"]):
        lam = params["mixup_lambda"][i]
        if i < batch_size // 2:  # mixup: every pixel = lam*i + (1-lam)*partner
            np.testing.assert_allclose(mixed[i], lam * i + (1 - lam) * partner, rtol=1e-6)
            partner_weight = 1 - lam
        else:  # cutmix: the partner's share of pixels is its label weight
            partner_weight = np.mean(mixed[i, ..., 0] == partner)
            y0, x0, y1, x1 = params["cutmix_box"][i]
            assert partner_weight == pytest.approx((y1 - y0) * (x1 - x0) / SIZE**2)
        assert mixed_labels[i, partner] == pytest.approx(partner_weight, abs=1e-6)
        assert mixed_labels[i, i] == pytest.approx(1 - partner_weight, abs=1e-6)


def test_multi_hot_labels_keep_their_mass():
    images, _ = constant_batch(4)
    labels = jnp.array([[0.5, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3, 0]])
    params = mixing_params(np.array([0, 1]), 4, SIZE, 0.4, 0.4)
    _, mixed_labels = apply_mixing(images, labels, params)
    np.testing.assert_allclose(np.asarray(mixed_labels).sum(axis=1), 1.0, rtol=1e-6)


def test_no_mixing_keys_means_unchanged():
    images, labels = constant_batch(4)
    out_images, out_labels = apply_mixing(images, labels, {"image": images})
    assert out_images is images and out_labels is labels


def test_sharded_batch_gives_the_same_result_as_one_device():
    devices = np.array(jax.devices())
    batch_size = 2 * len(devices)
    images, labels = constant_batch(batch_size)
    params = mixing_params(np.array([9, 9]), batch_size, SIZE, 0.5, 0.5)
    expected = apply_mixing(images, labels, params)
    mesh = Mesh(devices, ("data",))
    shard = lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    sharded = jax.jit(apply_mixing)(shard(images), shard(labels), jax.tree.map(shard, params))
    for got, want in zip(sharded, expected):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
