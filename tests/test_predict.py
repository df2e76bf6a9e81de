"""predict: top-5 classes with names and probabilities for real photos (JPEG and PNG of any size), checked against
an independent reference (tests/eval_reference.py: NumPy crop and resize, softmax and ranking by hand)."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
import tensorflow as tf

import eval_reference
from efficientnetv2_jax import inference, predict
from inference_checkpoint import tiny_config, write_tiny_checkpoint

LINE = re.compile(r"^  ([1-5])\. +([0-9.]+)%  (.+)$")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("ckpt"))
    write_tiny_checkpoint(directory, tiny_config(eval_image_size=48, crop_rule="v2"))
    return directory


@pytest.fixture(scope="module")
def photos(photo_jpegs, tmp_path_factory):
    """The shared real-photo JPEGs (500x375, 375x500, 120x90, 1400x1050, grey) and a 97x130 PNG cut from one."""
    png = tmp_path_factory.mktemp("png") / "crop.png"
    crop = eval_reference.decode(photo_jpegs["portrait"].read_bytes())[100:197, 200:330]
    png.write_bytes(tf.io.encode_png(crop).numpy())
    return [str(path) for path in photo_jpegs.values()] + [str(png)]


def reference_images(paths: list[str], size: int) -> np.ndarray:
    """uint8 [N, size, size, 3]: the NumPy eval image of each file (V2 rule, bilinear), rounded to uint8."""
    images = []
    for path in paths:
        with open(path, "rb") as file:
            images.append(eval_reference.as_uint8(eval_reference.eval_image(eval_reference.decode(file.read()), size)))
    return np.stack(images)


@pytest.mark.parametrize("size", [48, 96, 224])
def test_images_are_the_reference_eval_images(workdir, photos, size):
    prep = inference.load_checkpoint(workdir, image_size=size).preprocessing
    ours, want = predict.load_images(photos, prep).astype(int), reference_images(photos, size).astype(int)
    assert ours.shape == want.shape == (len(photos), size, size, 3)
    for path, image, reference in zip(photos, ours, want):
        assert (np.abs(image - reference) <= 1).mean() >= 0.999, path


@pytest.mark.parametrize("size", [None, 96])
def test_prints_five_named_classes_per_image_matching_the_reference(workdir, photos, capsys, size):
    args = ["--checkpoint", workdir] + (["--image-size", str(size)] if size else []) + photos
    assert predict.main(args) == 0
    size = size or 48
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"efficientnetv2-b0, {size}x{size} px, v2 crop, bilinear resize")
    loaded = inference.load_checkpoint(workdir)
    logits = np.asarray(jax.jit(loaded.logits_fn())(loaded.variables, reference_images(photos, size)))
    for index, (path, row) in enumerate(zip(photos, logits)):
        block = out[1 + 6 * index: 7 + 6 * index]
        assert block[0] == path
        parsed = [LINE.match(line).groups() for line in block[1:]]
        assert [int(rank) for rank, _, _ in parsed] == [1, 2, 3, 4, 5]
        printed = [int(name) for _, _, name in parsed]  # Digits' class names are '0'..'9'.
        percent = 100 * eval_reference.softmax(row)
        assert printed[0] == int(np.argmax(row))  # Top-1 by hand from the logits.
        np.testing.assert_allclose([float(p) for _, p, _ in parsed], percent[printed], atol=0.006)
        assert min(percent[printed]) >= np.sort(percent)[-5] - 0.006  # A top-5 set up to ties.
    assert len(set(np.argmax(logits, -1))) > 1, "one top class for every photo: a swap would go unseen"


@pytest.mark.parametrize("jpeg_downscale", [False, True])
def test_images_follow_the_checkpoint_configs_jpeg_downscale(photos, jpeg_downscale):
    """1400x1050 JPEG, whole image at 64 px: full resolution, or 1/8 scale with the opt-in (1050 >= 8 * 64)."""
    config = tiny_config(eval_image_size=64, crop_rule="full")
    config.dataset.jpeg_downscale = jpeg_downscale
    prep = inference.eval_preprocessing("b0", config)
    large = [path for path in photos if path.endswith("large.jpg")]
    with open(large[0], "rb") as file:
        data = file.read()
    pixels = eval_reference.decode(data)
    if jpeg_downscale:  # libjpeg's 1/8 scale, the window aligned down to whole scaled pixels (1050 / 8 -> 131).
        pixels = tf.io.decode_jpeg(data, channels=3, ratio=8).numpy()[:1050 // 8, :1400 // 8]
    want = eval_reference.as_uint8(eval_reference.resize_bilinear(pixels, 64)).astype(int)
    assert (np.abs(predict.load_images(large, prep)[0].astype(int) - want) <= 1).mean() >= 0.999


def test_image_size_flag_and_top_k(workdir, photos, capsys):
    assert predict.main(["--checkpoint", workdir, "--image-size", "40", "--top-k", "3", photos[0]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "40x40 px" in out[0] and len(out) == 1 + 4


def test_imagenet_names_come_from_the_tfds_label_file():
    names = inference.imagenet1k_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0].startswith("n01440764") and names[-1].startswith("n15075141")


@pytest.mark.parametrize("make_args, message", [
    (lambda d, tmp: ["--checkpoint", str(tmp / "missing"), __file__], "does not exist"),
    (lambda d, tmp: ["--checkpoint", d, "--model", "b9", __file__], "Unknown model"),
    (lambda d, tmp: ["--checkpoint", d, "--model", "s", __file__], "not efficientnetv2-s"),
    (lambda d, tmp: ["--checkpoint", d, str(tmp / "missing.jpg")], "Cannot read image"),
    (lambda d, tmp: ["--checkpoint", d, __file__], "Cannot read image"),
])
def test_bad_input_is_one_line_with_exit_code_2(workdir, tmp_path, capsys, make_args, message):
    assert predict.main(make_args(workdir, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
