"""from_tf_checkpoint: official-name checkpoints (built from randomised Keras models) give Keras' logits; the EMA
shadows win; names and shapes cover every variant incl. XL; CLI; bad input."""

import re

import numpy as np
import pytest
import tensorflow as tf
from flax import traverse_util
from keras_reference import NUM_CLASSES, keras_case, max_diff

from efficientnetv2_jax import checkpoint
from efficientnetv2_jax.convert import from_tf_checkpoint
from efficientnetv2_jax.convert.__main__ import main as convert_main
from efficientnetv2_jax.convert.target import target_leaves
from efficientnetv2_jax.convert.tf_checkpoint import official_names
from efficientnetv2_jax.models import list_models

# Keras layer-name suffix -> official layer name, per block kind, as public converters of the official
# checkpoints map them (sebastian-sz/efficientnet-v2-keras scripts/convert_weights.py).
_MBCONV = {"expand_conv": "conv2d", "expand_bn": "tpu_batch_normalization", "dwconv2": "depthwise_conv2d",
           "bn": "tpu_batch_normalization_1", "se_reduce": "se/conv2d", "se_expand": "se/conv2d_1",
           "project_conv": "conv2d_1", "project_bn": "tpu_batch_normalization_2"}
_FUSED = {"expand_conv": "conv2d", "expand_bn": "tpu_batch_normalization", "project_conv": "conv2d_1",
          "project_bn": "tpu_batch_normalization_1"}
_FUSED_NO_EXPANSION = {"project_conv": "conv2d", "project_bn": "tpu_batch_normalization"}
_TOP = {"stem_conv": "stem/conv2d", "stem_bn": "stem/tpu_batch_normalization", "top_conv": "head/conv2d",
        "top_bn": "head/tpu_batch_normalization", "predictions": "head/dense"}
_BLOCK = re.compile(r"^(block\d+[a-z])_(.+)$")


def official_weights(model, model_name: str) -> dict[str, np.ndarray]:
    """The Keras model's weights under the official checkpoint names (depthwise kernels keep TF's layout)."""
    blocks = list(dict.fromkeys(m.group(1) for layer in model.layers if (m := _BLOCK.match(layer.name))))
    parts = {block: {m.group(2) for layer in model.layers if (m := _BLOCK.match(layer.name)) and m.group(1) == block}
             for block in blocks}
    weights = {}
    for layer in model.layers:
        if not layer.weights:
            continue
        match = _BLOCK.match(layer.name)
        if match is None:
            scope = _TOP[layer.name]
        else:
            block, part = match.groups()
            kind = _MBCONV if "dwconv2" in parts[block] else _FUSED if "expand_conv" in parts[block] else \
                _FUSED_NO_EXPANSION
            scope = f"blocks_{blocks.index(block)}/{kind[part]}"
        for weight in layer.weights:
            leaf = "depthwise_kernel" if scope.endswith("depthwise_conv2d") else weight.name
            weights[f"{model_name}/{scope}/{leaf}"] = np.asarray(weight.numpy(), np.float32)
    return weights


def write_checkpoint(prefix: str, tensors: dict[str, np.ndarray]) -> str:
    """A TF (V2 bundle) checkpoint holding exactly `tensors` under their names, as TF1's Saver writes them."""
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    return prefix


def training_checkpoint(directory, weights: dict[str, np.ndarray]) -> str:
    """Like an official training checkpoint: EMA shadows hold `weights`, the raw variables something else, plus
    RMSProp slots and global_step."""
    rng = np.random.default_rng(1)
    tensors = {"global_step": np.array(1000, np.int64)}
    for name, value in weights.items():
        tensors[name] = value * rng.uniform(0.5, 1.5, value.shape).astype(np.float32)  # Keeps variances > 0.
        tensors[name + "/ExponentialMovingAverage"] = value
        tensors[name + "/RMSProp"] = np.ones_like(value)
    directory.mkdir(parents=True, exist_ok=True)
    return write_checkpoint(str(directory / "model.ckpt-1000"), tensors)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """(checkpoint prefix, batches, Keras logits, input effect) for a randomised Keras B0 renamed officially."""
    model, batches, keras_logits = keras_case("b0")
    prefix = training_checkpoint(tmp_path_factory.mktemp("tf_ckpt") / "efficientnetv2-b0",
                                 official_weights(model, "efficientnetv2-b0"))
    input_effect = float(np.abs(keras_logits[0] - keras_logits[1]).max())
    assert input_effect > 0.3 * float(np.abs(keras_logits[0]).max()), "Keras logits barely depend on the input"
    return prefix, batches, keras_logits, input_effect


def test_official_checkpoint_gives_keras_logits_from_the_ema_shadows(case):
    prefix, batches, keras_logits, input_effect = case
    variables = from_tf_checkpoint(prefix.rsplit("/", 1)[0])  # The directory; variant and classes inferred.
    assert variables["params"]["classifier"]["kernel"].shape[-1] == NUM_CLASSES
    assert max_diff(variables, "b0", batches, keras_logits) < 1e-3 * input_effect
    raw = from_tf_checkpoint(prefix, ema=False)  # The raw (non-EMA) values differ on purpose.
    assert max_diff(raw, "b0", batches, keras_logits) > 0.1 * input_effect


def test_tf2_head_1_dense_name_imports_with_the_same_logits(case, tmp_path):
    """The official main.py under TF 2.x writes the classifier as `head_1/dense` (legacy name_scope('head'))."""
    prefix, batches, keras_logits, input_effect = case
    reader = tf.train.load_checkpoint(prefix)
    renamed = {n.replace("/head/dense/", "/head_1/dense/"): reader.get_tensor(n)
               for n in reader.get_variable_to_shape_map()}
    assert sum("/head_1/dense/" in n for n in renamed) == 6  # kernel, bias, each with EMA and RMSProp
    tf2_prefix = write_checkpoint(str(tmp_path / "tf2"), renamed)
    released, tf2 = from_tf_checkpoint(prefix), from_tf_checkpoint(tf2_prefix)
    assert tf2["params"]["classifier"]["kernel"].shape[-1] == NUM_CLASSES
    for path, value in traverse_util.flatten_dict(released).items():
        np.testing.assert_array_equal(traverse_util.flatten_dict(tf2)[path], value)
    assert max_diff(tf2, "b0", batches, keras_logits) < 1e-3 * input_effect
    raw = from_tf_checkpoint(tf2_prefix, ema=False)  # The EMA shadows of the renamed scope are found too.
    assert not np.array_equal(raw["params"]["classifier"]["kernel"], tf2["params"]["classifier"]["kernel"])


def test_swapped_batch_norm_names_would_be_caught(case, tmp_path):
    """An MBConv's expand and depthwise BNs have equal shapes, so only the names tell them apart."""
    prefix, batches, keras_logits, input_effect = case
    reader = tf.train.load_checkpoint(prefix)
    tensors = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
    block = "efficientnetv2-b0/blocks_10/"
    for leaf in ("gamma", "beta", "moving_mean", "moving_variance"):
        for suffix in ("", "/ExponentialMovingAverage"):
            a = f"{block}tpu_batch_normalization/{leaf}{suffix}"
            b = f"{block}tpu_batch_normalization_1/{leaf}{suffix}"
            tensors[a], tensors[b] = tensors[b], tensors[a]
    swapped = from_tf_checkpoint(write_checkpoint(str(tmp_path / "swapped"), tensors))
    assert max_diff(swapped, "b0", batches, keras_logits) > 0.1 * input_effect


@pytest.mark.parametrize("name", list_models())
def test_official_names_cover_every_variant_once(name):
    """Every leaf gets a distinct official name; with 1000 classes their sizes add up to the official totals."""
    names = official_names(name, 1000)
    leaves = dict(target_leaves(name, 1000))
    assert set(names) == set(leaves) and len(set(names.values())) == len(names)
    totals = {"efficientnetv2-b0": 7_200_312, "efficientnetv2-b1": 8_212_124, "efficientnetv2-b2": 10_178_374,
              "efficientnetv2-b3": 14_467_622, "efficientnetv2-s": 21_612_360, "efficientnetv2-m": 54_431_388,
              "efficientnetv2-l": 119_027_848, "efficientnetv2-xl": 208_896_832}
    assert sum(int(np.prod(shape)) for shape in leaves.values()) == totals[list(names.values())[0].split("/")[0]]
    assert all(re.fullmatch(r"efficientnetv2-\w+/(stem|head|blocks_\d+)/[\w/]+", n) for n in names.values())


def test_cli_round_trip(case, tmp_path):
    prefix, batches, keras_logits, input_effect = case
    output = tmp_path / "converted"
    assert convert_main(["tf", "--checkpoint", prefix, "--output", str(output)]) == 0
    restored = checkpoint.restore_variables(str(output))
    assert checkpoint.restore_metadata(str(output))["model_name"] == "efficientnetv2-b0"
    assert max_diff(restored, "b0", batches, keras_logits) < 1e-3 * input_effect


def test_bad_inputs_name_the_problem(case, tmp_path, capsys):
    prefix, *_ = case
    with pytest.raises(ValueError, match="does not exist"):
        from_tf_checkpoint(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="Not an official EfficientNetV2 checkpoint"):
        from_tf_checkpoint(write_checkpoint(str(tmp_path / "other"), {"resnet/conv1/kernel": np.zeros(3)}))
    with pytest.raises(ValueError, match="holds efficientnetv2-b0, not efficientnetv2-s"):
        from_tf_checkpoint(prefix, name="s")
    reader = tf.train.load_checkpoint(prefix)
    tensors = {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}
    tensors["efficientnetv2-b0/stem/conv2d/kernel/ExponentialMovingAverage"] = np.zeros((3, 3, 3, 16), np.float32)
    with pytest.raises(ValueError, match="Shape mismatch: efficientnetv2-b0/stem/conv2d/kernel/Exponential"):
        from_tf_checkpoint(write_checkpoint(str(tmp_path / "bad_shape"), tensors))
    tensors.pop("efficientnetv2-b0/stem/conv2d/kernel/ExponentialMovingAverage")
    tensors["efficientnetv2-b0/blocks_99/conv2d/kernel"] = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="no place for, e.g. efficientnetv2-b0/blocks_99/conv2d/kernel"):
        from_tf_checkpoint(write_checkpoint(str(tmp_path / "extra"), tensors))
    assert convert_main(["tf", "--checkpoint", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "error: TF checkpoint" in capsys.readouterr().err
