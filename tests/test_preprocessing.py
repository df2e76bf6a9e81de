"""Train/eval preprocessing: shapes, formats, determinism, the official eval crop rules, and real photos
(tests/photos.py) against an independent reference (tests/eval_reference.py: full-resolution decode, crop,
NumPy resize)."""

import shutil

import numpy as np
import pytest
import tensorflow as tf

import eval_reference
import photos
from efficientnetv2_jax.data import input_pipeline, preprocessing


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A smooth 120x160 colour image with distinct rows and columns."""
    ys, xs = np.mgrid[0:120, 0:160]
    return np.stack([ys * 2, xs * 1.5, (ys + xs) % 256], axis=-1).astype(np.uint8)


def seed(a, b=0):
    return tf.constant([a, b], tf.int64)


@pytest.mark.parametrize("augment", preprocessing.TRAIN_AUGMENTS)
def test_train_image_shapes_for_jpeg_png_and_grayscale(photo, augment):
    encodings = [tf.io.encode_jpeg(photo), tf.io.encode_png(photo), tf.io.encode_png(photo[..., :1]),
                 tf.io.encode_jpeg(photo[..., :1])]
    for encoded in encodings:
        out = preprocessing.train_image(encoded, seed(1), image_size=32, augment=augment, randaug_magnitude=10.0)
        assert out.shape == (32, 32, 3) and out.dtype == tf.uint8


def test_train_image_deterministic_per_seed(photo):
    encoded = tf.io.encode_jpeg(photo)
    run = tf.function(lambda s: preprocessing.train_image(encoded, s, image_size=32, augment="randaug",
                                                          randaug_magnitude=10.0))
    first = run(seed(3)).numpy()
    np.testing.assert_array_equal(first, run(seed(3)).numpy())
    assert not np.array_equal(first, run(seed(4)).numpy())


def test_grayscale_becomes_three_equal_channels(photo):
    out = preprocessing.eval_image(tf.io.encode_png(photo[..., :1]), image_size=32).numpy()
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_unknown_choices_raise_naming_the_options(photo):
    encoded = tf.io.encode_png(photo)
    with pytest.raises(ValueError, match="randaug"):
        preprocessing.train_image(encoded, seed(0), image_size=32, augment="rand", randaug_magnitude=5.0)
    with pytest.raises(ValueError, match="bicubic"):
        preprocessing.eval_image(encoded, image_size=32, resize_method="area")
    with pytest.raises(ValueError, match="v1"):
        preprocessing.eval_image(encoded, image_size=32, crop_rule="v3")


def expected_eval(photo, size, window, method="bilinear"):
    y, x, h, w = window
    crop = photo[y:y + h, x:x + w]
    return preprocessing.resize_to_uint8(tf.constant(crop), size, method).numpy()


def test_v2_eval_centre_crops_below_320_and_resizes_whole_image_from_320(photo):
    encoded = tf.io.encode_png(photo)
    crop = int(64 / 96 * 120)  # s/(s+32) of the short side
    np.testing.assert_array_equal(preprocessing.eval_image(encoded, image_size=64).numpy(),
                                  expected_eval(photo, 64, ((120 - crop) // 2, (160 - crop) // 2, crop, crop)))
    np.testing.assert_array_equal(preprocessing.eval_image(encoded, image_size=320).numpy(),
                                  expected_eval(photo, 320, (0, 0, 120, 160)))


def test_v1_eval_rounds_offsets_up_and_uses_tf1_bicubic(photo):
    odd = photo[:119]
    crop = int(48 / 80 * 119)
    window = ((119 - crop + 1) // 2, (160 - crop + 1) // 2, crop, crop)
    assert window[1] != (160 - crop) // 2  # the +1 matters here
    out = preprocessing.eval_image(tf.io.encode_png(odd), image_size=48, resize_method="bicubic", crop_rule="v1")
    np.testing.assert_array_equal(out.numpy(), expected_eval(odd, 48, window, "bicubic"))


def test_centre_crop_window_official_numbers():
    shape = tf.constant([375, 500, 3])
    np.testing.assert_array_equal(preprocessing.centre_crop_window(224, True)(shape).numpy(), [24, 86, 328, 328])
    np.testing.assert_array_equal(preprocessing.centre_crop_window(224, False)(shape).numpy(), [23, 86, 328, 328])


def test_crop_and_flip_only_path_with_full_area_is_resize_or_its_mirror(photo):
    encoded = tf.io.encode_png(photo)
    whole = expected_eval(photo, 24, (0, 0, 120, 160))
    outs = [preprocessing.train_image(encoded, seed(s), image_size=24, augment="none", randaug_magnitude=0.0,
                                      area_range=(1.0, 1.0)).numpy() for s in range(8)]
    assert {o.tobytes() for o in outs} == {whole.tobytes(), whole[:, ::-1].tobytes()}


# ---------------------------------------------------------------------------------------------------------
# Real photos vs the independent reference: official decode_image (full resolution) -> crop -> resize.
# ---------------------------------------------------------------------------------------------------------

MIN_SHARE_WITHIN_ONE_LEVEL = 0.999


def reference_train_window(data: bytes, seed: tf.Tensor, area_range=(0.05, 1.0)) -> tuple[int, int, int, int]:
    """The official V2 crop (sample_distorted_bounding_box, aspect 0.75-1.33, 100 attempts) with the crop seed."""
    crop_seed = tf.random.experimental.stateless_split(seed, num=3)[0]
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.io.extract_jpeg_shape(data), tf.zeros([1, 0, 4]), seed=crop_seed, min_object_covered=0.0,
        aspect_ratio_range=(0.75, 1.33), area_range=area_range, max_attempts=100,
        use_image_if_no_bounding_boxes=True)
    return int(begin[0]), int(begin[1]), int(size[0]), int(size[1])


def assert_close_to_reference(ours: np.ndarray, reference: np.ndarray, what: str) -> None:
    """ours within 1 grey level of the float reference on >= 99.9% of values (uint8: overshoot is clipped)."""
    assert ours.shape == reference.shape, what
    within = np.abs(ours.astype(np.float32) - np.clip(reference, 0.0, 255.0)) <= 1.0
    assert within.mean() >= MIN_SHARE_WITHIN_ONE_LEVEL, f"{what}: only {within.mean():.4f} within 1 level"


@pytest.mark.parametrize("name", sorted(photos.SIZES))
def test_eval_images_of_real_photos_equal_the_full_resolution_reference(name):
    data = photos.photo_bytes()[name]
    for size, crop_rule, method in [(224, "v2", "bilinear"), (384, "v2", "bilinear"), (480, "v2", "bilinear"),
                                    (240, "v1", "bicubic"), (300, "v1", "bicubic")]:
        ours = preprocessing.eval_image(tf.constant(data), image_size=size, resize_method=method,
                                        crop_rule=crop_rule).numpy()
        reference = eval_reference.eval_image(eval_reference.decode(data), size, crop_rule, method)
        assert_close_to_reference(ours, reference, f"{name} eval {size} px {crop_rule}")


@pytest.mark.parametrize("name", sorted(photos.SIZES))
def test_random_train_crops_of_real_photos_equal_the_full_resolution_reference(name):
    data = photos.photo_bytes()[name]
    full = tf.io.decode_jpeg(data, channels=3).numpy()
    for index, size in enumerate((128, 160, 192, 256, 300, 384)):
        for seed_value in range(3):
            seed = tf.constant([seed_value, index], tf.int64)
            ours = preprocessing.train_image(tf.constant(data), seed, image_size=size, augment="none",
                                             randaug_magnitude=0.0, random_flip=False).numpy()
            top, left, height, width = reference_train_window(data, seed)
            reference = eval_reference.resize_bilinear(full[top:top + height, left:left + width], size)
            assert_close_to_reference(ours, reference, f"{name} train {size} px seed {seed_value}")


@pytest.mark.parametrize("name", ["small", "landscape", "grey"])
def test_jpeg_window_decode_has_the_pixels_of_the_whole_image_decode(name):
    data = photos.photo_bytes()[name]
    full = tf.io.decode_jpeg(data, channels=3).numpy()
    rng = np.random.default_rng(0)
    for _ in range(20):
        height, width = rng.integers(8, full.shape[0] + 1), rng.integers(8, full.shape[1] + 1)
        top, left = rng.integers(0, full.shape[0] - height + 1), rng.integers(0, full.shape[1] - width + 1)
        window = tf.constant([top, left, height, width], tf.int32)
        ours = preprocessing.decode_window(data, lambda shape, window=window: window, output_size=8).numpy()
        np.testing.assert_array_equal(ours, full[top:top + height, left:left + width])


@pytest.mark.parametrize(("height", "width", "output", "scale"), [
    (40, 40, 64, 1),       # smaller than the output: full resolution (never 1/8)
    (127, 500, 64, 1),     # one side under 2x
    (128, 128, 64, 2),
    (300, 256, 64, 4),
    (511, 2000, 64, 4),
    (512, 513, 64, 8),
    (4000, 4000, 64, 8),   # 8 is the coarsest libjpeg scale
])
def test_jpeg_decode_scale_needs_both_sides_at_least_twice_the_output(height, width, output, scale):
    window = tf.constant([3, 5, height, width], tf.int32)
    assert int(preprocessing.jpeg_decode_scale(window, output)) == scale


def reference_scaled_decode(data: bytes, window: tuple[int, int, int, int], scale: int) -> np.ndarray:
    """libjpeg's DCT-scaled decode of the whole image, then the window on the scaled grid."""
    top, left, height, width = (value // scale for value in window)
    return tf.io.decode_jpeg(data, channels=3, ratio=scale).numpy()[top:top + height, left:left + width]


def test_opt_in_downscale_only_for_windows_twice_the_output_on_both_sides():
    data = photos.photo_bytes()["large"]  # 1400 x 1050
    full = tf.io.decode_jpeg(data, channels=3).numpy()
    scaled_by = {}
    for index in range(24):
        seed = tf.constant([index, 7], tf.int64)
        size = (128, 192, 256, 300)[index % 4]
        window = reference_train_window(data, seed)
        scale = max([1] + [s for s in (2, 4, 8) if min(window[2:]) >= s * size])
        ours = preprocessing.train_image(tf.constant(data), seed, image_size=size, augment="none",
                                         randaug_magnitude=0.0, random_flip=False, jpeg_downscale=True).numpy()
        reference = eval_reference.resize_bilinear(reference_scaled_decode(data, window, scale), size)
        assert_close_to_reference(ours, reference, f"window {window} at {size} px, scale {scale}")
        scaled_by[scale] = scaled_by.get(scale, 0) + 1
    assert set(scaled_by) == {1, 2, 4}, scaled_by  # every case met (8 needs windows >= 1024 px at 128)
    # At the 2x boundary of the whole 1050-row image: 525 px decodes at 1/2, 526 px at full resolution.
    at_half = preprocessing.eval_image(data, image_size=525, crop_rule="full", jpeg_downscale=True).numpy()
    half_reference = eval_reference.resize_bilinear(reference_scaled_decode(data, (0, 0, 1050, 1400), 2), 525)
    assert_close_to_reference(at_half, half_reference, "525 px, 1/2 scale")
    above = preprocessing.eval_image(data, image_size=526, crop_rule="full", jpeg_downscale=True).numpy()
    assert_close_to_reference(above, eval_reference.resize_bilinear(full, 526), "526 px, full resolution")


def test_jpeg_downscale_option_reaches_the_train_and_eval_iterators(photo_jpegs, tmp_path):
    """Whole 1400x1050 image at 64 px: official = full-resolution decode; opt-in = 1/8 scale (1050 >= 8 * 64)."""
    for split in ("train", "eval"):
        (tmp_path / split / "only").mkdir(parents=True)
        shutil.copy(photo_jpegs["large"], tmp_path / split / "only" / "large.jpg")
    common = dict(dataset=f"folder:{tmp_path}", image_size=64, global_batch_size=1, process_index=0,
                  process_count=1)

    def first_images(jpeg_downscale: bool) -> list[np.ndarray]:
        train = input_pipeline.train_host_batches(
            split="train", randaug_magnitude=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, seed=0, augment="none",
            area_range=(1.0, 1.0), random_flip=False, jpeg_downscale=jpeg_downscale, **common)
        evaluation = input_pipeline.eval_host_batches(split="eval", crop_rule="full", jpeg_downscale=jpeg_downscale,
                                                      **common)
        return [next(iter(batches))["image"][0] for batches in (train, evaluation)]

    data = photos.photo_bytes()["large"]
    official = eval_reference.resize_bilinear(eval_reference.decode(data), 64)
    eighth = eval_reference.resize_bilinear(reference_scaled_decode(data, (0, 0, 1050, 1400), 8), 64)
    for image in first_images(jpeg_downscale=False):
        assert_close_to_reference(image, official, "official decode")
    for image in first_images(jpeg_downscale=True):
        assert_close_to_reference(image, eighth, "opt-in 1/8 decode")
