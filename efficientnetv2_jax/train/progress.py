"""Training progress: windowed metrics to clu writers and metrics.jsonl, a live terminal line, NaN/Inf stops."""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

import jax
import numpy as np

logger = logging.getLogger(__name__)


class ProgressReporter:
    """Collects per-step device metrics and reports them every `log_every_steps` without syncing in between."""

    def __init__(self, *, total_steps: int, start_step: int, batch_size: int, stage: Any, num_stages: int,
                 writer: Any, history: Any, log_every_steps: int):
        self._total_steps = total_steps
        self._batch_size = batch_size
        self._stage = stage
        self._num_stages = num_stages
        self._writer = writer
        self._history = history
        self._log_every = max(1, log_every_steps)
        self._pending: list[dict] = []
        self._window_start = (start_step, time.perf_counter())
        self._last_loss = float("nan")
        self._live = sys.stderr.isatty() and jax.process_index() == 0
        self._rate = 0.0

    def step_done(self, step: int, metrics: dict) -> None:
        """Records one step's metrics; on log steps fetches, checks and writes their window average."""
        self._pending.append(metrics)
        if step % self._log_every == 0 or step == self._stage.end_step:
            self._flush(step)
        if self._live:
            eta = (self._total_steps - step) / self._rate if self._rate else float("nan")
            sys.stderr.write(f"\rstep {step}/{self._total_steps}  stage {self._stage.index + 1}/{self._num_stages} "
                             f"{self._stage.image_size}px  loss {self._last_loss:.4f}  "
                             f"{self._rate * self._batch_size:.1f} img/s  ETA {_duration(eta)}   ")
            sys.stderr.flush()

    def _flush(self, step: int) -> None:
        host = [jax.tree.map(lambda x: float(np.asarray(x.addressable_data(0))), m) for m in self._pending]
        self._pending = []
        averaged = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        averaged["lr"] = host[-1]["lr"]
        if not math.isfinite(averaged["loss"]):
            raise FloatingPointError(f"Training diverged: loss is {averaged['loss']} at step {step}; the last "
                                     "checkpoint in the workdir is the last good state (lower the lr, or "
                                     "check the data).")
        first_step, started = self._window_start
        now = time.perf_counter()
        self._rate = (step - first_step) / max(now - started, 1e-9)
        self._window_start = (step, now)
        images_per_sec = self._rate * self._batch_size
        eta = (self._total_steps - step) / self._rate if self._rate else float("nan")
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
        loss = float(np.asarray(metrics["loss"].addressable_data(0)))
        if not math.isfinite(loss):
            raise FloatingPointError(f"Training diverged: loss is {loss} at step {step}; not checkpointing it. "
                                     "The last checkpoint in the workdir is the last good state.")

    def eval_done(self, step: int, eval_metrics: dict) -> None:
        self._writer.write_scalars(step, eval_metrics)
        self._history.write({"step": step, **eval_metrics})
        if self._live:
            sys.stderr.write("\n")
        logger.info("eval at step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in eval_metrics.items()))

    def close(self) -> None:
        if self._live:
            sys.stderr.write("\n")
        self._writer.flush()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
