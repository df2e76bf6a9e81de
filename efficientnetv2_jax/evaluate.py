"""Evaluate a checkpoint over a whole split, exactly (padding masked out), at one or several image sizes.

    python -m efficientnetv2_jax.evaluate --checkpoint DIR [--step N] [--dataset NAME] [--split eval] \
        [--image-size N ...]
    python -m efficientnetv2_jax.evaluate --pretrained efficientnetv2-s-21k-ft1k --dataset imagenet2012

Uses the trainer's own eval (`train.evaluate` with `steps.make_eval_step`), so the numbers equal the ones the
training run reports for the same weights and size. EfficientNetV2 trains smaller than it evaluates: pass
several sizes to see the accuracy/size curve in one call. Works on any device count (batch padded to fit).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from efficientnetv2_jax import cli

cli.import_quietly("tensorflow")  # Before the data modules import it: its start-up lines, unless --verbose.

import jax  # noqa: E402  (after the quiet TensorFlow import)
import ml_collections
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from efficientnetv2_jax import data as data_lib  # noqa: E402
from efficientnetv2_jax import inference  # noqa: E402
from efficientnetv2_jax.models.normalization import config_normalization
from efficientnetv2_jax.train import program, steps, train
from efficientnetv2_jax.train.state import TrainState

DEFAULT_EVAL_BATCH = 256


def eval_config(loaded: inference.LoadedModel, *, dataset: str | None, split: str | None, batch_size: int | None,
                data_dir: str | None) -> ml_collections.ConfigDict:
    """The fields train.evaluate reads: the checkpoint's config with the command's choices applied."""
    prep = loaded.preprocessing
    base = loaded.config
    dataset = dataset or loaded.dataset
    same_dataset = base is not None and dataset == base.dataset.name
    split = split or (base.dataset.eval_split if same_dataset else "eval")
    if not dataset:
        raise cli.UsageError("The checkpoint records no dataset; pass --dataset.")
    batch = batch_size or (base.eval_batch_size if base is not None else DEFAULT_EVAL_BATCH)
    if batch < 1:
        raise cli.UsageError(f"--batch-size must be >= 1, got {batch}.")
    devices = jax.device_count()
    if batch_size and batch_size % devices:
        raise cli.UsageError(f"--batch-size {batch_size} is not divisible by the {devices} devices.")
    return ml_collections.ConfigDict({
        "dataset": {"name": dataset, "eval_split": split,
                    "data_dir": data_dir if data_dir is not None else (base.dataset.data_dir if base else ""),
                    "augment": "autoaug" if prep.resize_method == "bicubic" else "randaug",  # Picks the resize.
                    "eval_crop_rule": prep.crop_rule, "jpeg_downscale": prep.jpeg_downscale,
                    "normalization": config_normalization(loaded.model_name, base)},  # The training recipe's.
        "eval_batch_size": math.ceil(batch / devices) * devices,
        "eval_with_ema": False,  # The loaded variables already are the EMA ones when the checkpoint has them.
        "loss": base.loss if base is not None else ("sigmoid" if loaded.multi_label else "softmax"),
    })


def evaluate_checkpoint(loaded: inference.LoadedModel, image_sizes: list[int] | None = None, *,
                        dataset: str | None = None, split: str | None = None, batch_size: int | None = None,
                        data_dir: str | None = None) -> dict[int, dict]:
    """{image size: eval_top1, eval_top5, eval_loss, eval_examples} over the whole split, for each size."""
    config = eval_config(loaded, dataset=dataset, split=split, batch_size=batch_size, data_dir=data_dir)
    try:
        info = data_lib.get_dataset_info(config.dataset.name, config.dataset.data_dir or None)
    except (ValueError, FileNotFoundError) as error:
        raise cli.UsageError(str(error)) from error
    if info.num_classes != loaded.num_classes:
        raise cli.UsageError(f"{config.dataset.name} has {info.num_classes} classes but the checkpoint's "
                                 f"classifier has {loaded.num_classes}.")
    sizes = image_sizes or [loaded.preprocessing.image_size]
    if any(size < 8 for size in sizes):
        raise cli.UsageError(f"Image sizes must be at least 8 pixels, got {sizes}.")
    mesh = program.make_mesh(config.eval_batch_size)
    replicated = NamedSharding(mesh, P())
    variables = inference.replicated_variables(loaded.variables, mesh)
    state = TrainState(step=0, params=variables["params"], batch_stats=variables["batch_stats"], opt_state=None,
                       ema_params=None, ema_batch_stats=None)
    eval_fn = jax.jit(steps.make_eval_step(loaded.model, config, info.multi_label), out_shardings=replicated)
    try:
        return {size: train.evaluate(eval_fn, state, config, mesh, size) for size in sizes}
    except (ValueError, FileNotFoundError) as error:
        raise cli.UsageError(str(error)) from error


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of the evaluate command."""
    parser = argparse.ArgumentParser(prog="python -m efficientnetv2_jax.evaluate", description=__doc__.split("\n")[0])
    inference.add_source_flags(parser, weights=False)
    parser.add_argument("--dataset", help="dataset name; default the one the checkpoint was trained on")
    parser.add_argument("--split", help="split alias or TFDS split string (default the config's eval split, 'eval')")
    parser.add_argument("--image-size", type=int, nargs="+", dest="image_sizes",
                        help="one or more eval sizes; default the checkpoint's (or variant's) eval size")
    parser.add_argument("--batch-size", type=int, help="global eval batch (default the config's, rounded to fit)")
    parser.add_argument("--data-dir", help="TFDS data dir (default the checkpoint config's)")
    parser.add_argument("--no-ema", action="store_true", help="evaluate the raw weights instead of the EMA")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    cli.add_verbose_flag(parser)
    return parser


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    loaded = inference.load_from_flags(args)
    results = evaluate_checkpoint(loaded, args.image_sizes, dataset=args.dataset, split=args.split,
                                  batch_size=args.batch_size, data_dir=args.data_dir)
    if args.json:
        print(json.dumps({str(size): metrics for size, metrics in results.items()}))
        return 0
    for size, metrics in results.items():
        print(f"{loaded.model_name} {size}px: top-1 {metrics['eval_top1']:.4f}  "
              f"top-5 {metrics['eval_top5']:.4f}  loss {metrics['eval_loss']:.4f}  "
              f"({metrics['eval_examples']} images)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the command under the CLI convention (`efficientnetv2_jax.cli`); returns the exit code."""
    return cli.run(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
