"""Train/eval preprocessing: shapes, formats, determinism and the official eval crop rules."""

import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2_jax.data import preprocessing


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


def test_jpeg_crop_decode_matches_full_decode_and_downscale_is_close(photo):
    big = np.kron(photo, np.ones((4, 4, 1), np.uint8))  # 480x640, smooth
    encoded = tf.io.encode_jpeg(big, quality=95)
    full = preprocessing.eval_image(encoded, image_size=56, crop_rule="full", jpeg_downscale=False).numpy()
    scaled = preprocessing.eval_image(encoded, image_size=56, crop_rule="full", jpeg_downscale=True).numpy()
    assert np.abs(full.astype(int) - scaled.astype(int)).mean() < 3.0
    reference = expected_eval(tf.io.decode_jpeg(encoded).numpy(), 56, (0, 0, 480, 640))
    np.testing.assert_array_equal(full, reference)


def test_crop_and_flip_only_path_with_full_area_is_resize_or_its_mirror(photo):
    encoded = tf.io.encode_png(photo)
    whole = expected_eval(photo, 24, (0, 0, 120, 160))
    outs = [preprocessing.train_image(encoded, seed(s), image_size=24, augment="none", randaug_magnitude=0.0,
                                      area_range=(1.0, 1.0)).numpy() for s in range(8)]
    assert {o.tobytes() for o in outs} == {whole.tobytes(), whole[:, ::-1].tobytes()}
