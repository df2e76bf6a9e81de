"""RandAugment as in the official EfficientNetV2 code: N layers, each always applies 1 of 16 ops at magnitude M.

Each layer picks an op uniformly (``tf.switch_case``, so only the chosen op runs) and applies it at the
fixed float magnitude with the official level mapping (``image_ops.LEVEL_OPS``; translate 100*M/10 px,
cutout pad int(M/10*40), geometric fill 128). Randomness is stateless: the same seed gives the same image.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from efficientnetv2_jax.data import image_ops

RANDAUGMENT_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast",
    "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd",
)


def randaugment(image: tf.Tensor, seed: tf.Tensor, *, magnitude: float, num_layers: int = 2) -> tf.Tensor:
    """uint8 [H, W, 3] -> uint8 [H, W, 3] after ``num_layers`` random official RandAugment ops at ``magnitude``."""
    if magnitude < 0 or num_layers < 0:
        raise ValueError(f"need magnitude >= 0 and num_layers >= 0, got {magnitude}, {num_layers}")
    if num_layers == 0:
        return image
    seeds = tf.random.experimental.stateless_split(seed, num=2 * num_layers)
    for layer in range(num_layers):
        choice = tf.random.stateless_uniform([], seeds[2 * layer], minval=0, maxval=len(RANDAUGMENT_OPS),
                                             dtype=tf.int32)
        branches = [functools.partial(image_ops.apply_level_op, name, image, magnitude, seeds[2 * layer + 1],
                                      image_ops.RANDAUGMENT_CONSTANTS) for name in RANDAUGMENT_OPS]
        augmented = tf.switch_case(choice, branches)
        augmented.set_shape(image.shape)
        image = augmented
    return image
