"""Per-example train/eval preprocessing (TF graph, encoded bytes -> uint8 [S, S, 3]) with the official semantics.

Train (``augment``):
  'randaug'  V2: ``sample_distorted_bounding_box`` (area 0.05-1, TF default aspect 0.75-1.33, 100 attempts, no
             min object) -> bilinear resize -> flip -> RandAugment(N, M)   (official ``preprocess_for_train``)
  'autoaug'  V1 (B0-B3): crop with min_object_covered 0.1, area 0.08-1, aspect 3/4-4/3, 10 attempts,
             centre-crop fallback when the sample is the whole image -> bicubic -> flip -> AutoAugment v0
  'none'     the V2 crop + resize + flip only (ImageNet-21k pretraining)
  'finetune' official ``preprocess_for_finetune``: full image resized (no crop) -> flip -> cutout of
             side 2*(S//4) filled with uniform noise in [128, 255] (the official [0, 1) noise in [-1, 1] space)
Eval (``crop_rule``): 'v2' centre crop of side int(S/(S+32)*min(h, w)) only when S < 320, otherwise the
whole image; 'v1' always that crop with offsets ((h-c)+1)//2; 'full' the whole image (finetune eval).

Decoding is at full resolution, as the official ``decode_image`` then crop: a JPEG's crop window is decoded
directly (``decode_and_crop_jpeg`` with a 2-pixel margin, which gives exactly the pixels of decoding the whole
image and slicing), other formats are fully decoded and sliced. Normalisation happens on the device, so images
leave as uint8. Differences from the official code, all at the level of interpolation / rounding:
  * Opt-in ``jpeg_downscale`` (default off; ``config.dataset.jpeg_downscale``): a JPEG window whose both
    sides are at least 2x, 4x or 8x the output is decoded by libjpeg at 1/2, 1/4 or 1/8 scale (a DCT-domain
    box filter) before the resize, the window aligned down to the scaled grid (< 1 scaled pixel). A window
    smaller than 2x the output on either side is decoded at full resolution. Not the official pixels, and on
    ~500x375 photos not faster either (0.97-1.01x, benchmarks/input_pipeline.py); it can pay off only on
    images several times larger than the output.
  * Resized images are rounded to uint8 (the official code truncates before RandAugment; <= 1 level) and
    clipped to [0, 255] (the official eval keeps bicubic overshoot in float).
  * Bicubic is TF1's ``resize_bicubic`` (no half-pixel centres), as the official V1 code uses.
Grayscale and RGBA inputs become 3-channel RGB. Randomness is stateless (``seed`` int [2]).
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from efficientnetv2_jax.data import image_ops
from efficientnetv2_jax.data.autoaugment import autoaugment_v0
from efficientnetv2_jax.data.randaugment import randaugment

TRAIN_AUGMENTS = ("randaug", "autoaug", "none", "finetune")
RESIZE_METHODS = ("bilinear", "bicubic")
CROP_RULES = ("v2", "v1", "full")
CROP_PADDING = 32
JPEG_SCALES = (2, 4, 8)  # libjpeg's DCT downscale factors that the opt-in jpeg_downscale may use
JPEG_EDGE_MARGIN = 2  # pixels decoded beyond each side of a JPEG window (see _decode_jpeg_at)

# A window rule maps the image shape int32 [3] to an int32 [4] window (y, x, height, width).
WindowFn = Callable[[tf.Tensor], tf.Tensor]


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose from {list(choices)}")


def jpeg_decode_scale(window: tf.Tensor, output_size: int) -> tf.Tensor:
    """The coarsest of JPEG_SCALES at which both sides of ``window`` stay >= ``output_size``; 1 when none does."""
    short_side = tf.minimum(window[2], window[3])
    scale = tf.constant(1, tf.int32)
    for candidate in JPEG_SCALES:
        scale = tf.where(short_side >= candidate * output_size, candidate, scale)
    return scale


def _decode_jpeg_at(encoded: tf.Tensor, window: tf.Tensor, image_shape: tf.Tensor, scale: int) -> tf.Tensor:
    """``window`` (full-resolution coordinates) decoded at 1/``scale``, with the pixels of a whole-image decode.

    libjpeg's cropped decode upsamples the chroma at the crop's edges without the neighbours outside it (up to
    14 grey levels off on photos); decoding JPEG_EDGE_MARGIN more pixels on each side, then slicing, avoids it.
    """
    begin, size = window[:2] // scale, tf.maximum(window[2:] // scale, 1)
    scaled_shape = (image_shape[:2] + scale - 1) // scale
    padded_begin = tf.maximum(begin - JPEG_EDGE_MARGIN, 0)
    padded_end = tf.minimum(begin + size + JPEG_EDGE_MARGIN, scaled_shape)
    padded = tf.io.decode_and_crop_jpeg(encoded, tf.concat([padded_begin, padded_end - padded_begin], 0),
                                        channels=3, ratio=scale)
    return tf.slice(padded, tf.concat([begin - padded_begin, [0]], 0), tf.concat([size, [3]], 0))


def _decode_jpeg_window(encoded: tf.Tensor, window: tf.Tensor, image_shape: tf.Tensor, output_size: int,
                        downscale: bool) -> tf.Tensor:
    """Decode only ``window`` of a JPEG: full resolution, or with ``downscale`` at ``jpeg_decode_scale``."""
    if not downscale:
        return _decode_jpeg_at(encoded, window, image_shape, 1)
    scales = (1,) + JPEG_SCALES
    branch = tf.argmax(tf.equal(tf.constant(scales), jpeg_decode_scale(window, output_size)), output_type=tf.int32)
    return tf.switch_case(branch, [lambda scale=scale: _decode_jpeg_at(encoded, window, image_shape, scale)
                                   for scale in scales])


def decode_window(encoded: tf.Tensor, window_fn: WindowFn, *, output_size: int,
                  jpeg_downscale: bool = False) -> tf.Tensor:
    """Encoded image -> uint8 [h, w, 3] of the window chosen by ``window_fn`` from the full image shape."""

    def jpeg() -> tf.Tensor:
        shape = tf.image.extract_jpeg_shape(encoded)
        return _decode_jpeg_window(encoded, window_fn(shape), shape, output_size, jpeg_downscale)

    def other() -> tf.Tensor:
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
        window = window_fn(tf.shape(image))
        return tf.slice(image, tf.stack([window[0], window[1], 0]), tf.stack([window[2], window[3], 3]))

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    image.set_shape([None, None, 3])
    return image


def resize_to_uint8(image: tf.Tensor, image_size: int, method: str) -> tf.Tensor:
    """Resize uint8 [h, w, 3] to [S, S, 3] (bilinear: TF2 default; bicubic: TF1 resize_bicubic), round to uint8."""
    _check_choice(method, RESIZE_METHODS, "resize_method")
    if method == "bilinear":
        resized = tf.image.resize(image, [image_size, image_size], method="bilinear")
    else:
        resized = tf.raw_ops.ResizeBicubic(images=image[None], size=[image_size, image_size],
                                           align_corners=False, half_pixel_centers=False)[0]
    resized = tf.saturate_cast(tf.round(resized), tf.uint8)
    resized.set_shape([image_size, image_size, 3])
    return resized


def full_window(shape: tf.Tensor) -> tf.Tensor:
    """The whole image."""
    return tf.stack([0, 0, shape[0], shape[1]])


def centre_crop_window(image_size: int, offset_rounding_up: bool) -> WindowFn:
    """Official centre crop of side int(S/(S+32)*min(h, w)); V1 offsets ((h-c)+1)//2, V2 offsets (h-c)//2."""
    ratio = image_size / (image_size + CROP_PADDING)
    extra = 1 if offset_rounding_up else 0

    def window(shape: tf.Tensor) -> tf.Tensor:
        height, width = shape[0], shape[1]
        crop = tf.cast(ratio * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
        return tf.stack([(height - crop + extra) // 2, (width - crop + extra) // 2, crop, crop])

    return window


def random_crop_window(seed: tf.Tensor, *, area_range: tuple[float, float], aspect_ratio_range: tuple[float, float],
                       min_object_covered: float, max_attempts: int,
                       centre_fallback: WindowFn | None = None) -> WindowFn:
    """Stateless ``sample_distorted_bounding_box`` over the whole image.

    With ``centre_fallback`` (the V1 rule) a sample equal to the whole image is replaced by that window.
    """

    def window(shape: tf.Tensor) -> tf.Tensor:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.cast(shape, tf.int32), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
            min_object_covered=min_object_covered, aspect_ratio_range=aspect_ratio_range, area_range=area_range,
            max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
        sampled = tf.stack([begin[0], begin[1], size[0], size[1]])
        if centre_fallback is None:
            return sampled
        whole = (size[0] == shape[0]) & (size[1] == shape[1])
        return tf.where(whole, centre_fallback(shape), sampled)

    return window


def _finetune_cutout(image: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
    """Official finetune cutout: pad S//4, filled with uniform noise ([0,1) in [-1,1] space = [128, 255])."""
    position_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    noise = tf.random.stateless_uniform([image_size, image_size, 3], noise_seed)
    noise = tf.cast(tf.round(127.5 + 127.5 * noise), tf.uint8)
    return image_ops.cutout(image, image_size // 4, position_seed, replace=noise)


def train_image(encoded: tf.Tensor, seed: tf.Tensor, *, image_size: int, augment: str, randaug_magnitude: float,
                randaug_layers: int = 2, area_range: tuple[float, float] = (0.05, 1.0),
                jpeg_downscale: bool = False, random_flip: bool = True) -> tf.Tensor:
    """Encoded bytes + stateless seed int [2] -> augmented uint8 [S, S, 3] (see the module docstring).

    `random_flip=False` drops the official horizontal flip, for data where mirroring changes the class (digits).
    """
    _check_choice(augment, TRAIN_AUGMENTS, "augment")
    crop_seed, flip_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))
    if augment == "autoaug":
        window_fn = random_crop_window(crop_seed, area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
                                       min_object_covered=0.1, max_attempts=10,
                                       centre_fallback=centre_crop_window(image_size, offset_rounding_up=True))
    elif augment == "finetune":
        window_fn = full_window
    else:
        window_fn = random_crop_window(crop_seed, area_range=area_range, aspect_ratio_range=(0.75, 1.33),
                                       min_object_covered=0.0, max_attempts=100)
    image = decode_window(encoded, window_fn, output_size=image_size, jpeg_downscale=jpeg_downscale)
    image = resize_to_uint8(image, image_size, "bicubic" if augment == "autoaug" else "bilinear")
    if random_flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if augment == "randaug":
        image = randaugment(image, augment_seed, magnitude=randaug_magnitude, num_layers=randaug_layers)
    elif augment == "autoaug":
        image = autoaugment_v0(image, augment_seed)
    elif augment == "finetune":
        image = _finetune_cutout(image, augment_seed, image_size)
    image.set_shape([image_size, image_size, 3])
    return image


def eval_image(encoded: tf.Tensor, *, image_size: int, resize_method: str = "bilinear", crop_rule: str = "v2",
               jpeg_downscale: bool = False) -> tf.Tensor:
    """Encoded bytes -> uint8 [S, S, 3] with the official eval crop rule (see the module docstring)."""
    _check_choice(resize_method, RESIZE_METHODS, "resize_method")
    _check_choice(crop_rule, CROP_RULES, "crop_rule")
    if crop_rule == "full" or (crop_rule == "v2" and image_size >= 320):
        window_fn = full_window
    else:
        window_fn = centre_crop_window(image_size, offset_rounding_up=crop_rule == "v1")
    image = decode_window(encoded, window_fn, output_size=image_size, jpeg_downscale=jpeg_downscale)
    return resize_to_uint8(image, image_size, resize_method)
