"""from_keras: our logits equal keras.applications' on randomised, input-sensitive models; files, errors, CLI."""

import functools
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import traverse_util  # noqa: E402

from efficientnetv2_jax import checkpoint, predict  # noqa: E402
from efficientnetv2_jax.convert import from_keras  # noqa: E402
from efficientnetv2_jax.convert.__main__ import main as convert_main  # noqa: E402
from efficientnetv2_jax.models import create_model  # noqa: E402
from keras_reference import NUM_CLASSES, keras_case, max_diff  # noqa: E402

@pytest.mark.parametrize("short", ["b0", "s"])
def test_logits_match_keras(short):
    model, batches, keras_logits = keras_case(short)
    variables = from_keras(model)  # Variant inferred from the Keras model's name.
    input_effect = float(np.abs(keras_logits[0] - keras_logits[1]).max())
    assert input_effect > 0.3 * float(np.abs(keras_logits[0]).max()), "Keras logits barely depend on the input"
    tolerance = 1e-3 * input_effect
    assert max_diff(variables, short, batches, keras_logits) < tolerance

    # The comparison is sensitive to a classic mapping bug: BN scale and bias swapped in one layer.
    swapped = jax.tree.map(np.copy, variables)
    stem_bn = swapped["params"]["stem"]["bn"]
    stem_bn["scale"], stem_bn["bias"] = stem_bn["bias"], stem_bn["scale"]
    assert max_diff(swapped, short, batches, keras_logits) > 100 * tolerance


def _assert_same_variables(a, b):
    flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for key in flat_a:
        np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg="/".join(key))


@functools.lru_cache(maxsize=None)
def _converted_b0():
    return from_keras(keras_case("b0")[0])


def test_keras_file_route_equals_model_route(tmp_path):
    model, _, _ = keras_case("b0")
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
    model, _, _ = keras_case("b0")
    with pytest.raises(ValueError, match=r"stem_conv/kernel.*params/stem/conv/kernel"):
        from_keras(model, name="efficientnetv2-s")


def test_errors_for_xl_unknown_name_and_file_without_name(tmp_path):
    model, _, _ = keras_case("b0")
    with pytest.raises(ValueError, match="no Keras port.*convert tf"):
        from_keras(model, name="efficientnetv2-xl")
    with pytest.raises(ValueError, match="valid choices"):
        from_keras(model, name="efficientnetv2-b9")
    with pytest.raises(ValueError, match="needs the variant name"):
        from_keras(str(tmp_path / "x.weights.h5"))


def test_cli_round_trip_through_weights_file(tmp_path):
    model, batches, keras_logits = keras_case("b0")
    weights = tmp_path / "b0.weights.h5"
    model.save_weights(weights)
    output = tmp_path / "converted"
    assert convert_main(["keras", "--model", "b0", "--weights", str(weights), "--output", str(output)]) == 0
    restored = checkpoint.restore_variables(str(output))
    assert checkpoint.restore_metadata(str(output))["num_classes"] == NUM_CLASSES
    _assert_same_variables(restored, _converted_b0())
    input_effect = float(np.abs(keras_logits[0] - keras_logits[1]).max())
    assert max_diff(restored, "b0", batches, keras_logits) < 1e-3 * input_effect


@pytest.mark.parametrize("model_name", ["b9", "xl"])
def test_cli_bad_model_exits_2(tmp_path, model_name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["keras", "--model", model_name, "--weights", "w.h5", "--output", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "efficientnetv2-b0" in capsys.readouterr().err


def test_wrong_variant_weights_file_is_one_line_naming_the_keras_layer_and_our_parameter(tmp_path, capsys):
    model, _, _ = keras_case("b0")
    weights = tmp_path / "b0.weights.h5"
    model.save_weights(weights)
    runs = (lambda: convert_main(["keras", "--model", "s", "--weights", str(weights), "--output",
                                  str(tmp_path / "o")]),
            lambda: predict.main(["--weights", str(weights), "--model", "s", __file__]))
    for run in runs:  # Keras itself prints ~140 KB here: a warning per skipped container and whole weight arrays.
        assert run() == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and len(err) < 600, err[:2000]
        assert ("Keras layer stem_conv (weight stem_conv/kernel) is (3, 3, 3, 32) in the file but (3, 3, 3, 24) in "
                "the model, our params/stem/conv/kernel") in err
