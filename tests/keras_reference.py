"""Shared by the importer tests: randomised, BN-calibrated keras.applications models whose logits depend on the
input, and our logits on the same images."""

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from efficientnetv2_jax.models import create_model, normalize_images  # noqa: E402

IMAGE_SIZE = 64
NUM_CLASSES = 10
CONSTRUCTORS = {"b0": keras.applications.EfficientNetV2B0, "s": keras.applications.EfficientNetV2S}


def randomise_and_calibrate(model, images: np.ndarray, rng: np.random.Generator) -> None:
    """Random BN gamma/beta and biases, then BN moving statistics set to those of one training pass on `images`.

    A fresh Keras model in inference mode has statistics (0, 1) that do not match its activations, so its logits
    barely depend on the input or explode. With BN momentum 0 and dropout off during one training pass, the
    moving statistics become exactly the batch statistics of `images`, so inference on them is well scaled.
    """
    restore = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.normal(0.0, 0.2, layer.beta.shape))
            restore.append((layer, "momentum", layer.momentum))
            layer.momentum = 0.0
        elif isinstance(layer, keras.layers.Dropout):
            restore.append((layer, "rate", layer.rate))
            layer.rate = 0.0
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0.0, 0.2, layer.bias.shape))
    model(images, training=True)
    for layer, attribute, value in restore:
        setattr(layer, attribute, value)


@functools.lru_cache(maxsize=None)
def keras_case(short: str):
    """(Keras model, two batches of different images, Keras logits for each), built once per test module."""
    rng = np.random.default_rng(0)
    model = CONSTRUCTORS[short](weights=None, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), classes=NUM_CLASSES,
                                classifier_activation=None)
    images = rng.uniform(0, 255, (8, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    randomise_and_calibrate(model, images, rng)
    batches = (images[:4], images[4:])
    return model, batches, tuple(np.asarray(model(x, training=False)) for x in batches)


@functools.lru_cache(maxsize=None)
def our_logits_fn(short: str):
    """Jitted logits of our model on raw [0, 255] images (normalised the official way)."""
    model = create_model(short, num_classes=NUM_CLASSES)
    return jax.jit(lambda variables, x: model.apply(variables, normalize_images(x, short), train=False))


def max_diff(variables, short, batches, keras_logits) -> float:
    logits_fn = our_logits_fn(short)
    return max(float(np.abs(np.asarray(logits_fn(variables, x)) - k).max()) for x, k in zip(batches, keras_logits))
