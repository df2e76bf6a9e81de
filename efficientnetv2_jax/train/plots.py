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


def training_figure(rows: list[dict], stages: list[dict], eval_image_size: int):
    """Loss, learning rate and top-1 against steps, stage boundaries and sizes marked; the top-1 panel says that
    eval runs at one fixed size while training top-1 is measured at each stage's own (smaller) size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    panels = [
        (axes[0], "train loss", [("loss", "train loss", {})]),
        (axes[1], "learning rate", [("lr", "learning rate", {})]),
        (axes[2], "top-1", [("train_top1", "train top-1 (at the stage's size, augmented)", {"alpha": 0.6}),
                            ("eval_top1", f"eval top-1 at {eval_image_size} px", {"marker": "o", "markersize": 4})]),
    ]
    for ax, ylabel, series in panels:
        for key, label, style in series:
            points = sorted((r["step"], r[key]) for r in rows if key in r)
            if points:
                ax.plot(*zip(*points), label=label, **style)
        if len(series) > 1:
            ax.legend(loc="lower right", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        for stage in stages:
            ax.axvline(stage["start_step"], color="gray", linestyle="--", linewidth=0.8)
    for stage in stages:
        axes[0].annotate(f"stage {stage['index'] + 1}: {stage['image_size']}px", xy=(stage["start_step"], 1.0),
                         xycoords=("data", "axes fraction"), xytext=(3, -12), textcoords="offset points", fontsize=8)
    axes[-1].set_xlabel("step")
    fig.suptitle(f"EfficientNetV2 progressive training (eval at {eval_image_size} px)")
    fig.tight_layout()
    return fig


def plot_training_curves(workdir: str, stages: list[dict], eval_image_size: int) -> str:
    """Writes <workdir>/training_curves.png from metrics.jsonl (see `training_figure`); returns its path."""
    import matplotlib.pyplot as plt

    fig = training_figure(read_history(workdir), stages, eval_image_size)
    out = epath.Path(workdir) / CURVES_FILE
    with out.open("wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return str(out)
