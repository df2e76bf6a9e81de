"""The training loop never waits for the device on a plain step: a new per-step host sync fails here.

`jax.transfer_guard_device_to_host('disallow')`, under which the loop dispatches (train.py `_no_device_sync`),
raises on TPU and GPU but not on the CPU backend, whose arrays are host memory. So this test counts instead: every
device-to-host path of a jax.Array (the numpy conversions, `.item()`, `.tolist()`, dlpack, `jax.device_get`,
`block_until_ready`) is wrapped to record the step the loop is in, and whether it happened inside a dispatch-only
block. In a short in-process run (tiny model, 12 steps, a log every 3) the loop may then sync only where the
design says: at the step after a log step, to fetch that step's metric window in one transfer, and after the
last step (last window, finiteness check, checkpoint, evaluation); never inside a dispatch-only block.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import threading

import jax
import pytest
from jax._src import array as jax_array

from efficientnetv2_jax.train import progress, train

TOTAL_STEPS = 12  # One stage (one compilation), a log every 3 steps: log steps 3, 6, 9 and 12 (the stage end).
LOG_EVERY = 3
# A log step's window is fetched at the next step's step_done; the last one (step 12) by the reporter's close(),
# after which come the checkpoint and the final evaluation.
FETCH_STEPS = [4, 7, 10]


class SyncCounter:
    """Records (step, inside a dispatch-only block, path) for every outermost device-to-host transfer or wait of the
    loop's thread (Orbax's background checkpoint writes are not the loop waiting)."""

    def __init__(self):
        self.step = 0  # The step whose step_done ran last (0: before the loop's first step).
        self.dispatching = False
        self.syncs: list[tuple[int, bool, str]] = []
        self._depth = 0

    def wrap(self, name: str, fn):
        def counted(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                return fn(*args, **kwargs)
            if self._depth == 0:
                self.syncs.append((self.step, self.dispatching, name))
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
        return counted

    @contextlib.contextmanager
    def dispatch_only(self, real_guard):
        """The loop's own guard, marked so that any transfer inside it is recorded as a violation."""
        with real_guard():
            self.dispatching = True
            try:
                yield
            finally:
                self.dispatching = False


@pytest.fixture
def counter(monkeypatch):
    """A SyncCounter wired in: every device-to-host path counted, the loop's guard marked, the step tracked."""
    counter = SyncCounter()
    impl = jax_array.ArrayImpl
    for method in ("__array__", "item", "tolist", "__dlpack__", "block_until_ready",
                   "_single_device_array_to_np_array_did_copy"):
        monkeypatch.setattr(impl, method, counter.wrap(f"Array.{method}", getattr(impl, method)))
    value = impl._value  # The property behind float(), int(), bool(), format() and repr().
    monkeypatch.setattr(impl, "_value", property(counter.wrap("Array._value", value.fget)))
    for name in ("device_get", "block_until_ready"):
        monkeypatch.setattr(jax, name, counter.wrap(f"jax.{name}", getattr(jax, name)))
    monkeypatch.setattr(train, "_no_device_sync", functools.partial(counter.dispatch_only, train._no_device_sync))
    step_done = progress.ProgressReporter.step_done

    def tracking_step_done(self, step, metrics):
        counter.step = step
        return step_done(self, step, metrics)

    monkeypatch.setattr(progress.ProgressReporter, "step_done", tracking_step_done)
    return counter


def _tiny_digits_config(compilation_cache_dir: str):
    """The quickstart config shrunk to seconds: tiny model, one 16 px stage of 12 steps, no mid-run checkpoint/eval."""
    config = importlib.import_module("configs.digits").get_config(None)
    config.model.update(width=0.25, depth=0.25)
    config.update(batch_size=8, eval_batch_size=64, total_steps=TOTAL_STEPS, log_every_steps=LOG_EVERY,
                  checkpoint_every_steps=0, eval_every_steps=0, eval_image_size=16,
                  compilation_cache_dir=compilation_cache_dir)
    config.progressive.update(num_stages=1, train_image_size=16)
    return config


def test_loop_syncs_with_the_device_only_to_fetch_log_windows(counter, tmp_path, compilation_cache_dir):
    summary = train.train_and_evaluate(_tiny_digits_config(compilation_cache_dir), str(tmp_path / "run"))
    assert summary["steps"] == TOTAL_STEPS
    inside = [(step, name) for step, dispatching, name in counter.syncs if dispatching]
    assert not inside, f"device-to-host transfers inside dispatch-only blocks (step, path): {inside}"
    in_loop = [(step, name) for step, _, name in counter.syncs if 0 < step < TOTAL_STEPS]
    assert in_loop == [(step, "jax.device_get") for step in FETCH_STEPS], (
        f"between steps 1 and {TOTAL_STEPS} the loop may only fetch each log window, in one transfer, at the step "
        f"after it ({FETCH_STEPS}); it synced at (step, path): {in_loop}")
    assert any(step == TOTAL_STEPS for step, _, _ in counter.syncs)  # The last window, checkpoint and evaluation.
