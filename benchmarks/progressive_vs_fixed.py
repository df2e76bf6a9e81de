"""Wall time of progressive learning vs training at the final image size, same steps, same config otherwise.

    python benchmarks/progressive_vs_fixed.py [--config configs/digits.py] [--stages 4] [--override ...]

Runs the trainer twice in subprocesses, each with a fresh compilation cache: the config as is (M progressive
stages) and with `progressive.num_stages=1` (every step at the last stage's size). Prints train seconds
(excluding compilation), compile seconds, wall seconds and eval top-1 of both, and the speed-up. The paper's
claim: smaller images early make progressive training faster at equal or better accuracy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(config: str, overrides: list[str], workdir: Path) -> dict:
    cmd = [sys.executable, "-m", "efficientnetv2_jax.main", f"--config={config}", f"--workdir={workdir}",
           f"--config.compilation_cache_dir={workdir / 'cache'}", *overrides]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = json.loads((workdir / "summary.json").read_text())
    return {
        "train_s": sum(s["train_seconds"] for s in summary["stages"]),
        "compile_s": sum(s["compile_seconds"] for s in summary["stages"]),
        "wall_s": summary["wall_time_s"],
        "top1": summary["eval_top1"],
        "sizes": [s["image_size"] for s in summary["stages"]],
        "steps": summary["steps"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.py")
    parser.add_argument("--override", action="append", default=[], help="Extra --config.* flags for both runs.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        progressive = run(args.config, args.override, Path(tmp) / "progressive")
        fixed = run(args.config, [*args.override, "--config.progressive.num_stages=1"], Path(tmp) / "fixed")
    print(f"{'run':<12} {'sizes':<22} {'steps':>6} {'train s':>8} {'compile s':>10} {'wall s':>8} {'top-1':>7}")
    for name, r in (("progressive", progressive), ("fixed", fixed)):
        print(f"{name:<12} {str(r['sizes']):<22} {r['steps']:>6} {r['train_s']:>8.1f} {r['compile_s']:>10.1f} "
              f"{r['wall_s']:>8.1f} {r['top1']:>7.4f}")
    print(f"progressive/fixed train time: {progressive['train_s'] / fixed['train_s']:.2f}  "
          f"wall time: {progressive['wall_s'] / fixed['wall_s']:.2f}")


if __name__ == "__main__":
    main()
