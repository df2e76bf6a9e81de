"""Where the quickstart's slow steps come from: every step's host time, split into waiting for the input batch,
checkpoint saves, garbage collection and the rest (dispatch, and the device when the host waits for it).

    python benchmarks/step_stalls.py [--config configs/digits.py] [--threshold 1.0] [--override ...]

Runs the trainer in this process (under mimalloc on CPU, like the CLI) with a fresh compilation cache, timing
each step from one `ProgressReporter.step_done` to the next (so a checkpoint saved after step k counts in step
k+1), and prints every step slower than --threshold seconds with what it contained, every garbage collection
slower than that (generation, objects collected), then the totals per cause and the median step. With
--dump-gc-over S, a collection still running after S seconds dumps every thread's stack to stderr (faulthandler):
that names the finalizer a slow collection waits in.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from efficientnetv2_jax import allocator  # noqa: E402


class Timeline:
    """Seconds spent per cause since the last step, reset at each step."""

    def __init__(self, slow_gc_s: float, dump_gc_over_s: float):
        self.causes = {"input": 0.0, "checkpoint": 0.0, "gc": 0.0}
        self.steps: list[tuple[int, float, dict]] = []
        self.slow_gcs: list[tuple[int, float, dict]] = []
        self._last = time.perf_counter()
        self._gc_started = 0.0
        self._slow_gc_s = slow_gc_s
        self._dump_gc_over_s = dump_gc_over_s

    def add(self, cause: str, seconds: float) -> None:
        self.causes[cause] += seconds

    def step(self, step: int) -> None:
        now = time.perf_counter()
        self.steps.append((step, now - self._last, dict(self.causes)))
        self._last = now
        self.causes = dict.fromkeys(self.causes, 0.0)

    def on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            if self._dump_gc_over_s:
                faulthandler.dump_traceback_later(self._dump_gc_over_s)
            return
        if self._dump_gc_over_s:
            faulthandler.cancel_dump_traceback_later()
        seconds = time.perf_counter() - self._gc_started
        self.add("gc", seconds)
        if seconds > self._slow_gc_s:
            self.slow_gcs.append((len(self.steps) + 1, seconds, info))


def instrument(timeline: Timeline) -> None:
    """Wraps the trainer's input iterator, checkpoint saves and progress reports with timers."""
    from efficientnetv2_jax import checkpoint, data
    from efficientnetv2_jax.train import progress

    make_iterator = data.make_train_iterator

    class TimedIterator:
        def __init__(self, inner):
            self._inner = inner

        def __next__(self):
            started = time.perf_counter()
            try:
                return next(self._inner)
            finally:
                timeline.add("input", time.perf_counter() - started)

        def close(self):
            self._inner.close()

    data.make_train_iterator = lambda **kwargs: TimedIterator(make_iterator(**kwargs))
    save = checkpoint.Checkpointer.save

    def timed_save(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return save(self, *args, **kwargs)
        finally:
            timeline.add("checkpoint", time.perf_counter() - started)

    checkpoint.Checkpointer.save = timed_save
    step_done = progress.ProgressReporter.step_done

    def timed_step_done(self, step, metrics):
        step_done(self, step, metrics)
        timeline.step(step)

    progress.ProgressReporter.step_done = timed_step_done
    gc.callbacks.append(timeline.on_gc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.py")
    parser.add_argument("--threshold", type=float, default=1.0, help="report steps slower than this (seconds)")
    parser.add_argument("--override", action="append", default=[], help="--config.FIELD=VALUE (repeatable)")
    parser.add_argument("--dump-gc-over", type=float, default=0.0,
                        help="dump all thread stacks when a collection runs longer than this (seconds; 0: never)")
    args = parser.parse_args()
    from efficientnetv2_jax.main import load_config
    from efficientnetv2_jax.train import train

    config = load_config(str(ROOT / args.config) if not Path(args.config).is_absolute() else args.config,
                         args.override)
    timeline = Timeline(args.threshold, args.dump_gc_over)
    instrument(timeline)
    with tempfile.TemporaryDirectory() as workdir:
        config.unlock()
        config.compilation_cache_dir = str(Path(workdir) / "cache")
        summary = train.train_and_evaluate(config, str(Path(workdir) / "run"))
    stage_starts = {s["start_step"] + 1: s["compile_seconds"] for s in summary["stages"]}
    print(f"allocator {allocator.active_allocator()}; {len(timeline.steps)} steps; median step "
          f"{statistics.median(t for _, t, _ in timeline.steps) * 1000:.0f} ms; steps slower than {args.threshold} s:")
    for step, seconds, causes in timeline.steps:
        if seconds > args.threshold:
            after = step - 1  # what the loop did after the previous step_done counts in this step
            marks = [m for m, on in ((f"stage start, compiled {stage_starts.get(step, 0):.1f} s", step in stage_starts),
                                     (f"checkpoint after step {after}", after % config.checkpoint_every_steps == 0),
                                     (f"log of step {after} fetched", after % config.log_every_steps == 0)) if on]
            split = ", ".join(f"{k} {v:.2f} s" for k, v in causes.items() if v >= 0.01)
            print(f"  step {step}: {seconds:.2f} s ({split or 'no input/checkpoint/gc wait'}) "
                  f"[{', '.join(marks) or 'plain step'}]")
    for step, seconds, info in timeline.slow_gcs:
        print(f"  garbage collection in step {step}: {seconds:.2f} s, generation {info['generation']}, "
              f"{info['collected']} objects collected, {info['uncollectable']} uncollectable")
    totals = {k: sum(c[k] for _, _, c in timeline.steps) for k in timeline.causes}
    print("totals: " + ", ".join(f"{k} {v:.1f} s" for k, v in totals.items())
          + f", all steps {sum(t for _, t, _ in timeline.steps):.1f} s")


if __name__ == "__main__":
    allocator.pin_cpu_backend_without_accelerator()
    allocator.reexec_with_fast_allocator()
    main()
