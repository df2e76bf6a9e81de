"""Eval top-1 of the digits quickstart model at several image sizes, with and without EMA, early and at the end.

    python benchmarks/eval_size.py [--workdir DIR] [--steps 200 1347] [--sizes 20 24 32 48]

Trains configs/digits.py once (keeping every 200-step checkpoint; skipped when DIR already holds a finished run),
then evaluates each kept step with the EMA and with the raw weights at each size, through the evaluate CLI's
own code path. A third column re-estimates the BN statistics at the eval size (100 train batches in train mode,
raw weights, no parameter update) before evaluating: when that column recovers what the stored statistics lose,
the drop at a new size comes from BN statistics measured at the training size, not from the weights or the EMA.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from efficientnetv2_jax import data as data_lib  # noqa: E402
from efficientnetv2_jax import inference  # noqa: E402
from efficientnetv2_jax.evaluate import evaluate_checkpoint  # noqa: E402
from efficientnetv2_jax.models import normalize_images  # noqa: E402
from efficientnetv2_jax.train import train  # noqa: E402

RECALIBRATION_BATCHES = 100


def train_digits(workdir: Path) -> None:
    """The quickstart run, keeping every checkpoint, with eval every 200 steps at 32 px (as issue 17 saw it)."""
    if (workdir / "summary.json").exists():
        return
    cmd = [sys.executable, "-m", "efficientnetv2_jax.main", "--config=configs/digits.py", f"--workdir={workdir}",
           "--config.keep_checkpoints=100", "--config.eval_every_steps=200"]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def recalibrated(loaded: inference.LoadedModel, image_size: int) -> inference.LoadedModel:
    """The same weights with BN running statistics re-estimated on train images at `image_size`."""
    config = loaded.config
    mesh = train.make_mesh(config.batch_size)
    model = loaded.model.clone(drop_connect_rate=0.0, dropout_rate=0.0)
    iterator = data_lib.make_train_iterator(
        dataset=config.dataset.name, split=config.dataset.train_split, image_size=image_size, randaug_magnitude=0,
        mixup_alpha=0, cutmix_alpha=0, global_batch_size=config.batch_size, seed=1, start_step=0, mesh=mesh,
        augment=config.dataset.augment, area_range=tuple(config.dataset.crop_area_range), random_flip=False)

    @jax.jit
    def update(variables, images):
        _, new = model.apply(variables, normalize_images(images, model.model_name, model.dtype), train=True,
                             mutable=["batch_stats"])
        return {"params": variables["params"], "batch_stats": new["batch_stats"]}

    variables = loaded.variables
    try:
        for _ in range(RECALIBRATION_BATCHES):  # Momentum 0.9: the stored statistics keep 0.9^100 of their weight.
            variables = update(variables, next(iterator)["image"])
    finally:
        iterator.close()
    return inference.LoadedModel(model=loaded.model, variables=jax.device_get(variables),
                                 model_name=loaded.model_name, num_classes=loaded.num_classes,
                                 preprocessing=loaded.preprocessing, config=loaded.config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="digits run to (re)use (default: a fresh temporary folder)")
    parser.add_argument("--steps", type=int, nargs="+", default=[200, 1347])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 24, 32, 48])
    args = parser.parse_args()
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="eval_size_"))).resolve()
    train_digits(workdir)
    in_training = [r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
                   if "eval_top1" in r]
    print("eval during training (EMA, 32 px):", ", ".join(f"step {r['step']} {r['eval_top1']:.3f}"
                                                          for r in in_training))
    print(f"{'step':>5} {'size':>4} {'EMA':>6} {'raw':>6} {'raw, BN re-estimated':>21}")
    results = []
    for step in args.steps:
        ema = evaluate_checkpoint(inference.load_checkpoint(str(workdir), step=step, ema=True), args.sizes)
        raw_loaded = inference.load_checkpoint(str(workdir), step=step, ema=False)
        raw = evaluate_checkpoint(raw_loaded, args.sizes)
        for size in args.sizes:
            fixed = evaluate_checkpoint(recalibrated(raw_loaded, size), [size])[size]
            row = {"step": step, "size": size, "ema": ema[size]["eval_top1"], "raw": raw[size]["eval_top1"],
                   "raw_bn_reestimated": fixed["eval_top1"]}
            results.append(row)
            print(f"{step:>5} {size:>4} {row['ema']:>6.3f} {row['raw']:>6.3f} {row['raw_bn_reestimated']:>21.3f}",
                  flush=True)
    (workdir / "eval_size.json").write_text(json.dumps(results, indent=2))
    print(f"(trained at 20/24/28/32 px in 4 stages of 336-337 steps; run in {workdir})")


if __name__ == "__main__":
    main()
