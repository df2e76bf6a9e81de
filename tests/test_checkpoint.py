"""Checkpoint round trips, retention, corrupt fallback, variable files, init_from, SIGTERM and the compile cache."""

import logging
import os
import signal
import subprocess
import sys
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

from efficientnetv2_jax import checkpoint
from efficientnetv2_jax.train.preemption import PreemptionWatcher
from processes import Child, cpu_env, run_processes

MODEL = "efficientnetv2-b0"


@flax.struct.dataclass
class State:
    step: Any
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any
    ema_batch_stats: Any


class Tiny(nn.Module):
    num_classes: int
    stem_features: int = 8

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(self.stem_features, (3, 3), name="stem")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(self.num_classes, name="classifier")(x.mean((1, 2)))


def init_variables(num_classes=8, stem_features=8, seed=0):
    return Tiny(num_classes, stem_features).init(jax.random.key(seed), jnp.ones((1, 8, 8, 3)))


def make_state(step=3, num_classes=8, seed=0):
    variables = init_variables(num_classes, seed=seed)
    params = variables["params"]
    batch_stats = jax.tree.map(lambda x: x + 0.25, variables["batch_stats"])
    tx = optax.rmsprop(0.01, decay=0.9, eps=1e-3, momentum=0.9, initial_scale=1.0)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, tx.init(params), params)
    return State(step=jnp.int32(step), params=params, batch_stats=batch_stats, opt_state=opt_state,
                 ema_params=jax.tree.map(lambda x: x * 0.5 + 1.0, params),
                 ema_batch_stats=jax.tree.map(lambda x: x * 3.0, batch_stats))


def shardings_for(tree, mesh):
    """Leaves whose first dim divides the mesh size are sharded on 'data', the rest replicated."""
    size = mesh.devices.size
    return jax.tree.map(lambda x: NamedSharding(mesh, P("data") if x.ndim and x.shape[0] % size == 0 else P()), tree)


def data_mesh(num_devices):
    return Mesh(np.array(jax.devices()[:num_devices]), ("data",))


def host(tree):
    return jax.tree.map(np.asarray, tree)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def new_checkpointer(workdir, **kwargs):
    kwargs.setdefault("model_name", MODEL)
    kwargs.setdefault("num_classes", 8)
    return checkpoint.Checkpointer(str(workdir), **kwargs)


def test_restore_onto_smaller_meshes_and_survives_donation(tmp_path):
    assert jax.device_count() == 8
    state = make_state()
    expected = host(state)
    mesh8 = data_mesh(8)
    sharded = jax.device_put(state, shardings_for(state, mesh8))
    assert sharded.params["classifier"]["bias"].sharding.spec == P("data")
    with new_checkpointer(tmp_path) as ckpt:
        assert ckpt.save(3, sharded, force=True)
        jax.tree.map(lambda x: x.delete(), sharded)  # The train step donates the state right after saving.
        ckpt.wait_until_finished()
        abstract = jax.eval_shape(lambda: state)
        for target_shardings in (shardings_for(state, data_mesh(2)), SingleDeviceSharding(jax.devices()[5])):
            restored = ckpt.restore_latest(abstract, shardings=target_shardings)
            assert restored.step == 3 and isinstance(restored.state, State)
            assert_trees_equal(restored.state, expected)
            leaf = restored.state.params["classifier"]["bias"]
            wanted = target_shardings if isinstance(target_shardings, SingleDeviceSharding) else NamedSharding(
                data_mesh(2), P("data"))
            assert leaf.sharding == wanted


def test_restore_needs_shardings_and_empty_dir_gives_none(tmp_path):
    state = make_state()
    with new_checkpointer(tmp_path) as ckpt:
        abstract = jax.eval_shape(lambda: state)
        assert ckpt.restore_latest(abstract, shardings=SingleDeviceSharding(jax.devices()[0])) is None
        ckpt.save(1, state, force=True)
        ckpt.wait_until_finished()
        with pytest.raises(ValueError, match="has no sharding"):
            ckpt.restore_latest(abstract)


def test_interval_policy_keep_last_and_best(tmp_path):
    state = make_state()
    with new_checkpointer(tmp_path, save_every_steps=2, keep_last=2, keep_best=1) as ckpt:
        assert not ckpt.save(1, state)
        assert ckpt.save(1, state, force=True)
        assert ckpt.save(2, state, metrics={"eval_top1": jnp.float32(0.9)})
        assert not ckpt.save(2, state, force=True)  # Already saved (a stage end on an interval step).
        assert not ckpt.save(3, state)
        ckpt.save(4, state, metrics={"eval_top1": 0.5, "eval_top5": 0.99})
        ckpt.save(5, state, force=True)
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [2, 4, 5]
        assert ckpt.metrics(2) == {"eval_top1": pytest.approx(0.9)}
    with new_checkpointer(tmp_path, save_every_steps=2, keep_last=2, keep_best=1) as ckpt:  # Restarted run.
        ckpt.save(6, state)
        ckpt.save(7, state, force=True)
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [2, 6, 7] and ckpt.best_step() == 2


def test_best_mode_min_and_bad_options(tmp_path):
    state = make_state()
    with new_checkpointer(tmp_path, keep_last=1, keep_best=1, best_metric="loss", best_mode="min") as ckpt:
        for step, loss in ((1, 0.3), (2, 0.1), (3, 0.7), (4, 0.2)):
            ckpt.save(step, state, metrics={"loss": loss}, force=True)
        ckpt.wait_until_finished()
        assert ckpt.all_steps() == [2, 4]
    with pytest.raises(ValueError, match="max, min"):
        new_checkpointer(tmp_path / "x", best_mode="highest")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax drops coroutines on a failed read.
def test_corrupt_latest_falls_back_with_warning(tmp_path, caplog):
    with new_checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(step=1, seed=1), force=True, stage_index=0)
        ckpt.save(2, make_state(step=2, seed=2), force=True, stage_index=1)
        ckpt.wait_until_finished()
    state_dir = tmp_path / "checkpoints" / "2" / "state"
    for path in state_dir.rglob("*"):
        if path.is_file() and path.name not in ("commit_success.txt",):
            path.write_bytes(b"garbage")
    with new_checkpointer(tmp_path) as ckpt, caplog.at_level(logging.WARNING):
        abstract = jax.eval_shape(lambda: make_state())
        restored = ckpt.restore_latest(abstract, shardings=SingleDeviceSharding(jax.devices()[0]))
        assert restored.step == 1 and restored.metadata["stage_index"] == 0
        assert_trees_equal(restored.state, host(make_state(step=1, seed=1)))
        assert "step 2" in caplog.text and "unreadable" in caplog.text
        assert (tmp_path / "checkpoints_corrupt" / "2").exists()
        assert ckpt.all_steps() == [1]
        assert ckpt.save(2, restored.state, force=True)  # The resumed run can checkpoint step 2 again.


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax drops coroutines on a failed read.
def test_all_unreadable_raises(tmp_path):
    with new_checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(), force=True)
        ckpt.wait_until_finished()
        wrong = jax.eval_shape(lambda: make_state(num_classes=5))
        with pytest.raises(ValueError, match="No checkpoint .* is readable"):
            ckpt.restore_latest(wrong, shardings=SingleDeviceSharding(jax.devices()[0]))
        assert ckpt.all_steps() == [1]  # Nothing moved aside when no step restores.


def test_metadata_is_saved_alongside(tmp_path):
    config = ml_collections.ConfigDict({"model": {"name": MODEL}, "batch_size": 64})
    with new_checkpointer(tmp_path, config=config) as ckpt:
        assert ckpt.latest_metadata() is None
        ckpt.save(7, make_state(), force=True, stage_index=2, data_position={"epoch": np.int64(1), "index": 96})
        ckpt.wait_until_finished()
        metadata = ckpt.latest_metadata()
    assert metadata["model_name"] == MODEL and metadata["num_classes"] == 8 and metadata["step"] == 7
    assert metadata["config"]["batch_size"] == 64 and metadata["stage_index"] == 2
    assert metadata["data_position"] == {"epoch": 1, "index": 96}
    assert checkpoint.restore_metadata(str(tmp_path)) == metadata


def test_restore_variables_ema_raw_and_step(tmp_path):
    first, second = make_state(step=1, seed=1), make_state(step=2, seed=2)
    with new_checkpointer(tmp_path) as ckpt:
        ckpt.save(1, jax.device_put(first, shardings_for(first, data_mesh(8))), force=True)
        ckpt.save(2, second, force=True)
    ema = checkpoint.restore_variables(str(tmp_path))
    assert isinstance(ema["params"]["stem"]["kernel"], np.ndarray)
    assert_trees_equal(ema, {"params": host(second.ema_params), "batch_stats": host(second.ema_batch_stats)})
    raw = checkpoint.restore_variables(str(tmp_path / "checkpoints"), step=1, ema=False)
    assert_trees_equal(raw, {"params": host(first.params), "batch_stats": host(first.batch_stats)})
    logits = Tiny(8).apply(ema, jnp.ones((2, 8, 8, 3)))
    assert logits.shape == (2, 8)
    with pytest.raises(ValueError, match="available: \\[1, 2\\]"):
        checkpoint.restore_variables(str(tmp_path), step=5)
    with pytest.raises(ValueError, match="holds no checkpoint"):
        checkpoint.restore_variables(str(tmp_path / "nothing"))


def test_save_variables_round_trip(tmp_path):
    variables = host(init_variables(seed=4))
    out = tmp_path / "converted"
    checkpoint.save_variables(str(out), variables, model_name=MODEL, num_classes=8)
    assert_trees_equal(checkpoint.restore_variables(str(out)), variables)
    assert checkpoint.restore_metadata(str(out)) == {"kind": "variables", "model_name": MODEL, "num_classes": 8}
    with pytest.raises(ValueError, match="already exists"):
        checkpoint.save_variables(str(out), variables, model_name=MODEL, num_classes=8)
    with pytest.raises(ValueError, match="batch_stats"):
        checkpoint.save_variables(str(tmp_path / "y"), {"params": variables["params"]}, model_name=MODEL,
                                  num_classes=8)


def test_load_init_from_skips_head_of_other_class_count(tmp_path, caplog):
    source = make_state(num_classes=10, seed=1)
    with new_checkpointer(tmp_path, num_classes=10) as ckpt:
        ckpt.save(5, source, force=True)
    target = init_variables(num_classes=5, seed=9)
    replicated = jax.device_put(target, NamedSharding(data_mesh(8), P()))
    with caplog.at_level(logging.INFO):
        loaded = checkpoint.load_init_from(str(tmp_path), replicated, model_name=MODEL)
    assert "classifier/kernel" in caplog.text
    np.testing.assert_array_equal(loaded["params"]["stem"]["kernel"], source.ema_params["stem"]["kernel"])
    np.testing.assert_array_equal(loaded["batch_stats"]["bn"]["mean"], source.ema_batch_stats["bn"]["mean"])
    np.testing.assert_array_equal(loaded["params"]["classifier"]["kernel"], target["params"]["classifier"]["kernel"])
    assert loaded["params"]["stem"]["kernel"].sharding == NamedSharding(data_mesh(8), P())


def test_load_init_from_same_head_and_variables_dir(tmp_path):
    variables = host(init_variables(num_classes=8, seed=2))
    checkpoint.save_variables(str(tmp_path / "v"), variables, model_name=MODEL, num_classes=8)
    loaded = checkpoint.load_init_from(str(tmp_path / "v"), host(init_variables(seed=3)), model_name=MODEL)
    assert_trees_equal(loaded, variables)


def test_load_init_from_errors(tmp_path):
    checkpoint.save_variables(str(tmp_path / "v"), host(init_variables()), model_name=MODEL, num_classes=8)
    with pytest.raises(ValueError, match="'efficientnetv2-b0' checkpoint but the model is 'efficientnetv2-s'"):
        checkpoint.load_init_from(str(tmp_path / "v"), init_variables(), model_name="efficientnetv2-s")
    other_body = Tiny(8, stem_features=4).init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="leaf batch_stats/bn/mean has shape \\(8,\\) in the checkpoint but \\(4,\\)"):
        checkpoint.load_init_from(str(tmp_path / "v"), other_body, model_name=MODEL)
    fewer = {"params": {"stem": init_variables()["params"]["stem"]}, "batch_stats": {}}
    with pytest.raises(ValueError, match="leaf batch_stats/bn/mean is not in model"):
        checkpoint.load_init_from(str(tmp_path / "v"), fewer, model_name=MODEL)


def test_sigterm_sets_the_stop_flag():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionWatcher() as preemption:
        assert not preemption.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.requested and preemption.should_stop(2)
        assert "SIGTERM" in preemption.stop_message(2)
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigint_only_when_asked():
    with PreemptionWatcher(handle_sigint=True) as preemption:
        os.kill(os.getpid(), signal.SIGINT)
        assert preemption.should_stop(1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    before = signal.getsignal(signal.SIGINT)  # pytest-xdist workers ignore SIGINT, so compare handlers.
    with PreemptionWatcher() as preemption:
        assert signal.getsignal(signal.SIGINT) is before
        assert not preemption.requested


def test_compilation_cache_writes_entries(tmp_path):
    script = ("import jax, jax.numpy as jnp, sys\n"
              "from efficientnetv2_jax.train.compilation_cache import enable_compilation_cache\n"
              "enable_compilation_cache(sys.argv[1])\n"
              "jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "cache")], check=True, env=env, timeout=120)
    assert any((tmp_path / "cache").iterdir())


_TWO_PROCESS_SCRIPT = """
import os, signal, sys, time
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from efficientnetv2_jax.train.preemption import PreemptionWatcher
process_id, port = int(sys.argv[1]), sys.argv[2]
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id, initialization_timeout=60)
with PreemptionWatcher() as preemption:
    for step in range(1, 100000):
        if process_id == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notifier tells the other process.
        if preemption.should_stop(step):
            print(f"stop {step}", flush=True)
            break
        time.sleep(0.01)
jax.distributed.shutdown()
"""


def test_two_processes_agree_on_the_stop_step():
    env = cpu_env(1)
    results = run_processes(lambda address: [
        Child([sys.executable, "-c", _TWO_PROCESS_SCRIPT, str(i), address.rsplit(":", 1)[1]], env=env)
        for i in range(2)], timeout=120)
    outputs = [[line for line in out.splitlines() if line.startswith("stop")] for _, out in results]
    (first,), (second,) = outputs
    assert first == second and int(first.split()[1]) >= 3  # Both stop at the same step, after the signal.


def test_small_replicated_arrays_are_saved_without_a_slice_program_per_replica(tmp_path, caplog):
    """Orbax cuts a replicated array into one slice per replica, each by its own compiled program; below
    checkpoint.MIN_REPLICA_SLICE_BYTES per slice that costs more than it saves (304 programs in a tiny
    model's first save), so only the large array here is sliced."""
    mesh = data_mesh(8)
    big_rows = checkpoint.MIN_REPLICA_SLICE_BYTES // 4  # One float32 row of 1 MiB per replica.
    state = make_state().replace(opt_state=np.ones((8, big_rows), np.float32))
    replicated = jax.device_put(state, NamedSharding(mesh, P()))
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles(), new_checkpointer(tmp_path) as ckpt:
        assert ckpt.save(1, replicated, force=True)
        ckpt.wait_until_finished()
    sliced = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling jit(slice)")]
    assert sliced and all(f"float32[8,{big_rows}]" in message for message in sliced), sliced
    with new_checkpointer(tmp_path) as ckpt:
        restored = ckpt.restore_latest(jax.eval_shape(lambda: state), shardings=NamedSharding(mesh, P()))
    assert_trees_equal(restored.state, host(state))
