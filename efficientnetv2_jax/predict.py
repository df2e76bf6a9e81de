"""Classify images from the command line: top-5 classes with probabilities for each JPEG/PNG.

    python -m efficientnetv2_jax.predict --checkpoint DIR [--model NAME] IMAGE...
    python -m efficientnetv2_jax.predict --weights FILE_OR_DIR --model NAME IMAGE...

Images of any size get the checkpoint's eval preprocessing (the official eval crop rule, resize method and
eval size; `--image-size` overrides the size) through `data.preprocessing.eval_image`, the trainer's own code.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys

import jax
import numpy as np

from efficientnetv2_jax import inference

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
    """uint8 [N, S, S, 3] made by the official eval preprocessing; an unreadable image raises CliError."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from efficientnetv2_jax.data.preprocessing import eval_image  # pylint: disable=import-outside-toplevel

    images = []
    for path in paths:
        try:
            encoded = tf.io.read_file(path)
            image = eval_image(encoded, image_size=preprocessing.image_size,
                               resize_method=preprocessing.resize_method, crop_rule=preprocessing.crop_rule,
                               jpeg_downscale=preprocessing.jpeg_downscale)
        except (tf.errors.OpError, ValueError) as error:
            raise inference.CliError(f"Cannot read image {path}: {_tf_error_text(error)}") from error
        images.append(image.numpy())
    return np.stack(images)


def predict(loaded: inference.LoadedModel, images: np.ndarray, names: tuple[str, ...] | None = None,
            top_k: int = TOP_K) -> list[list[Prediction]]:
    """Top-`top_k` classes per preprocessed uint8 image, best first, with softmax probabilities and `names`."""
    if loaded.num_classes == 0:
        raise inference.CliError("This checkpoint has no classifier (num_classes=0); nothing to predict.")
    logits = jax.jit(loaded.logits_fn())(loaded.variables, images)
    probabilities = np.asarray(jax.nn.softmax(logits, axis=-1))
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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="training workdir (EMA weights of the newest step) or variables dir")
    source.add_argument("--weights", help="converted weights: a variables dir or a Keras .h5/.keras file")
    parser.add_argument("--model", help="variant (b0..b3, s, m, l, xl); read from the checkpoint when recorded")
    parser.add_argument("--image-size", type=int, help="eval size; default the checkpoint's (or variant's) eval size")
    parser.add_argument("--top-k", type=int, default=TOP_K, help="classes to print per image (default 5)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files (any size)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command; bad input is one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        if args.top_k < 1:
            raise inference.CliError(f"--top-k must be >= 1, got {args.top_k}.")
        if args.checkpoint:
            loaded = inference.load_checkpoint(args.checkpoint, args.model, image_size=args.image_size)
        else:
            loaded = inference.load_weights(args.weights, args.model, image_size=args.image_size)
        images = load_images(args.images, loaded.preprocessing)
        names = inference.class_names(loaded)
        results = predict(loaded, images, names, args.top_k)
    except inference.CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if names is None:
        print("note: no class names known for this checkpoint; showing class indices.", file=sys.stderr)
    size = loaded.preprocessing.image_size
    print(f"{loaded.model_name}, {size}x{size} px, {loaded.preprocessing.crop_rule} crop, "
          f"{loaded.preprocessing.resize_method} resize")
    for path, predictions in zip(args.images, results):
        print(format_predictions(path, predictions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
