"""CLI: `python -m efficientnetv2_jax.convert keras --model NAME --weights PATH --output DIR`.

Writes an Orbax variables checkpoint (`efficientnetv2_jax.checkpoint.save_variables`) that the trainer reads
with `--config.init_from=DIR`. One subcommand per weight source, so TF and timm importers can join as siblings.
"""

from __future__ import annotations

import argparse
import sys

from efficientnetv2_jax.convert.keras_weights import KERAS_CONSTRUCTORS, from_keras


def _num_classes(variables: dict) -> int:
    """Classifier width of converted variables; 0 for a headless backbone."""
    classifier = variables["params"].get("classifier")
    return 0 if classifier is None else int(classifier["bias"].shape[0])


def _keras(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Converts a Keras weights file and writes it as a variables checkpoint."""
    from efficientnetv2_jax import checkpoint  # pylint: disable=import-outside-toplevel  # Orbax only when used.
    from efficientnetv2_jax.models import get_variant  # pylint: disable=import-outside-toplevel

    try:
        model_name = get_variant(args.model).name
    except ValueError as error:
        parser.error(str(error))
    if model_name not in KERAS_CONSTRUCTORS:
        parser.error(f"{model_name} has no Keras port; Keras variants: {', '.join(KERAS_CONSTRUCTORS)} "
                     "(XL needs the TF checkpoint importer).")
    try:
        variables = from_keras(args.weights, name=model_name)
        num_classes = _num_classes(variables)
        checkpoint.save_variables(args.output, variables, model_name=model_name, num_classes=num_classes,
                                  overwrite=args.overwrite)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {model_name} ({num_classes} classes) from {args.weights} to {args.output}.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per weight source."""
    parser = argparse.ArgumentParser(prog="python -m efficientnetv2_jax.convert", description=__doc__.split("\n")[0])
    sources = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    keras = sources.add_parser("keras", help="keras.applications EfficientNetV2 weights (.h5, .weights.h5, .keras)")
    keras.add_argument("--model", required=True, help=f"variant: {', '.join(KERAS_CONSTRUCTORS)} (or b0, s, ...)")
    keras.add_argument("--weights", required=True, help="the Keras weights file")
    keras.add_argument("--output", required=True, help="output directory (local path or gs://)")
    keras.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    keras.set_defaults(run=_keras)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parses `argv` and runs the chosen importer; returns the exit code (2 for bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.run(args, parser)


if __name__ == "__main__":
    sys.exit(main())
