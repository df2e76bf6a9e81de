"""CLI: `python -m efficientnetv2_jax.convert {keras,tf,timm} ... --output DIR`.

Writes an Orbax variables checkpoint (`efficientnetv2_jax.checkpoint.save_variables`) that the trainer reads
with `--config.init_from=DIR` and predict/evaluate/export read with `--checkpoint DIR`. One subcommand per
weight source:
    python -m efficientnetv2_jax.convert keras --model s --weights efficientnetv2-s.h5 --output DIR
    python -m efficientnetv2_jax.convert tf --checkpoint efficientnetv2-s-21k-ft1k/ --output DIR [--no-ema]
    python -m efficientnetv2_jax.convert timm --weights model.safetensors --output DIR [--model s]
Errors follow `efficientnetv2_jax.cli`: a file that is missing or not the weights it should be is one line and
exit code 2 (`--verbose` adds the traceback and the libraries' logs).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from etils import epath

from efficientnetv2_jax import cli
from efficientnetv2_jax.convert.keras_weights import KERAS_CONSTRUCTORS, from_keras
from efficientnetv2_jax.convert.tf_checkpoint import read_tf_checkpoint
from efficientnetv2_jax.convert.timm_weights import read_timm


def _num_classes(variables: dict) -> int:
    """Classifier width of converted variables; 0 for a headless backbone."""
    classifier = variables["params"].get("classifier")
    return 0 if classifier is None else int(classifier["bias"].shape[0])


def _convert_and_save(convert: Callable[[], tuple[str, dict]], source: str, args: argparse.Namespace) -> int:
    """Runs `convert` () -> (model name, variables) and writes the result; a file that does not convert (ValueError)
    is bad input."""
    from efficientnetv2_jax import checkpoint  # pylint: disable=import-outside-toplevel  # Orbax only when used.

    if epath.Path(args.output).exists() and not args.overwrite:  # Before the conversion, not after it.
        raise cli.UsageError(f"{args.output} already exists; choose a new --output or pass --overwrite.")
    cli.import_quietly("tensorflow")
    try:
        model_name, variables = convert()
    except ValueError as error:
        raise cli.UsageError(str(error)) from error
    num_classes = _num_classes(variables)
    checkpoint.save_variables(args.output, variables, model_name=model_name, num_classes=num_classes,
                              overwrite=args.overwrite)
    print(f"Wrote {model_name} ({num_classes} classes) from {source} to {args.output}.")
    return 0


def _model_name(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str | None:
    """The canonical variant name of --model (None when not given); an unknown name is a usage error."""
    from efficientnetv2_jax.models import get_variant  # pylint: disable=import-outside-toplevel

    if args.model is None:
        return None
    try:
        return get_variant(args.model).name
    except ValueError as error:
        parser.error(str(error))


def _keras(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Converts a Keras weights file."""
    model_name = _model_name(args, parser)
    if model_name not in KERAS_CONSTRUCTORS:
        parser.error(f"{model_name} has no Keras port; Keras variants: {', '.join(KERAS_CONSTRUCTORS)} "
                     "(XL: use the `tf` subcommand on the official checkpoint).")
    return _convert_and_save(lambda: (model_name, from_keras(args.weights, name=model_name)), args.weights, args)


def _tf(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Converts an official TF checkpoint; the variant is read from its variable names."""
    model_name = _model_name(args, parser)
    return _convert_and_save(lambda: read_tf_checkpoint(args.checkpoint, name=model_name, ema=not args.no_ema),
                             args.checkpoint, args)


def _timm(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Converts a timm tf_efficientnetv2 state dict; the variant is inferred from its layout when not given."""
    model_name = _model_name(args, parser)
    return _convert_and_save(lambda: read_timm(args.weights, name=model_name), args.weights, args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per weight source."""
    parser = argparse.ArgumentParser(prog="python -m efficientnetv2_jax.convert", description=__doc__.split("\n")[0])
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    keras = sources.add_parser("keras", help="keras.applications EfficientNetV2 weights (.h5, .weights.h5, .keras)")
    keras.add_argument("--model", required=True, help=f"variant: {', '.join(KERAS_CONSTRUCTORS)} (or b0, s, ...)")
    keras.add_argument("--weights", required=True, help="the Keras weights file")
    keras.set_defaults(run=_keras)
    tf = sources.add_parser("tf", help="official TF checkpoints (efficientnetv2-<v>[-21k|-21k-ft1k] directories)")
    tf.add_argument("--checkpoint", required=True, help="checkpoint directory or prefix")
    tf.add_argument("--model", help="variant; read from the checkpoint's variable names when omitted")
    tf.add_argument("--no-ema", action="store_true", help="use the raw variables, not their EMA shadows")
    tf.set_defaults(run=_tf)
    timm = sources.add_parser("timm", help="timm tf_efficientnetv2_* state dicts (.safetensors; .pth/.bin need torch)")
    timm.add_argument("--weights", required=True, help="the state-dict file")
    timm.add_argument("--model", help="variant; inferred from the state dict's layout when omitted")
    timm.set_defaults(run=_timm)
    for subparser in (keras, tf, timm):
        subparser.add_argument("--output", required=True, help="output directory (local path or gs://)")
        subparser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
        cli.add_verbose_flag(subparser)
    return parser


def _run(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.run(args, parser)


def main(argv: list[str] | None = None) -> int:
    """Parses `argv` and runs the chosen importer under the CLI convention; returns the exit code."""
    return cli.run(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
