"""from_keras: our logits equal keras.applications' on randomised, input-sensitive models; files, errors, CLI."""

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import traverse_util  # noqa: E402

from efficientnetv2_jax import checkpoint  # noqa: E402
from efficientnetv2_jax.convert import from_keras  # noqa: E402
from efficientnetv2_jax.convert.__main__ import main as convert_main  # noqa: E402
from efficientnetv2_jax.models import create_model, normalize_images  # noqa: E402

IMAGE_SIZE = 64
NUM_CLASSES = 10
CONSTRUCTORS = {"b0": keras.applications.EfficientNetV2B0, "s": keras.applications.EfficientNetV2S}


def _randomise_and_calibrate(model, images: np.ndarray, rng: np.random.Generator) -> None:
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
def _keras_case(short: str):
    """(Keras model, two batches of different images, Keras logits for each), built once per test module."""
    rng = np.random.default_rng(0)
    model = CONSTRUCTORS[short](weights=None, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), classes=NUM_CLASSES,
                                classifier_activation=None)
    images = rng.uniform(0, 255, (8, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    _randomise_and_calibrate(model, images, rng)
    batches = (images[:4], images[4:])
    return model, batches, tuple(np.asarray(model(x, training=False)) for x in batches)


@functools.lru_cache(maxsize=None)
def _our_logits_fn(short: str):
    """Jitted logits of our model on raw [0, 255] images (normalised the official way)."""
    model = create_model(short, num_classes=NUM_CLASSES)
    return jax.jit(lambda variables, x: model.apply(variables, normalize_images(x, short), train=False))


def _max_diff(variables, short, batches, keras_logits) -> float:
    logits_fn = _our_logits_fn(short)
    return max(float(np.abs(np.asarray(logits_fn(variables, x)) - k).max()) for x, k in zip(batches, keras_logits))


@pytest.mark.parametrize("short", ["b0", "s"])
def test_logits_match_keras(short):
    model, batches, keras_logits = _keras_case(short)
    variables = from_keras(model)  # Variant inferred from the Keras model's name.
    input_effect = float(np.abs(keras_logits[0] - keras_logits[1]).max())
    assert input_effect > 0.3 * float(np.abs(keras_logits[0]).max()), "Keras logits barely depend on the input"
    tolerance = 1e-3 * input_effect
    assert _max_diff(variables, short, batches, keras_logits) < tolerance

    # The comparison is sensitive to a classic mapping bug: BN scale and bias swapped in one layer.
    swapped = jax.tree.map(np.copy, variables)
    stem_bn = swapped["params"]["stem"]["bn"]
    stem_bn["scale"], stem_bn["bias"] = stem_bn["bias"], stem_bn["scale"]
    assert _max_diff(swapped, short, batches, keras_logits) > 100 * tolerance


def _assert_same_variables(a, b):
    flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg="/".join(key))


@functools.lru_cache(maxsize=None)
def _converted_b0():
    return from_keras(_keras_case("b0")[0])


def test_keras_file_route_equals_model_route(tmp_path):
    model, _, _ = _keras_case("b0")
    path = tmp_path / "b0.keras"
    model.save(path)
    _assert_same_variables(from_keras(str(path), name="efficientnetv2-b0"), _converted_b0())


def test_headless_renamed_model_inferred_from_block_count(tmp_path):
    model = keras.applications.EfficientNetV2B0(weights=None, include_top=False)
    model.name = "my_backbone"
    variables = from_keras(model)
    assert "classifier" not in variables["params"]
    expected = jax.eval_shape(create_model("b0", num_classes=0).init, jax.random.key(0), np.zeros((1, 32, 32, 3)))
    assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, dict(expected))


def test_shape_mismatch_names_keras_layer_and_our_path():
    model, _, _ = _keras_case("b0")
    with pytest.raises(ValueError, match=r"stem_conv/kernel.*params/stem/conv/kernel"):
        from_keras(model, name="efficientnetv2-s")


def test_errors_for_xl_unknown_name_and_file_without_name(tmp_path):
    model, _, _ = _keras_case("b0")
    with pytest.raises(ValueError, match="no Keras port.*TF checkpoint"):
        from_keras(model, name="efficientnetv2-xl")
    with pytest.raises(ValueError, match="valid choices"):
        from_keras(model, name="efficientnetv2-b9")
    with pytest.raises(ValueError, match="needs the variant name"):
        from_keras(str(tmp_path / "x.weights.h5"))


def test_cli_round_trip_through_weights_file(tmp_path):
    model, batches, keras_logits = _keras_case("b0")
    weights = tmp_path / "b0.weights.h5"
    model.save_weights(weights)
    output = tmp_path / "converted"
    assert convert_main(["keras", "--model", "b0", "--weights", str(weights), "--output", str(output)]) == 0
    restored = checkpoint.restore_variables(str(output))
    assert checkpoint.restore_metadata(str(output))["num_classes"] == NUM_CLASSES
    _assert_same_variables(restored, _converted_b0())
    input_effect = float(np.abs(keras_logits[0] - keras_logits[1]).max())
    assert _max_diff(restored, "b0", batches, keras_logits) < 1e-3 * input_effect


@pytest.mark.parametrize("model_name", ["b9", "xl"])
def test_cli_bad_model_exits_2(tmp_path, model_name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["keras", "--model", model_name, "--weights", "w.h5", "--output", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "efficientnetv2-b0" in capsys.readouterr().err
