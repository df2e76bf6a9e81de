"""Prints parameters, BN statistics, GMACs and default sizes of each variant.

    python -m efficientnetv2_jax.models.summary [--model NAME] [--image-size N] [--num-classes K] [--markdown]

Shapes come from `jax.eval_shape`, so nothing is compiled and even XL takes about a second.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from efficientnetv2_jax.models import create_model, get_variant, list_models
from efficientnetv2_jax.models.complexity import count_macs


def variable_counts(model_name: str, num_classes: int = 1000) -> tuple[int, int]:
    """(trainable parameters, BN statistics) of a variant, from abstract shapes only."""
    model = create_model(model_name, num_classes=num_classes)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))
    count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))  # noqa: E731
    return count(shapes["params"]), count(shapes["batch_stats"])


def summary_rows(models: list[str], image_size: int | None, num_classes: int) -> list[dict]:
    rows = []
    for name in models:
        v = get_variant(name)
        params, stats = variable_counts(name, num_classes)
        train, evals = (image_size, image_size) if image_size else (v.train_size, v.eval_size)
        rows.append({
            "model": v.name, "params": params, "bn_stats": stats,
            "train_size": train, "eval_size": evals,
            "gmacs_train": count_macs(name, train, num_classes) / 1e9,
            "gmacs_eval": count_macs(name, evals, num_classes) / 1e9,
            "dropout": v.dropout_rate,
        })
    return rows


def format_table(rows: list[dict], markdown: bool = False) -> str:
    header = ["model", "params", "BN stats", "train px", "eval px", "GMACs@train", "GMACs@eval", "dropout"]
    lines = [[r["model"], f"{r['params']:,}", f"{r['bn_stats']:,}", str(r["train_size"]), str(r["eval_size"]),
              f"{r['gmacs_train']:.2f}", f"{r['gmacs_eval']:.2f}", f"{r['dropout']:.1f}"] for r in rows]
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max(len(x) for x in col) for col in zip(header, *lines)]
    fmt = lambda cols: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))  # noqa: E731
    return "\n".join([fmt(header)] + [fmt(line) for line in lines])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list_models() + [m.split("-")[1] for m in list_models()])
    parser.add_argument("--image-size", type=int, help="Use this size for both columns instead of the defaults.")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--markdown", action="store_true", help="Print a Markdown table (used in README).")
    args = parser.parse_args(argv)
    models = [args.model] if args.model else list_models()
    print(format_table(summary_rows(models, args.image_size, args.num_classes), args.markdown))


if __name__ == "__main__":
    main()
