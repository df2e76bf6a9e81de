"""The one builder on 8 CPU devices: official BN groups, per-device mixing in the compiled step, sharded state,
checkpoints across shardings and device counts, and the 'auto' precision per platform."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs.imagenet1k import get_config
from efficientnetv2_jax import checkpoint as ckpt_lib
from efficientnetv2_jax.data.mixing import mixing_params
from efficientnetv2_jax.models.layers import BatchNorm
from efficientnetv2_jax.plan import collective_sizes
from efficientnetv2_jax.train import progressive
from efficientnetv2_jax.train.program import bn_group_size, build_model, build_program, make_mesh

NUM_CLASSES = 10


def tiny_config(model="s", batch=32, size=32, **overrides) -> ml_collections.ConfigDict:
    """A tiny variant of the official recipe: one 32 px stage (two with mixing), batch 32 over 8 devices."""
    config = get_config(model)
    config.model.width, config.model.depth = 0.25, 0.1
    config.batch_size, config.eval_batch_size = batch, batch
    config.progressive.num_stages = 1
    config.progressive.train_image_size, config.eval_image_size = size, size
    config.lr.warmup_epochs = 0.0
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def synthetic_batch(program, stage, seed: int) -> dict:
    """Random images and labels with the shapes and shardings the train iterator delivers."""
    rng = np.random.default_rng(seed)
    host = {}
    for key, shape in program.train_batch_shapes(stage).items():
        if key == "image":
            host[key] = rng.integers(0, 256, shape.shape, dtype=np.uint8)
        elif key == "label_indices":
            host[key] = rng.integers(0, program.num_classes, shape.shape).astype(np.int32)
        elif key in ("label_count", "mask"):
            host[key] = np.ones(shape.shape, shape.dtype)
    host.update(mixing_params(np.array([0, seed]), program.config.batch_size, stage.image_size, stage.mixup_alpha,
                              stage.cutmix_alpha))
    return {key: jax.device_put(value, program.data_sharding) for key, value in host.items()}


def test_bn_groups_follow_the_official_rule_in_examples():
    devices = jax.devices()  # 8 CPU devices: per-core batch 4 at batch 32.
    assert bn_group_size(tiny_config(), devices) is None  # min(8 x 4, 32) = the whole batch.
    assert bn_group_size(tiny_config(**{"model.bn_replica_group": 2}), devices) == 8
    assert bn_group_size(tiny_config(**{"model.bn_replica_group": 0}), devices) is None
    assert bn_group_size(tiny_config(**{"model.bn_replica_group": 2}), devices[:4]) == 16
    with pytest.raises(ValueError, match="bn_replica_group"):
        bn_group_size(tiny_config(**{"model.bn_replica_group": 3}), devices)


def test_bn_groups_on_real_tpu_topologies_are_1024_examples_on_32_cores():
    from efficientnetv2_jax.tpu_slices import tpu_slice

    config = get_config("s")  # Batch 4096, bn_replica_group 8.
    v3 = tpu_slice("v3-32").topology_devices()  # 32 devices, one per core.
    v4 = tpu_slice("v4-32").topology_devices()  # 16 megacore devices of two cores.
    assert (len(v3), len(v4)) == (32, 16)
    assert bn_group_size(config, v3) == bn_group_size(config, v4) == 1024


def test_grouped_bn_on_a_sharded_batch_equals_a_numpy_per_group_reference():
    config = tiny_config(**{"model.bn_replica_group": 2})
    group = build_model(config, NUM_CLASSES).bn_group_size
    assert group == 8  # 2 cores x 4 examples per core, from the config and the 8 devices.
    x = np.random.default_rng(0).normal(size=(32, 3, 3, 5)).astype(np.float32)
    x *= np.arange(1, 33, dtype=np.float32)[:, None, None, None]  # Groups with very different statistics.
    mesh = make_mesh(32)
    sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    bn = BatchNorm(group_size=group)
    variables = bn.init(jax.random.PRNGKey(0), x[:group], train=False)
    step = jax.jit(lambda v, x: bn.apply(v, x, train=True, mutable=["batch_stats"]))
    y, updated = step(variables, sharded)
    groups = x.reshape(4, group, 3, 3, 5).astype(np.float64)
    mean = groups.mean(axis=(1, 2, 3), keepdims=True)
    var = (groups**2).mean(axis=(1, 2, 3), keepdims=True) - mean**2
    np.testing.assert_allclose(np.asarray(y), ((groups - mean) / np.sqrt(var + 1e-3)).reshape(x.shape),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(updated["batch_stats"]["mean"], 0.1 * mean.mean(axis=0).reshape(-1), rtol=1e-5)
    np.testing.assert_allclose(updated["batch_stats"]["var"], 0.9 + 0.1 * var.mean(axis=0).reshape(-1), rtol=1e-5)
    # The batch statistics are reduced within groups of 2 devices (the running averages, C floats, over the 4
    # groups), never across all 8.
    hlo = step.lower(variables, sharded).compile().as_text()
    assert sorted(_all_reduce_group_sizes(hlo)) == [2, 4]


def _all_reduce_group_sizes(hlo: str) -> list[int]:
    """Devices per replica group of each all-reduce (`replica_groups=mesh[...] {'axis'...}` form)."""
    sizes = []
    for axes, reduced in re.findall(r"all-reduce\(.*?replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", hlo):
        size_of = dict(re.findall(r"'(\w+)'=(\d+)", axes))
        sizes.append(int(np.prod([int(size_of[a]) for a in re.findall(r"'(\w+)'", reduced)])))
    return sizes


def test_m_style_step_with_mixup_and_cutmix_moves_no_batch_between_devices():
    config = tiny_config("m", **{"progressive.num_stages": 2, "progressive.base_image_size": 16})
    stage = progressive.make_stages(config, 10)[-1]
    assert stage.mixup_alpha > 0 and stage.cutmix_alpha > 0
    program = build_program(config, num_classes=NUM_CLASSES, steps_per_epoch=10)
    compiled, _ = program.compile_train_step(stage)
    moved = collective_sizes(compiled.as_text())
    # Only the gradient (and metric) all-reduces: partners from other devices would need an all-gather of the
    # batch (global partner indices) or a collective-permute (a global static permutation).
    assert set(moved) == {"all-reduce"}, {op: max(sizes) for op, sizes in moved.items()}


def _train(program, steps: int, state):
    stage = progressive.make_stages(program.config, 100)[0]
    compiled, _ = program.compile_train_step(stage)
    state = jax.device_put(state, program.state_shardings, may_alias=False)  # A copy: the step donates it.
    for step in range(steps):
        state, _ = compiled(state, synthetic_batch(program, stage, step))
    return state


def _assert_states_close(a, b, tol):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol, err_msg=jax.tree_util.keystr(path))


def test_sharded_state_trains_like_replicated_and_checkpoints_restore_across_settings_and_devices(tmp_path):
    replicated = build_program(tiny_config(), num_classes=NUM_CLASSES, steps_per_epoch=100)
    sharded = build_program(tiny_config(shard_state="data"), num_classes=NUM_CLASSES, steps_per_epoch=100)
    slots = jax.tree.leaves(sharded.state_shardings.opt_state)
    assert any(s.spec != P() for s in slots) and all(s.spec == P() for s in jax.tree.leaves(sharded.state_shardings.params))
    initial = replicated.init_state(jax.random.PRNGKey(0))
    state_r, state_s = _train(replicated, 3, initial), _train(sharded, 3, initial)
    _assert_states_close(state_s.params, state_r.params, 1e-6)
    _assert_states_close(state_s, state_r, 1e-5)  # RMSProp's nu: summation order of reduce-scatter vs all-reduce.
    big = max(jax.tree.leaves(state_s.opt_state), key=lambda x: x.size)
    assert big.addressable_shards[0].data.size == big.size // 8  # Each device holds 1/8 of the slot.

    def save(state, name):
        with ckpt_lib.Checkpointer(str(tmp_path / name), model_name=replicated.model.model_name,
                                   num_classes=NUM_CLASSES, keep_best=0) as checkpointer:
            checkpointer.save(3, state, force=True)
            checkpointer.wait_until_finished()

    def restore(program, name):
        with ckpt_lib.Checkpointer(str(tmp_path / name), model_name=replicated.model.model_name,
                                   num_classes=NUM_CLASSES, keep_best=0) as checkpointer:
            return checkpointer.restore_latest(program.abstract_state, shardings=program.state_shardings).state

    save(state_s, "sharded")
    save(state_r, "replicated")
    _assert_states_close(restore(replicated, "sharded"), state_s, 0)
    four = build_program(tiny_config(shard_state="data"), num_classes=NUM_CLASSES, steps_per_epoch=100,
                         devices=jax.devices()[:4])
    on_four = restore(four, "replicated")
    slot = max(jax.tree.leaves(on_four.opt_state), key=lambda x: x.size)
    assert len(slot.sharding.device_set) == 4 and slot.addressable_shards[0].data.size == slot.size // 4
    _assert_states_close(on_four, state_r, 0)


def test_auto_dtype_is_float32_on_cpu_and_bfloat16_on_tpu():
    from efficientnetv2_jax.tpu_slices import tpu_slice

    config = tiny_config()
    assert config.model.dtype == "auto"
    assert build_model(config, NUM_CLASSES).dtype == jnp.float32
    tpu = build_model(config, NUM_CLASSES, devices=tpu_slice("v5litepod-4").topology_devices())
    assert tpu.dtype == jnp.bfloat16 and tpu.conv_impl == "xla"
