"""Mixup/CutMix: official label mass and image weights, halves semantics within each device's group, draws keyed
by the global example index, sharding independence, and no gather of the global batch in a compiled step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from scipy import stats

from efficientnetv2_jax.data.mixing import apply_mixing, mixing_params, partner_indices

SIZE = 16


def constant_batch(batch_size, num_classes=10):
    """Image i is filled with value i; its label is one-hot class i % num_classes."""
    images = jnp.broadcast_to(jnp.arange(batch_size, dtype=jnp.float32)[:, None, None, None],
                              (batch_size, SIZE, SIZE, 3))
    labels = jax.nn.one_hot(jnp.arange(batch_size) % num_classes, num_classes)
    return images, labels


def test_partners_reverse_each_half_or_the_whole_group():
    np.testing.assert_array_equal(partner_indices(8, True, True), [3, 2, 1, 0, 7, 6, 5, 4])
    np.testing.assert_array_equal(partner_indices(6, True, False), [5, 4, 3, 2, 1, 0])
    np.testing.assert_array_equal(partner_indices(6, False, True), [5, 4, 3, 2, 1, 0])


def test_only_the_keys_of_the_methods_that_are_on():
    assert set(mixing_params(np.array([1, 2]), 8, SIZE, 0.5, 0.0)) == {"mixup_lambda"}
    assert set(mixing_params(np.array([1, 2]), 8, SIZE, 0.0, 0.5)) == {"cutmix_box"}
    params = mixing_params(np.array([1, 2]), 64, SIZE, 0.5, 0.5)
    assert np.all(params["mixup_lambda"] >= 0.5) and np.all(params["mixup_lambda"] <= 1.0)
    boxes = params["cutmix_box"]
    assert np.all(boxes[:, 0] <= boxes[:, 2]) and np.all(boxes[:, 1] <= boxes[:, 3]) and boxes.max() <= SIZE
    assert np.any(boxes != 0)
    with pytest.raises(ValueError, match="alpha"):
        mixing_params(np.array([0, 0]), 4, SIZE, -1.0, 0.0)


def test_draws_are_keyed_by_seed_step_and_global_example_index():
    whole = mixing_params(np.array([7, 8]), 16, SIZE, 0.2, 0.2)
    # A host holding examples 8..15 draws exactly what a single host draws for them.
    second_half = mixing_params(np.array([7, 8]), 8, SIZE, 0.2, 0.2, first_index=8)
    for key in whole:
        np.testing.assert_array_equal(second_half[key], whole[key][8:])
    assert all(np.array_equal(whole[k], mixing_params(np.array([7, 8]), 16, SIZE, 0.2, 0.2)[k]) for k in whole)
    other_step = mixing_params(np.array([7, 9]), 16, SIZE, 0.2, 0.2)
    assert not np.array_equal(whole["mixup_lambda"], other_step["mixup_lambda"])


def test_beta_draws_follow_the_official_distribution():
    lam = mixing_params(np.array([3, 4]), 20000, SIZE, 0.2, 0.0)["mixup_lambda"]
    # max(w, 1-w) > 0.95 when w ~ Beta(a, a) is in either tail: probability 2 * sf(0.95) (0.582 for a = 0.2).
    assert np.mean(lam > 0.95) == pytest.approx(2 * stats.beta(0.2, 0.2).sf(0.95), abs=0.015)
    uniform = mixing_params(np.array([3, 4]), 20000, SIZE, 1.0, 0.0)["mixup_lambda"]
    assert np.mean(uniform) == pytest.approx(0.75, abs=0.01)  # Beta(1, 1) = U(0, 1): E[max(u, 1-u)] = 3/4


@pytest.mark.parametrize("group_size", [None, 4])
def test_label_mass_and_weights_match_image_weights(group_size):
    batch_size = 16
    group = group_size or batch_size
    images, labels = constant_batch(batch_size, num_classes=batch_size)
    params = mixing_params(np.array([3, 1]), batch_size, SIZE, mixup_alpha=1.0, cutmix_alpha=1.0)
    mixed, mixed_labels = jax.jit(apply_mixing, static_argnums=3)(images, labels, params, group_size)
    mixed, mixed_labels = np.asarray(mixed), np.asarray(mixed_labels)
    np.testing.assert_allclose(mixed_labels.sum(axis=1), 1.0, rtol=1e-6)
    for i in range(batch_size):
        start, position = i // group * group, i % group
        partner = start + (group // 2 - 1 - position if position < group // 2 else group - 1 - (position - group // 2))
        assert partner // group == i // group  # Never outside the example's group.
        if position < group // 2:  # mixup: every pixel = lam*i + (1-lam)*partner
            lam = params["mixup_lambda"][i]
            np.testing.assert_allclose(mixed[i], lam * i + (1 - lam) * partner, rtol=1e-6)
            partner_weight = 1 - lam
        else:  # cutmix: the partner's share of pixels is its label weight
            partner_weight = np.mean(mixed[i, ..., 0] == partner)
            y0, x0, y1, x1 = params["cutmix_box"][i]
            assert partner_weight == pytest.approx((y1 - y0) * (x1 - x0) / SIZE**2)
            assert np.all(np.isin(mixed[i], [i, partner]))
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


def _sharded_mixing(batch_size, group_size):
    devices = np.array(jax.devices())
    images, labels = constant_batch(batch_size)
    params = mixing_params(np.array([9, 9]), batch_size, SIZE, 0.5, 0.5)
    mesh = Mesh(devices, ("data",))
    shard = lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))  # noqa: E731
    step = jax.jit(apply_mixing, static_argnums=3)
    args = (shard(images), shard(labels), jax.tree.map(shard, params), group_size)
    return (images, labels, params), step(*args), step.lower(*args).compile().as_text()


def test_sharded_batch_gives_the_same_result_as_one_device():
    batch_size = 4 * jax.device_count()
    (images, labels, params), sharded, _ = _sharded_mixing(batch_size, 4)
    expected = apply_mixing(images, labels, params, 4)
    for got, want in zip(sharded, expected):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)


def test_per_device_groups_compile_without_cross_device_traffic():
    per_device = 4
    _, _, hlo = _sharded_mixing(per_device * jax.device_count(), per_device)
    for op in ("all-gather", "all-to-all", "collective-permute", "all-reduce"):
        assert op not in hlo, op
    # The whole batch as one group (the official rule applied to the global batch) must move data.
    _, _, global_hlo = _sharded_mixing(per_device * jax.device_count(), None)
    assert any(op in global_hlo for op in ("all-gather", "collective-permute", "all-to-all"))
