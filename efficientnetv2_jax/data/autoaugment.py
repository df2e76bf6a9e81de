"""AutoAugment policy v0 (the 25 sub-policies of the AutoAugment paper) as used for EfficientNet B0-B3.

One sub-policy is picked uniformly per image; each of its two ops runs with its own probability at its
integer level, with translate_const=250 and cutout_const=100 (official ``distort_image_with_autoaugment``).
The ops themselves are shared with RandAugment (``image_ops``).
"""

from __future__ import annotations

import tensorflow as tf

from efficientnetv2_jax.data import image_ops

# (op, probability, level) pairs, in the official order.
POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)


def _apply_with_probability(image: tf.Tensor, name: str, probability: float, level: int,
                            seed: tf.Tensor) -> tf.Tensor:
    """Apply one policy op with ``probability`` (the coin and the op draw from split seeds)."""
    coin_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    apply = tf.random.stateless_uniform([], coin_seed) < probability
    return tf.cond(apply, lambda: image_ops.apply_level_op(name, image, level, op_seed,
                                                           image_ops.AUTOAUGMENT_CONSTANTS), lambda: image)


def autoaugment_v0(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, 3] -> uint8 [H, W, 3] after one random sub-policy of AutoAugment v0."""
    choice_seed, first_seed, second_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))
    choice = tf.random.stateless_uniform([], choice_seed, minval=0, maxval=len(POLICY_V0), dtype=tf.int32)

    def sub_policy(ops):
        def run():
            out = image
            for (name, probability, level), op_seed in zip(ops, (first_seed, second_seed)):
                out = _apply_with_probability(out, name, probability, level, op_seed)
            return out
        return run

    augmented = tf.switch_case(choice, [sub_policy(ops) for ops in POLICY_V0])
    augmented.set_shape(image.shape)
    return augmented
