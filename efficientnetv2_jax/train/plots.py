"""metrics.jsonl (one JSON object per log/eval step, kept across restarts) and the training-curves PNG."""

from __future__ import annotations

import json

import jax
from etils import epath

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "training_curves.png"


class MetricHistory:
    """Appends metric rows to <workdir>/metrics.jsonl from process 0."""

    def __init__(self, workdir: str):
        self._path = epath.Path(workdir) / METRICS_FILE

    def write(self, row: dict) -> None:
        if jax.process_index() != 0:
            return
        with self._path.open("a") as f:
            f.write(json.dumps({k: float(v) if k != "step" else int(v) for k, v in row.items()}) + "\n")


def read_history(workdir: str) -> list[dict]:
    path = epath.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training_curves(workdir: str, stages: list[dict]) -> str:
    """Loss, learning rate and eval accuracy against steps, with stage boundaries and image sizes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_history(workdir)
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    panels = [("loss", "train loss"), ("lr", "learning rate"), ("eval_top1", "eval top-1")]
    for ax, (key, title) in zip(axes, panels):
        points = sorted((r["step"], r[key]) for r in rows if key in r)
        if points:
            ax.plot(*zip(*points), marker="o" if key == "eval_top1" else None, markersize=4)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        for stage in stages:
            ax.axvline(stage["start_step"], color="gray", linestyle="--", linewidth=0.8)
    top = axes[0]
    for stage in stages:
        top.annotate(f"stage {stage['index'] + 1}: {stage['image_size']}px", xy=(stage["start_step"], 1.0),
                     xycoords=("data", "axes fraction"), xytext=(3, -12), textcoords="offset points", fontsize=8)
    axes[-1].set_xlabel("step")
    fig.suptitle("EfficientNetV2 progressive training")
    fig.tight_layout()
    out = epath.Path(workdir) / CURVES_FILE
    with out.open("wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return str(out)
