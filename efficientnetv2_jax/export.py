"""Export a checkpoint as a TensorFlow SavedModel (jax2tf) for TF Serving, TFLite or plain TensorFlow.

    python -m efficientnetv2_jax.export --checkpoint DIR [--step N] [--model NAME] --output DIR
    python -m efficientnetv2_jax.export --pretrained efficientnetv2-s-21k-ft1k --output DIR

Signatures, both taking `images`: uint8 [batch, height, width, 3], any batch and any image size:
  serving_default  -> {'logits': float32 [batch, classes], 'probabilities': softmax of the logits (sigmoid for
                      a sigmoid-loss model such as the official 21k checkpoints)}
  feature_vector   -> {'feature_vector': float32 [batch, head width]} (the pooled head features before the
                      classifier: round_filters(1280, width), e.g. 1280 for S/M/L/XL and B0, 1408 for B2)
Preprocessing is inside, in TF: the checkpoint's eval crop rule and resize to its eval size (the same ops as
`data.preprocessing.eval_image` uses) followed by the variant's normalisation inside the JAX function. The
network runs in inference mode only: BN with its moving statistics, no dropout, no random ops. The signatures
take decoded pixels, so a checkpoint's opt-in `dataset.jpeg_downscale` (a JPEG decode option) has no
effect here: the SavedModel matches `predict` for checkpoints with the official full-resolution decode.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from efficientnetv2_jax import cli

tf = cli.import_quietly("tensorflow")  # Its start-up lines go, even for --help, unless --verbose.

from etils import epath  # noqa: E402  (after the quiet TensorFlow import)
from jax.experimental import jax2tf  # noqa: E402

from efficientnetv2_jax import inference  # noqa: E402
from efficientnetv2_jax.data import preprocessing  # noqa: E402
from efficientnetv2_jax.models import get_variant  # noqa: E402
from efficientnetv2_jax.models.variants import FEATURE_SIZE, round_filters  # noqa: E402

SERVING_SIGNATURE = "serving_default"
FEATURE_SIGNATURE = "feature_vector"
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def feature_width(loaded: inference.LoadedModel) -> int:
    """Width of the pooled feature vector: the head's round_filters(1280, width)."""
    return round_filters(FEATURE_SIZE, loaded.model.width if loaded.model.width is not None
                         else get_variant(loaded.model_name).width)


def eval_window_fn(prep: inference.EvalPreprocessing) -> preprocessing.WindowFn:
    """The crop window of `preprocessing.eval_image` for decoded images (same rule, same window functions)."""
    if prep.crop_rule == "full" or (prep.crop_rule == "v2" and prep.image_size >= 320):
        return preprocessing.full_window
    return preprocessing.centre_crop_window(prep.image_size, offset_rounding_up=prep.crop_rule == "v1")


def make_tf_preprocessing(prep: inference.EvalPreprocessing):
    """uint8 [B, H, W, 3] of any size -> uint8 [B, S, S, 3]: eval crop then resize and round, per image."""
    window_fn = eval_window_fn(prep)
    size = prep.image_size

    def one_image(image: tf.Tensor) -> tf.Tensor:
        window = window_fn(tf.shape(image))
        crop = tf.slice(image, tf.stack([window[0], window[1], 0]), tf.stack([window[2], window[3], 3]))
        return preprocessing.resize_to_uint8(crop, size, prep.resize_method)

    def batch(images: tf.Tensor) -> tf.Tensor:
        return tf.map_fn(one_image, images, fn_output_signature=tf.TensorSpec([size, size, 3], tf.uint8))

    return batch


def build_serving_module(loaded: inference.LoadedModel, platforms: tuple[str, ...] = DEFAULT_PLATFORMS) -> tf.Module:
    """A tf.Module whose tf.functions serve logits/probabilities and pooled features for uint8 images of any size."""
    loaded = dataclasses.replace(loaded, model=loaded.model.clone(conv_impl="xla"))  # Portable convolutions.
    size = loaded.preprocessing.image_size
    shapes = [None, f"(b, {size}, {size}, 3)"]  # Any batch; the TF preprocessing fixes the spatial size.

    def convert(features: bool):
        return jax2tf.convert(loaded.logits_fn(features=features), polymorphic_shapes=shapes, with_gradient=False,
                              native_serialization_platforms=platforms)

    module = tf.Module()
    module.variables_tree = tf.nest.map_structure(lambda x: tf.Variable(x, trainable=False), loaded.variables)
    preprocess = make_tf_preprocessing(loaded.preprocessing)
    features_fn = convert(features=True)
    spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")

    @tf.function(input_signature=[spec], autograph=False)
    def feature_vector(images):
        return {"feature_vector": features_fn(module.variables_tree, preprocess(images))}

    module.feature_vector = feature_vector
    if loaded.num_classes > 0:
        logits_fn = convert(features=False)

        @tf.function(input_signature=[spec], autograph=False)
        def serve(images):
            logits = logits_fn(module.variables_tree, preprocess(images))
            probabilities = tf.nn.sigmoid(logits) if loaded.multi_label else tf.nn.softmax(logits, axis=-1)
            return {"logits": logits, "probabilities": probabilities}

        module.serve = serve
    return module


def export_saved_model(loaded: inference.LoadedModel, output: str, *, platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
                       overwrite: bool = False) -> None:
    """Writes the SavedModel; `serving_default` is the classifier (the feature vector for a headless model)."""
    if epath.Path(output).exists() and not overwrite:
        raise cli.UsageError(f"{output} already exists; choose a new --output or pass --overwrite.")
    module = build_serving_module(loaded, platforms)
    serving = getattr(module, "serve", module.feature_vector)
    signatures = {SERVING_SIGNATURE: serving, FEATURE_SIGNATURE: module.feature_vector}
    tf.saved_model.save(module, output, signatures=signatures)


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags of the export command."""
    parser = argparse.ArgumentParser(prog="python -m efficientnetv2_jax.export", description=__doc__.split("\n")[0])
    inference.add_source_flags(parser, weights=False)
    parser.add_argument("--output", required=True, help="SavedModel directory to write")
    parser.add_argument("--image-size", type=int, help="serving size; default the checkpoint's (variant's) eval size")
    parser.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS),
                        help="comma-separated platforms the SavedModel can run on (default cpu,cuda,tpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    cli.add_verbose_flag(parser)
    return parser


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    unknown = sorted(set(platforms) - set(DEFAULT_PLATFORMS))
    if unknown or not platforms:
        raise cli.UsageError(f"Unknown --platforms {unknown or args.platforms!r}; valid: "
                             f"{', '.join(DEFAULT_PLATFORMS)}.")
    if epath.Path(args.output).exists() and not args.overwrite:  # Before the model loads.
        raise cli.UsageError(f"{args.output} already exists; choose a new --output or pass --overwrite.")
    loaded = inference.load_from_flags(args)
    export_saved_model(loaded, args.output, platforms=platforms, overwrite=args.overwrite)
    size = loaded.preprocessing.image_size
    print(f"Wrote {loaded.model_name} ({loaded.num_classes} classes, {size} px, feature vector "
          f"{feature_width(loaded)}) to {args.output}: signatures {SERVING_SIGNATURE}, {FEATURE_SIGNATURE}.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the command under the CLI convention (`efficientnetv2_jax.cli`); returns the exit code."""
    return cli.run(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
