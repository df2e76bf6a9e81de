"""Preemption handling: SIGTERM (how Cloud TPU VMs are preempted) asks the loop to checkpoint and exit cleanly.

Usage in the train loop, on every process:

    with PreemptionWatcher() as preemption:
        for step in ...:
            state = train_step(state, batch)
            if preemption.should_stop(step):
                checkpointer.save(step, state, force=True)
                checkpointer.wait_until_finished()
                logging.info(preemption.stop_message(step))
                return  # exit code 0

All processes reach the same decision at the same step, without a host sync: with one process the watcher's own
SIGTERM handler sets the flag; with several (`jax.distributed.initialize`, whose preemption service is on by
default) SIGTERM is left to JAX's preemption notifier, which tells every process through the coordination
service, and `multihost_utils.reached_preemption_sync_point(step)` turns true on all of them at the same step (a
local check, no collective: the loop never waits on the devices for it). Enter the watcher after
`jax.distributed.initialize`. Checked with 2 CPU processes and gloo (tests/test_checkpoint.py).

For tests and preemption drills, `EFFICIENTNETV2_JAX_SIGTERM_AT_STEP=N` makes every process send itself SIGTERM
when `should_stop(N)` is called, so a stop at step N is exact rather than timing-dependent.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import types

import jax
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)
SIGTERM_AT_STEP_ENV = "EFFICIENTNETV2_JAX_SIGTERM_AT_STEP"


class PreemptionWatcher:
    """Context manager that turns SIGTERM (and optionally SIGINT) into a stop request agreed by all processes."""

    def __init__(self, handle_sigint: bool = False):
        self._handle_sigint = handle_sigint
        self._previous_handlers: dict[int, object] = {}
        self._received: str | None = None
        self._agreed = False
        self._sigterm_at_step = int(os.environ.get(SIGTERM_AT_STEP_ENV) or -1)

    @property
    def requested(self) -> bool:
        """Whether this process received a stop signal (before any agreement with the others)."""
        return self._received is not None

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        """Records the request; a second SIGINT falls back to the usual KeyboardInterrupt."""
        if self._received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self._received = signal.Signals(signum).name
        logger.warning("Received %s: will save a checkpoint at the next step boundary and exit.", self._received)

    def __enter__(self) -> "PreemptionWatcher":
        if threading.current_thread() is not threading.main_thread():
            logger.warning("PreemptionWatcher outside the main thread: signals are not handled.")
            return self
        if jax.process_count() > 1:  # SIGTERM stays with JAX's preemption notifier (a handler would replace it).
            return self
        for signum in (signal.SIGTERM, signal.SIGINT) if self._handle_sigint else (signal.SIGTERM,):
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def should_stop(self, step: int) -> bool:
        """True once every process agrees to stop at this step; call it on all processes after every step."""
        if self._agreed:
            return True
        if step == self._sigterm_at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        self._agreed = self.requested if jax.process_count() == 1 else _reached_jax_preemption_sync_point(step)
        return self._agreed

    def stop_message(self, step: int) -> str:
        """The log line printed when the run stops for preemption."""
        cause = self._received or "a preemption notice"
        return f"Preempted ({cause}): checkpoint saved at step {step}; exiting cleanly, restart to resume."


def _reached_jax_preemption_sync_point(step: int) -> bool:
    """JAX's preemption sync point (only active under jax.distributed with the preemption service)."""
    try:
        return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # The preemption service is disabled.
        return False
