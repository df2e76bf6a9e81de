"""Export: the SavedModel loaded back in TensorFlow reproduces the JAX logits/features of an independent reference
(tests/eval_reference.py: NumPy crop and resize) on real photos, at several sizes and with every crop rule."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_sample_images

import eval_reference
from efficientnetv2_jax import export, inference, predict
from inference_checkpoint import tiny_config, write_tiny_checkpoint

RANDOM_OP_MARKERS = ("Random", "Multinomial", "Dropout")
EXPORT_SIZE = 96


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ckpt"))
    write_tiny_checkpoint(workdir, tiny_config(eval_image_size=EXPORT_SIZE, crop_rule="v2"))
    loaded = inference.load_checkpoint(workdir)
    output = str(tmp_path_factory.mktemp("export") / "saved_model")
    assert export.main(["--checkpoint", workdir, "--output", output, "--platforms", "cpu"]) == 0
    return loaded, tf.saved_model.load(output)


@pytest.fixture(scope="module")
def decoded_photos(photo_jpegs) -> dict[str, np.ndarray]:
    """The shared real photos (500x375, 375x500, 120x90, 1400x1050, grey) as uint8 RGB."""
    return {name: eval_reference.decode(path.read_bytes()) for name, path in photo_jpegs.items()}


def reference_outputs(loaded, images: np.ndarray, features: bool = False) -> np.ndarray:
    """The JAX model on the NumPy eval image of each decoded image (the checkpoint's size, rule and resize)."""
    prep = loaded.preprocessing
    batch = np.stack([eval_reference.as_uint8(eval_reference.eval_image(image, prep.image_size, prep.crop_rule,
                                                                        prep.resize_method)) for image in images])
    return np.asarray(jax.jit(loaded.logits_fn(features=features))(loaded.variables, batch))


def assert_logits_match(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 1e-3 * np.max(np.abs(want))
    np.testing.assert_array_equal(np.argmax(got, -1), np.argmax(want, -1))  # Top-1 counted by hand.


def test_serving_signature_matches_the_reference_on_real_photos(exported, decoded_photos):
    loaded, saved = exported
    for name in ("landscape", "large", "grey"):  # Each call costs seconds; every photo's pixels: the test below.
        batch = np.stack([decoded_photos[name], decoded_photos[name][:, ::-1]])  # The photo and its mirror.
        outputs = saved.signatures["serving_default"](images=tf.constant(batch))
        want = reference_outputs(loaded, batch)
        assert outputs["logits"].shape == (2, 10), name
        assert_logits_match(outputs["logits"].numpy(), want)
        np.testing.assert_allclose(outputs["probabilities"].numpy(), eval_reference.softmax(outputs["logits"].numpy()),
                                   atol=1e-6)


@pytest.mark.parametrize(("size", "crop_rule", "resize_method"), [
    (96, "v2", "bilinear"),    # the saved model's: centre crop below 320 px
    (320, "v2", "bilinear"),   # V2 from 320 px: the whole image
    (224, "v1", "bicubic"),    # V1 (B0-B3): centre crop, offsets rounded up, TF1 bicubic
    (80, "full", "bilinear"),  # finetune eval: the whole image
])
def test_preprocessing_of_every_size_and_crop_rule_is_the_reference_image(decoded_photos, size, crop_rule,
                                                                         resize_method):
    preprocess = export.make_tf_preprocessing(inference.EvalPreprocessing(size, resize_method, crop_rule))
    for name, image in decoded_photos.items():
        ours = preprocess(tf.constant(image[None])).numpy()[0].astype(int)
        want = eval_reference.as_uint8(eval_reference.eval_image(image, size, crop_rule, resize_method)).astype(int)
        assert (np.abs(ours - want) <= 1).mean() >= 0.999, f"{name} at {size} px, {crop_rule}"


def test_feature_vector_has_the_head_width_and_matches_the_reference(exported, decoded_photos):
    loaded, saved = exported
    images = decoded_photos["portrait"][None]
    features = saved.signatures["feature_vector"](images=tf.constant(images))["feature_vector"].numpy()
    assert export.feature_width(loaded) == 320  # round_filters(1280, 0.25)
    assert features.shape == (1, export.feature_width(loaded))
    want = reference_outputs(loaded, images, features=True)
    assert np.max(np.abs(features - want)) <= 1e-3 * np.max(np.abs(want))


def test_saved_model_agrees_with_predict_on_a_jpeg(exported):
    """predict decodes the JPEG file itself; the SavedModel gets the decoded pixels: same eval image, same logits."""
    loaded, saved = exported
    flower = [path for path in load_sample_images().filenames if path.endswith("flower.jpg")]
    from_predict = jax.jit(loaded.logits_fn())(loaded.variables, predict.load_images(flower, loaded.preprocessing))
    with open(flower[0], "rb") as file:
        pixels = eval_reference.decode(file.read())
    from_saved_model = saved.signatures["serving_default"](images=tf.constant(pixels[None]))["logits"].numpy()
    assert_logits_match(from_saved_model, np.asarray(from_predict))


def _op_types(graph_def: tf.compat.v1.GraphDef) -> set[str]:
    """Every op type in a graph and in the functions of its library."""
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types |= {node.op for node in function.node_def}
    return types


def test_inference_only_no_random_ops_no_state_updates(exported):
    loaded, saved = exported
    for name in ("serving_default", "feature_vector"):
        ops = _op_types(saved.signatures[name].graph.as_graph_def())
        assert "XlaCallModule" in ops  # The network itself, serialised as StableHLO.
        assert not [op for op in ops if any(marker in op for marker in RANDOM_OP_MARKERS)], ops
        assert not [op for op in ops if op.startswith("Assign")], ops
    images = np.zeros((1, 32, 32, 3), np.uint8)
    jaxpr = str(jax.make_jaxpr(loaded.logits_fn())(loaded.variables, images))
    assert not [word for word in ("random", "threefry", "rng") if word in jaxpr]


def test_bad_inputs_are_one_line_exit_2(tmp_path, capsys):
    assert export.main(["--checkpoint", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert export.main(["--checkpoint", str(tmp_path), "--output", str(tmp_path / "o"), "--platforms", "gpu"]) == 2
    assert "valid: cpu, cuda, tpu" in capsys.readouterr().err
