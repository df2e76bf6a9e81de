"""Each RandAugment/AutoAugment op moves pixels the way the official (PIL-equivalent) op does."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from efficientnetv2_jax.data import image_ops
from efficientnetv2_jax.data.autoaugment import POLICY_V0, autoaugment_v0
from efficientnetv2_jax.data.randaugment import RANDAUGMENT_OPS, randaugment

RA = image_ops.RANDAUGMENT_CONSTANTS


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(0, 9, size=(40, 48, 3)), axis=1) % 200
    return (smooth + rng.integers(20, 40, size=(40, 48, 3))).astype(np.uint8)


def level_op(name, image, level, seed=(3, 4), consts=RA):
    return image_ops.apply_level_op(name, tf.constant(image), level, tf.constant(seed, tf.int64), consts).numpy()


def shifted(image, pixels, axis):
    """Reference translate: out[i] = image[i + pixels] along axis, 128 outside."""
    out = np.full_like(image, 128)
    size = image.shape[axis]
    for i in range(size):
        if 0 <= i + pixels < size:
            index = [slice(None)] * 3
            index[axis] = i
            source = list(index)
            source[axis] = i + pixels
            out[tuple(index)] = image[tuple(source)]
    return out


def test_all_sixteen_ops_keep_shape_and_dtype(image):
    assert len(RANDAUGMENT_OPS) == 16 and set(RANDAUGMENT_OPS) == set(image_ops.LEVEL_OPS)
    for name in RANDAUGMENT_OPS:
        out = level_op(name, image, 7.0)
        assert out.shape == image.shape and out.dtype == np.uint8, name


@pytest.mark.parametrize("name,axis", [("TranslateX", 1), ("TranslateY", 0)])
def test_translate_moves_by_official_absolute_pixel_count(image, name, axis):
    # RandAugment: 100*M/10 pixels regardless of image size; M=1.5 -> 15 px, random sign.
    outputs = {level_op(name, image, 1.5, seed=(s, 0)).tobytes() for s in range(12)}
    expected = {shifted(image, 15, axis).tobytes(), shifted(image, -15, axis).tobytes()}
    assert outputs == expected
    # AutoAugment constant 250: level 1 -> 25 px.
    aa = level_op(name, image, 1, consts=image_ops.AUTOAUGMENT_CONSTANTS)
    assert aa.tobytes() in {shifted(image, 25, axis).tobytes(), shifted(image, -25, axis).tobytes()}


@pytest.mark.parametrize("magnitude,threshold", [(3.0, 76), (5.0, 128), (9.0, 230), (10.0, 0), (15.0, 128)])
def test_solarize_threshold_with_official_uint8_wrap(image, magnitude, threshold):
    out = level_op("Solarize", image, magnitude)
    np.testing.assert_array_equal(out, np.where(image < threshold, image, 255 - image))
    if threshold:
        pil = np.asarray(ImageOps.solarize(Image.fromarray(image), threshold))
        np.testing.assert_array_equal(out, pil)


@pytest.mark.parametrize("magnitude,bits", [(5.0, 2), (10.0, 4), (15.0, 6), (20.0, 8), (1.0, 1)])
def test_posterize_keeps_official_bit_count(image, magnitude, bits):
    out = level_op("Posterize", image, magnitude)
    np.testing.assert_array_equal(out, image & np.uint8((0xFF << (8 - bits)) & 0xFF))
    np.testing.assert_array_equal(out, np.asarray(ImageOps.posterize(Image.fromarray(image), bits)))


def test_rotate_angle_and_centre(image):
    square = image[:33, :33]
    # Level 30 -> +-90 degrees about the centre: exactly a quarter turn one way or the other.
    outputs = {level_op("Rotate", square, 30.0, seed=(s, 1)).tobytes() for s in range(12)}
    assert outputs == {np.rot90(square, 1).tobytes(), np.rot90(square, -1).tobytes()}
    # Level 10 -> 30 degrees: corners are filled with 128, the centre pixel stays.
    out = level_op("Rotate", image, 10.0)
    assert (out[0, 0] == 128).all() and (out[-1, -1] == 128).all()


def reference_projective(image, matrix):
    transform = tf.constant([list(matrix) + [0.0, 0.0]], tf.float32)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.constant(image)[None], transforms=transform, output_shape=image.shape[:2], fill_value=128.0,
        interpolation="NEAREST", fill_mode="CONSTANT")[0].numpy()


@pytest.mark.parametrize("matrix", [(1.0, 0.27, 0.0, 0.0, 1.0, 0.0), (1.0, 0.0, 0.0, -0.19, 1.0, 0.0),
                                    (0.866, -0.5, 13.7, 0.5, 0.866, -8.2)])
def test_nearest_gather_warp_equals_tf_projective_transform(image, matrix):
    ours = image_ops.affine_nearest(tf.constant(image), tf.constant(matrix, tf.float32)).numpy()
    mismatched = np.mean(np.any(ours != reference_projective(image, matrix), axis=-1))
    assert mismatched < 0.005  # only exact .5 rounding ties may differ


def test_shear_level_mapping(image):
    # M=10 -> shear 0.3 with random sign: output(y, x) = image(y, x + 0.3 y) for ShearX.
    for name, matrix in (("ShearX", (1.0, 0.3, 0.0, 0.0, 1.0, 0.0)), ("ShearY", (1.0, 0.0, 0.0, 0.3, 1.0, 0.0))):
        negative = tuple(-v if v == 0.3 else v for v in matrix)
        outputs = {level_op(name, image, 10.0, seed=(s, 2)).tobytes() for s in range(12)}
        references = [reference_projective(image, m) for m in (matrix, negative)]
        assert len(outputs) == 2
        for out in outputs:
            out = np.frombuffer(out, np.uint8).reshape(image.shape)
            assert min(np.mean(out != ref) for ref in references) < 0.005


def test_cutout_square_of_official_size():
    blank = np.zeros((64, 64, 3), np.uint8)
    pad = int(5.0 / 10 * 40)  # M=5 -> pad 20 -> a 40x40 square (clipped at the borders)
    sides = set()
    for s in range(20):
        filled = np.all(level_op("Cutout", blank, 5.0, seed=(s, 5)) == 128, axis=-1)
        rows, cols = np.nonzero(filled.any(axis=1))[0], np.nonzero(filled.any(axis=0))[0]
        assert filled.sum() == len(rows) * len(cols)  # a rectangle
        assert len(rows) <= 2 * pad and len(cols) <= 2 * pad
        sides.update([len(rows), len(cols)])
    assert 2 * pad in sides
    aa = np.all(level_op("Cutout", np.zeros((300, 300, 3), np.uint8), 3, consts=image_ops.AUTOAUGMENT_CONSTANTS,
                         seed=(0, 0)) == 128, axis=-1)
    assert max(aa.any(axis=1).sum(), aa.any(axis=0).sum()) <= 60


def test_solarize_add_amount(image):
    out = level_op("SolarizeAdd", image, 10.0).astype(int)  # add int(10/10*110) = 110 below 128
    expected = np.where(image < 128, np.minimum(image.astype(int) + 110, 255), image)
    np.testing.assert_array_equal(out, expected)


def blend(degenerate, image, factor):
    degenerate = degenerate.astype(np.float32)
    return np.clip(degenerate + np.float32(factor) * (image.astype(np.float32) - degenerate), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("magnitude", [2.0, 10.0, 15.0])
def test_enhance_ops_use_official_factor(image, magnitude):
    factor = magnitude / 10 * 1.8 + 0.1
    np.testing.assert_array_equal(level_op("Brightness", image, magnitude), blend(np.zeros_like(image), image, factor))
    # Official contrast "mean" = pixel count / 256 = 40*48/256 -> 7.
    np.testing.assert_array_equal(level_op("Contrast", image, magnitude),
                                  blend(np.full_like(image, 40 * 48 // 256), image, factor))
    gray = tf.image.rgb_to_grayscale(tf.constant(image)).numpy()
    np.testing.assert_array_equal(level_op("Color", image, magnitude), blend(gray, image, factor))
    smooth = sum(image[1 + dy:39 + dy, 1 + dx:47 + dx].astype(np.float32) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    smooth = np.clip((smooth + 4 * image[1:39, 1:47].astype(np.float32)) / 13, 0, 255).astype(np.uint8)
    degenerate = image.copy()
    degenerate[1:39, 1:47] = smooth
    got = level_op("Sharpness", image, magnitude).astype(int)
    # A 1-level conv-vs-sum rounding difference in the smoothed image is scaled by |1 - factor| in the blend.
    assert np.abs(got - blend(degenerate, image, factor).astype(int)).max() <= 1 + abs(1 - factor)


def test_magnitude_five_enhance_is_identity(image):
    for name in ("Color", "Contrast", "Brightness", "Sharpness"):
        np.testing.assert_array_equal(level_op(name, image, 5.0), image)


def test_histogram_ops_match_pil(image):
    pil = Image.fromarray(image)
    np.testing.assert_array_equal(level_op("Equalize", image, 0.0), np.asarray(ImageOps.equalize(pil)))
    stretched = level_op("AutoContrast", image, 0.0)
    # PIL computes its LUT in float64, the official op in float32: at most 1 level apart.
    assert np.abs(stretched.astype(int) - np.asarray(ImageOps.autocontrast(pil)).astype(int)).max() <= 1
    low, high = image.min(axis=(0, 1)).astype(np.float32), image.max(axis=(0, 1)).astype(np.float32)
    scale = np.float32(255) / (high - low)
    expected = np.clip(image.astype(np.float32) * scale + (-low * scale), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(stretched, expected)
    np.testing.assert_array_equal(level_op("Invert", image, 0.0), 255 - image)
    flat = np.full((8, 8, 3), 77, np.uint8)
    np.testing.assert_array_equal(level_op("AutoContrast", flat, 0.0), flat)
    np.testing.assert_array_equal(level_op("Equalize", flat, 0.0), flat)


def test_randaugment_is_deterministic_per_seed(image):
    run = tf.function(lambda x, seed: randaugment(x, seed, magnitude=9.0, num_layers=2))
    x = tf.constant(image)
    first = run(x, tf.constant([5, 6], tf.int64)).numpy()
    np.testing.assert_array_equal(first, run(x, tf.constant([5, 6], tf.int64)).numpy())
    others = [run(x, tf.constant([5, s], tf.int64)).numpy() for s in range(7, 13)]
    assert any(not np.array_equal(first, other) for other in others)
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in others)
    with pytest.raises(ValueError, match="magnitude"):
        randaugment(x, tf.constant([1, 2], tf.int64), magnitude=-1.0)


def test_autoaugment_v0_policy_and_determinism(image):
    assert len(POLICY_V0) == 25 and all(len(sub) == 2 for sub in POLICY_V0)
    assert {name for sub in POLICY_V0 for name, _, _ in sub} <= set(image_ops.LEVEL_OPS)
    run = tf.function(autoaugment_v0)
    x = tf.constant(image)
    first = run(x, tf.constant([1, 1], tf.int64)).numpy()
    np.testing.assert_array_equal(first, run(x, tf.constant([1, 1], tf.int64)).numpy())
    assert any(not np.array_equal(first, run(x, tf.constant([1, s], tf.int64)).numpy()) for s in range(2, 8))


def test_unknown_op_names_choices(image):
    with pytest.raises(ValueError, match="Solarize"):
        level_op("Blur", image, 1.0)


@pytest.fixture
def recorded_ops(monkeypatch):
    """Replaces every op by a recorder (eager: switch_case and cond run only the chosen branch)."""
    calls = []

    def record(name, image, level, seed, consts):
        calls.append((name, level))
        return image

    monkeypatch.setattr(image_ops, "apply_level_op", record)
    return calls


def _within_binomial_bounds(count: int, trials: int, probability: float) -> bool:
    """Whether `count` is within 4 standard deviations of a Binomial(trials, probability) mean (the seeds are fixed,
    so this is deterministic; the bound only has to be loose enough for a correct sampler)."""
    mean, std = trials * probability, np.sqrt(trials * probability * (1 - probability))
    return abs(count - mean) <= 4 * std + 1e-9


def test_randaugment_picks_each_of_the_16_ops_uniformly_per_layer(recorded_ops):
    """Official: each of N layers draws one of the 16 ops uniformly and always applies it at magnitude M."""
    image = tf.zeros((4, 4, 3), tf.uint8)
    num_images = 600
    for s in range(num_images):
        randaugment(image, tf.constant([11, s], tf.int64), magnitude=7.0, num_layers=2)
    assert len(recorded_ops) == 2 * num_images and {level for _, level in recorded_ops} == {7.0}
    counts = {name: sum(1 for n, _ in recorded_ops if n == name) for name in RANDAUGMENT_OPS}
    assert all(_within_binomial_bounds(c, 2 * num_images, 1 / 16) for c in counts.values()), counts
    pairs = {tuple(n for n, _ in recorded_ops[i:i + 2]) for i in range(0, len(recorded_ops), 2)}
    assert len(pairs) > 150  # The two layers draw independently (16 x 16 = 256 possible pairs, 600 draws).


def test_autoaugment_picks_a_sub_policy_uniformly_and_applies_each_op_with_its_probability(recorded_ops):
    """Official v0: one of 25 sub-policies uniformly; each of its ops runs with its own probability at its level."""
    image = tf.zeros((4, 4, 3), tf.uint8)
    num_images = 1000
    for s in range(num_images):
        autoaugment_v0(image, tf.constant([12, s], tf.int64))
    expected = {}
    for sub_policy in POLICY_V0:
        for name, probability, level in sub_policy:
            expected[name, level] = expected.get((name, level), 0.0) + probability / len(POLICY_V0)
    observed = {op: sum(1 for call in recorded_ops if call == op) for op in expected}
    assert set(recorded_ops) <= set(expected)
    for op, rate in expected.items():
        assert _within_binomial_bounds(observed[op], num_images, rate), (op, observed[op], rate * num_images)
