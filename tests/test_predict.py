"""predict: top-5 classes with names and probabilities for real photos (JPEG and PNG of any size)."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_sample_images

from efficientnetv2_jax import inference, predict
from efficientnetv2_jax.data.preprocessing import eval_image
from inference_checkpoint import tiny_config, write_tiny_checkpoint

LINE = re.compile(r"^  ([1-5])\. +([0-9.]+)%  (.+)$")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("ckpt"))
    write_tiny_checkpoint(directory, tiny_config(eval_image_size=48, crop_rule="v2"))
    return directory


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """scikit-learn's two sample JPEGs (427x640) and a 97x130 PNG cut from one of them."""
    jpegs = list(load_sample_images().filenames)
    png = tmp_path_factory.mktemp("png") / "crop.png"
    png.write_bytes(tf.io.encode_png(load_sample_images().images[1][100:197, 200:330]).numpy())
    return jpegs + [str(png)]


def test_prints_five_named_classes_per_image_matching_the_model(workdir, photos, capsys):
    assert predict.main(["--checkpoint", workdir] + photos) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("efficientnetv2-b0, 48x48 px, v2 crop, bilinear resize")
    loaded = inference.load_checkpoint(workdir)
    prep = loaded.preprocessing
    for index, path in enumerate(photos):
        block = out[1 + 6 * index: 7 + 6 * index]
        assert block[0] == path
        parsed = [LINE.match(line).groups() for line in block[1:]]
        assert [int(rank) for rank, _, _ in parsed] == [1, 2, 3, 4, 5]
        image = eval_image(tf.io.read_file(path), image_size=48, resize_method=prep.resize_method,
                           crop_rule=prep.crop_rule).numpy()
        probabilities = np.asarray(jax.nn.softmax(loaded.logits_fn()(loaded.variables, image[None])[0]))
        best = np.argsort(-probabilities)[:5]
        assert [name for _, _, name in parsed] == [str(i) for i in best]  # Digits' class names are '0'..'9'.
        np.testing.assert_allclose([float(p) for _, p, _ in parsed], 100 * probabilities[best], atol=0.006)


def test_image_size_flag_and_top_k(workdir, photos, capsys):
    assert predict.main(["--checkpoint", workdir, "--image-size", "40", "--top-k", "3", photos[0]]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "40x40 px" in out[0] and len(out) == 1 + 4


def test_imagenet_names_come_from_the_tfds_label_file():
    names = inference.imagenet1k_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0].startswith("n01440764") and names[-1].startswith("n15075141")


@pytest.mark.parametrize("make_args, message", [
    (lambda d, tmp: ["--checkpoint", str(tmp / "missing"), "x.jpg"], "does not exist"),
    (lambda d, tmp: ["--checkpoint", d, "--model", "b9", "x.jpg"], "Unknown model"),
    (lambda d, tmp: ["--checkpoint", d, "--model", "s", "x.jpg"], "not efficientnetv2-s"),
    (lambda d, tmp: ["--checkpoint", d, str(tmp / "missing.jpg")], "Cannot read image"),
    (lambda d, tmp: ["--checkpoint", d, __file__], "Cannot read image"),
])
def test_bad_input_is_one_line_with_exit_code_2(workdir, tmp_path, capsys, make_args, message):
    assert predict.main(make_args(workdir, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
