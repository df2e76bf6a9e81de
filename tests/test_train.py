"""The trainer end to end on CPU: digits with a tiny variant, bad input. Preemption, resume and multi-host
equivalence run with every augmentation on in tests/test_resume.py."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from efficientnetv2_jax.checkpoint import save_variables
from processes import cpu_env, run_one

pytestmark = pytest.mark.timeout(900)  # Whole trainings in subprocesses; each wait is bounded at 600 s.
ROOT = Path(__file__).resolve().parents[1]
# A tiny, short, 2-stage run (16 -> 24 px) of the quickstart config.
TINY_RUN = [
    "--config.model.width=0.25", "--config.model.depth=0.25", "--config.batch_size=32", "--config.eval_batch_size=64",
    "--config.total_steps=24", "--config.progressive.num_stages=2", "--config.progressive.base_image_size=8",
    "--config.progressive.train_image_size=24", "--config.eval_image_size=24", "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=8", "--config.lr.warmup_epochs=0.1",
]


def run_main(workdir, *overrides, cache_dir=None):
    """Runs `python -m efficientnetv2_jax.main` on the digits config in a subprocess: (exit code, output)."""
    env = cpu_env(8)
    cmd = [sys.executable, "-m", "efficientnetv2_jax.main", "--config=configs/digits.py", f"--workdir={workdir}",
           *TINY_RUN, *overrides]
    if cache_dir:
        cmd.append(f"--config.compilation_cache_dir={cache_dir}")
    return run_one(cmd, timeout=600, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, compilation_cache_dir):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    code, out = run_main(workdir, cache_dir=compilation_cache_dir)
    assert code == 0, out[-3000:]
    return workdir


def test_digits_trains_evaluates_and_writes_summary(uninterrupted):
    summary = json.loads((uninterrupted / "summary.json").read_text())
    for key in ("eval_top1", "eval_top5", "steps", "wall_time_s", "images_per_sec", "stages"):
        assert key in summary
    assert summary["steps"] == 24 and 0.0 <= summary["eval_top1"] <= 1.0
    assert summary["allocator"] == "mimalloc"  # The CLI re-executed itself under mimalloc (CPU backend).
    assert summary["eval_top5"] >= summary["eval_top1"]
    assert [s["image_size"] for s in summary["stages"]] == [16, 24]
    assert [(s["start_step"], s["end_step"]) for s in summary["stages"]] == [(0, 12), (12, 24)]
    for stage in summary["stages"]:
        assert {"randaug_magnitude", "mixup_alpha", "dropout_rate", "train_seconds", "compile_seconds"} <= set(stage)
        assert stage["train_seconds"] > 0 and stage["compile_seconds"] > 0
    rows = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 24 and np.mean(losses[-4:]) < np.mean(losses[:4])  # The loss falls.
    assert (uninterrupted / "training_curves.png").stat().st_size > 10_000
    assert list(uninterrupted.glob("events.out.tfevents.*"))  # TensorBoard events.


def _assert_one_line_error(code, out, pattern):
    assert code != 0
    lines = [line for line in out.strip().splitlines() if pattern in line]
    assert lines, out[-2000:]
    assert "Traceback" not in out, out[-2000:]


def test_bad_inputs_fail_early_with_one_clear_line(tmp_path, compilation_cache_dir):
    code, out = run_main(tmp_path / "a", "--config.batch_sise=64")
    _assert_one_line_error(code, out, "batch_sise")
    code, out = run_main(tmp_path / "b", "--config.batch_size=60")
    _assert_one_line_error(code, out, "not divisible by the 8 devices")
    code, out = run_main(tmp_path / "c", "--config.model.name=efficientnetv2-q")
    _assert_one_line_error(code, out, "Unknown model 'efficientnetv2-q'")
    other = tmp_path / "other_model"
    save_variables(str(other), {"params": {"w": np.zeros(2)}, "batch_stats": {}}, model_name="efficientnetv2-s",
                   num_classes=10)
    code, out = run_main(tmp_path / "d", f"--config.init_from={other}", cache_dir=compilation_cache_dir)
    _assert_one_line_error(code, out, "efficientnetv2-s")
