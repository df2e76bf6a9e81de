"""The progress reporter: log metrics fetched in one transfer one step late, NaN stops, and an ETA that counts the
later stages at their image size and the compilations still to come, with a smoothed step time."""

import json
import math

import jax.numpy as jnp
import pytest

from efficientnetv2_jax.train import progress
from efficientnetv2_jax.train.progressive import Stage

STAGES = [Stage(0, 10, 0, 0, 0, 0, 0, 10), Stage(1, 20, 0, 0, 0, 0, 10, 20)]


class Rows:
    """Stands in for both the clu writer and metrics.jsonl."""

    def __init__(self):
        self.rows = []

    def write_scalars(self, step, scalars):
        self.rows.append({"step": step, **scalars})

    def write(self, row):  # MetricHistory: the same rows again; keep the writer's only.
        pass

    def flush(self):
        pass


@pytest.fixture
def clock(monkeypatch):
    """progress.py's perf_counter, set by the test."""
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    return now


@pytest.fixture
def fetches(monkeypatch):
    """Records the number of metric dicts in every host transfer the reporter makes."""
    calls = []
    real = progress.fetch

    def counting(tree):
        calls.append(len(tree) if isinstance(tree, list) else 1)
        return real(tree)

    monkeypatch.setattr(progress, "fetch", counting)
    return calls


def reporter(rows, stage=STAGES[0], start_step=0, compile_seconds=(8.0,), previous=None):
    return progress.ProgressReporter(total_steps=20, start_step=start_step, batch_size=4, stage=stage, stages=STAGES,
                                     compile_seconds=list(compile_seconds), writer=rows, history=rows,
                                     log_every_steps=5, previous=previous)


def metrics(loss):
    return {"loss": jnp.float32(loss), "lr": jnp.float32(0.1), "train_top1": jnp.float32(0.5)}


def test_log_window_is_fetched_in_one_transfer_at_the_next_step(clock, fetches):
    rows = Rows()
    r = reporter(rows)
    for step in range(1, 6):
        r.step_done(step, metrics(step))
    assert fetches == [] and rows.rows == []  # The log step itself queues the copies and returns.
    r.step_done(6, metrics(6))
    assert fetches == [5]  # Steps 1-5 in one transfer, at step 6.
    assert rows.rows[0]["step"] == 5 and rows.rows[0]["loss"] == pytest.approx(3.0)
    for step in range(7, 11):
        r.step_done(step, metrics(step))
    r.close()  # The stage's last window (6-10) is reported at close.
    assert fetches == [5, 5]
    assert [row["step"] for row in rows.rows] == [5, 10] and rows.rows[1]["loss"] == pytest.approx(8.0)


def test_nan_stops_one_step_after_the_log_step_and_before_checkpoints(clock):
    r = reporter(Rows())
    r.step_done(1, metrics(float("nan")))
    for step in range(2, 6):
        r.step_done(step, metrics(1.0))
    with pytest.raises(FloatingPointError, match="loss is nan at step 5"):
        r.step_done(6, metrics(1.0))
    with pytest.raises(FloatingPointError, match="at step 7; not checkpointing it"):
        r.check_finite(metrics(float("inf")), 7)
    r.check_finite(metrics(1.0), 8)


def test_eta_counts_later_stages_by_pixels_and_their_compilation(clock):
    rows = Rows()
    r = reporter(rows)
    assert math.isnan(r.eta_seconds(0))  # Nothing measured yet: "?".
    for step in range(1, 6):
        r.step_done(step, metrics(1.0))
    clock[0] = 5.0  # 5 steps at 10 px in 5 s: 0.01 s per pixel-step.
    r.step_done(6, metrics(1.0))
    # Left after step 5: 5 steps x 100 px + 10 steps x 400 px at 0.01 s, plus stage 2's compile (8 s).
    assert rows.rows[0]["eta_seconds"] == pytest.approx(5 * 1 + 10 * 4 + 8)
    assert rows.rows[0]["images_per_sec"] == pytest.approx(4.0)
    for step in range(7, 11):
        r.step_done(step, metrics(1.0))
    clock[0] = 20.0  # A 15 s window (a stall): the smoothed step time moves 30% of the way.
    r.close()
    smoothed = 0.3 * 0.03 + 0.7 * 0.01
    assert rows.rows[1]["eta_seconds"] == pytest.approx(10 * 400 * smoothed + 8)

    nxt = reporter(rows, stage=STAGES[1], start_step=10, compile_seconds=(8.0, 6.0), previous=r)
    assert nxt.eta_seconds(10) == pytest.approx(10 * 400 * smoothed)  # No compile left; the rate carries over.
    assert nxt.images_per_sec() == pytest.approx(4 / (smoothed * 400))


@pytest.mark.parametrize("compile_seconds, ahead", [((), 0.0), ((0.0,), 0.0), ((0.4,), 0.4)])
def test_compilations_from_the_cache_add_what_they_took(clock, compile_seconds, ahead):
    """A resumed run compiles nothing before the reporter (0 s); a cache hit takes well under a second."""
    rows = Rows()
    r = reporter(rows, compile_seconds=compile_seconds)
    for step in range(1, 6):
        r.step_done(step, metrics(1.0))
    clock[0] = 5.0
    r.step_done(6, metrics(1.0))
    assert rows.rows[0]["eta_seconds"] == pytest.approx(5 * 1 + 10 * 4 + ahead)


def test_training_curves_say_at_which_size_eval_ran(tmp_path):
    from efficientnetv2_jax.train import plots

    stages = [{"index": 0, "image_size": 20, "start_step": 0}, {"index": 1, "image_size": 32, "start_step": 10}]
    rows = [{"step": s, "loss": 2.0 / s, "lr": 0.1, "train_top1": 0.9} for s in (5, 10, 15, 20)]
    rows += [{"step": 10, "eval_top1": 0.16}, {"step": 20, "eval_top1": 0.98}]
    fig = plots.training_figure(rows, stages, eval_image_size=32)
    top1 = fig.axes[2]
    labels = [text.get_text() for text in top1.get_legend().get_texts()]
    assert labels == ["train top-1 (at the stage's size, augmented)", "eval top-1 at 32 px"]
    assert [list(line.get_xdata()) for line in top1.get_lines()[:2]] == [[5, 10, 15, 20], [10, 20]]
    assert fig._suptitle.get_text().endswith("(eval at 32 px)")
    with (tmp_path / "metrics.jsonl").open("w") as f:
        f.write("\n".join(json.dumps(r) for r in rows))
    assert (tmp_path / "training_curves.png").as_posix() == plots.plot_training_curves(str(tmp_path), stages, 32)
    assert (tmp_path / "training_curves.png").stat().st_size > 10_000
