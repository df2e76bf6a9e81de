"""Training progress: windowed metrics to clu writers and metrics.jsonl, a live terminal line, NaN/Inf stops.

The host never waits for the device on a non-log step, and not even on a log step: the log step's metrics (the
device arrays of its window) are kept, their copies to the host started, and they are fetched in one transfer at
the next step, once that step is queued; the device always has work. A NaN/Inf therefore stops training one step
after the log step that shows it; checkpoints are protected separately by `check_finite`, which the loop calls
(a sync) before every save.

The ETA is what is left of this run, estimated: the remaining steps of every stage at the smoothed step time
(an exponential average over log windows, so that one slow window moves it only partly), scaled from the current
stage's image size to each later stage's by pixel count, plus the compilation of each later stage at the mean
compile time of the stages compiled so far in this run (about 0 when they came from the persistent cache).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from efficientnetv2_jax.train.progressive import Stage

logger = logging.getLogger(__name__)

RATE_SMOOTHING = 0.3  # weight of the newest log window in the smoothed step time


def fetch(tree: Any) -> Any:
    """One host transfer of a pytree of replicated device values (this process's first shard of each)."""
    return jax.device_get(jax.tree.map(lambda x: x.addressable_data(0), tree))


class ProgressReporter:
    """Collects per-step device metrics of one stage and reports them every `log_every_steps`, one step late."""

    def __init__(self, *, total_steps: int, start_step: int, batch_size: int, stage: Stage, stages: Sequence[Stage],
                 compile_seconds: Sequence[float], writer: Any, history: Any, log_every_steps: int,
                 previous: ProgressReporter | None = None):
        self._total_steps = total_steps
        self._batch_size = batch_size
        self._stage = stage
        self._stages = list(stages)
        measured = [s for s in compile_seconds if s > 0]
        self._compile_estimate = float(np.mean(measured)) if measured else 0.0
        self._writer = writer
        self._history = history
        self._log_every = max(1, log_every_steps)
        self._window: list[dict] = []
        self._due: tuple[int, list[dict], float] | None = None  # (log step, its window, when it was queued)
        self._window_start = (start_step, time.perf_counter())
        self._last_loss = float("nan")
        self._live = sys.stderr.isatty() and jax.process_index() == 0
        # Smoothed seconds per step per pixel, carried over from the previous stage's reporter.
        self._seconds_per_pixel_step = previous._seconds_per_pixel_step if previous else None

    def step_done(self, step: int, metrics: dict) -> None:
        """Records one step's metrics (device arrays); reports the previous log step's window, now fetched."""
        self._report_due()
        self._window.append(metrics)
        if step % self._log_every == 0 or step == self._stage.end_step:
            for leaf in jax.tree.leaves(self._window):
                leaf.copy_to_host_async()
            self._due = (step, self._window, time.perf_counter())
            self._window = []
        if self._live:
            sys.stderr.write(f"\rstep {step}/{self._total_steps}  stage {self._stage.index + 1}/{len(self._stages)} "
                             f"{self._stage.image_size}px  loss {self._last_loss:.4f}  "
                             f"{self.images_per_sec():.1f} img/s  ETA {_duration(self.eta_seconds(step))}   ")
            sys.stderr.flush()

    def images_per_sec(self) -> float:
        """The smoothed throughput at this stage's image size (0 before the first log window)."""
        if not self._seconds_per_pixel_step:
            return 0.0
        return self._batch_size / (self._seconds_per_pixel_step * self._stage.image_size ** 2)

    def eta_seconds(self, step: int) -> float:
        """Estimated seconds left after `step`: training of all stages plus the compilations still to come."""
        if not self._seconds_per_pixel_step:
            return float("nan")
        training = sum(max(0, s.end_step - max(step, s.start_step)) * s.image_size ** 2 for s in self._stages)
        compiles = sum(1 for s in self._stages if s.index > self._stage.index and s.end_step > step)
        return training * self._seconds_per_pixel_step + compiles * self._compile_estimate

    def _report_due(self) -> None:
        """Fetches the pending log window in one transfer, checks it, and writes its averages."""
        if self._due is None:
            return
        step, window, queued_at = self._due
        self._due = None
        host = fetch(window)
        averaged = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        averaged["lr"] = float(host[-1]["lr"])
        if not math.isfinite(averaged["loss"]):
            raise FloatingPointError(f"Training diverged: loss is {averaged['loss']} at step {step}; the last "
                                     "checkpoint in the workdir is the last good state (lower the lr, or "
                                     "check the data).")
        first_step, started = self._window_start
        now = time.perf_counter()  # The window's steps are done now (fetched); steps after it are only queued.
        seconds_per_pixel_step = (now - started) / max(step - first_step, 1) / self._stage.image_size ** 2
        self._window_start = (step, now)
        previous = self._seconds_per_pixel_step
        self._seconds_per_pixel_step = seconds_per_pixel_step if previous is None else (
            RATE_SMOOTHING * seconds_per_pixel_step + (1 - RATE_SMOOTHING) * previous)
        images_per_sec = self.images_per_sec()
        eta = self.eta_seconds(step)
        scalars = {**averaged, "images_per_sec": images_per_sec,
                   "images_per_sec_per_core": images_per_sec / jax.device_count(), "eta_seconds": eta,
                   "stage": self._stage.index + 1, "image_size": self._stage.image_size}
        self._last_loss = averaged["loss"]
        self._writer.write_scalars(step, scalars)
        self._history.write({"step": step, **scalars})
        if not self._live:
            logger.info("step %d/%d stage %d %dpx loss %.4f lr %.5f %.1f img/s ETA %s", step, self._total_steps,
                        self._stage.index + 1, self._stage.image_size, averaged["loss"], averaged["lr"],
                        images_per_sec, _duration(eta))

    def check_finite(self, metrics: dict, step: int) -> None:
        """Fetches this step's loss now (a sync) and raises on NaN/Inf; called before every checkpoint."""
        loss = float(fetch(metrics["loss"]))
        if not math.isfinite(loss):
            raise FloatingPointError(f"Training diverged: loss is {loss} at step {step}; not checkpointing it. "
                                     "The last checkpoint in the workdir is the last good state.")

    def eval_done(self, step: int, eval_metrics: dict) -> None:
        """Writes eval metrics (after the pending train window, so that rows stay in step order)."""
        self._report_due()
        self._writer.write_scalars(step, eval_metrics)
        self._history.write({"step": step, **eval_metrics})
        if self._live:
            sys.stderr.write("\n")
        logger.info("eval at step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))

    def close(self) -> None:
        """Reports the last pending window (the stage's end step), then flushes the writer."""
        try:
            self._report_due()
        finally:
            if self._live:
                sys.stderr.write("\n")
            self._writer.flush()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
