"""Classify images from the command line: top-5 classes with probabilities for each JPEG/PNG.

    python -m efficientnetv2_jax.predict --checkpoint DIR [--step N] [--model NAME] IMAGE...
    python -m efficientnetv2_jax.predict --weights FILE_OR_DIR --model NAME IMAGE...
    python -m efficientnetv2_jax.predict --pretrained efficientnetv2-s-21k-ft1k IMAGE...

Images of any size get the checkpoint's eval preprocessing (the official eval crop rule, resize method and
eval size; `--image-size` overrides the size) through `data.preprocessing.eval_image`, the trainer's own code.
Probabilities are the softmax of the logits, or per-class sigmoids for a sigmoid-loss model (the official 21k
checkpoints). ImageNet-1k and -21k class names come from the official label files shipped with the package.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys

import jax
import numpy as np

from efficientnetv2_jax import cli, inference

TOP_K = 5


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One of an image's top classes."""

    index: int
    name: str
    probability: float


def _tf_error_text(error: Exception) -> str:
    """The human part of a TF op error (no function-node prefix, no op suffix), on one line."""
    text = (getattr(error, "message", None) or str(error)).splitlines()[0]
    return re.sub(r"\{\{[^}]*\}\}\s*|\s*\[Op:.*$", "", text).strip()


def load_images(paths: list[str], preprocessing: inference.EvalPreprocessing) -> np.ndarray:
    """uint8 [N, S, S, 3] made by the official eval preprocessing; an unreadable image raises UsageError."""
    tf = cli.import_quietly("tensorflow")

    from efficientnetv2_jax.data.preprocessing import eval_image  # pylint: disable=import-outside-toplevel

    images = []
    for path in paths:
        try:
            encoded = tf.io.read_file(path)
            image = eval_image(encoded, image_size=preprocessing.image_size,
                               resize_method=preprocessing.resize_method, crop_rule=preprocessing.crop_rule,
                               jpeg_downscale=preprocessing.jpeg_downscale)
        except (tf.errors.OpError, ValueError) as error:
            raise cli.UsageError(f"Cannot read image {path}: {_tf_error_text(error)}") from error
        images.append(image.numpy())
    return np.stack(images)


def predict(loaded: inference.LoadedModel, images: np.ndarray, names: tuple[str, ...] | None = None,
            top_k: int = TOP_K) -> list[list[Prediction]]:
    """Top-`top_k` classes per preprocessed uint8 image, best first, with probabilities (softmax, or sigmoid for a
    multi-label model) and `names`."""
    if loaded.num_classes == 0:
        raise cli.UsageError("This checkpoint has no classifier (num_classes=0); nothing to predict.")
    logits = jax.jit(loaded.logits_fn())(loaded.variables, images)
    probabilities = np.asarray(jax.nn.sigmoid(logits) if loaded.multi_label else jax.nn.softmax(logits, axis=-1))
    k = min(top_k, loaded.num_classes)
    results = []
    for row in probabilities:
        best = np.argsort(-row, kind="stable")[:k]
        results.append([Prediction(int(i), names[i] if names else f"class {i}", float(row[i])) for i in best])
    return results


def format_predictions(path: str, predictions: list[Prediction]) -> str:
    """'path' then one indented line per class: rank, probability, name."""
    lines = [path] + [f"  {rank}. {p.probability:7.2%}  {p.name}" for rank, p in enumerate(predictions, 1)]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of the predict command."""
    parser = argparse.ArgumentParser(prog="python -m efficientnetv2_jax.predict", description=__doc__.split("\n")[0])
    inference.add_source_flags(parser, weights=True)
    parser.add_argument("--image-size", type=int, help="eval size; default the checkpoint's (or variant's) eval size")
    parser.add_argument("--top-k", type=int, default=TOP_K, help="classes to print per image (default 5)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files (any size)")
    cli.add_verbose_flag(parser)
    return parser


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.top_k < 1:
        raise cli.UsageError(f"--top-k must be >= 1, got {args.top_k}.")
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:  # Before the model loads (seconds), not after.
        raise cli.UsageError(f"Cannot read image {missing[0]}: no such file.")
    cli.import_quietly("tensorflow")  # Loading a trainer checkpoint imports it (its config builds the network).
    loaded = inference.load_from_flags(args)
    images = load_images(args.images, loaded.preprocessing)
    names = inference.class_names(loaded)
    results = predict(loaded, images, names, args.top_k)
    if names is None:
        print("note: no class names known for this checkpoint; showing class indices.", file=sys.stderr)
    size = loaded.preprocessing.image_size
    print(f"{loaded.model_name}, {size}x{size} px, {loaded.preprocessing.crop_rule} crop, "
          f"{loaded.preprocessing.resize_method} resize" + (", sigmoid probabilities" if loaded.multi_label else ""))
    for path, predictions in zip(args.images, results):
        print(format_predictions(path, predictions))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the command under the CLI convention (`efficientnetv2_jax.cli`); returns the exit code."""
    return cli.run(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
