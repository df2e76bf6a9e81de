"""Export: the SavedModel loaded back in TensorFlow reproduces the JAX logits/features on images of any size."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import tensorflow as tf

from efficientnetv2_jax import export, inference
from efficientnetv2_jax.data.preprocessing import eval_image
from inference_checkpoint import tiny_config, write_tiny_checkpoint

RANDOM_OP_MARKERS = ("Random", "Multinomial", "Dropout")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ckpt"))
    write_tiny_checkpoint(workdir, tiny_config(eval_image_size=32, crop_rule="v2"))
    loaded = inference.load_checkpoint(workdir)
    output = str(tmp_path_factory.mktemp("export") / "saved_model")
    assert export.main(["--checkpoint", workdir, "--output", output, "--platforms", "cpu"]) == 0
    return loaded, tf.saved_model.load(output)


def _jax_reference(loaded, images: np.ndarray, features: bool = False) -> np.ndarray:
    """The JAX model on the trainer's eval preprocessing of each image (PNG-encoded, lossless)."""
    prep = loaded.preprocessing
    batch = np.stack([eval_image(tf.io.encode_png(image), image_size=prep.image_size,
                                 resize_method=prep.resize_method, crop_rule=prep.crop_rule).numpy()
                      for image in images])
    return np.asarray(loaded.logits_fn(features=features)(loaded.variables, batch))


@pytest.mark.parametrize("shape", [(3, 41, 57), (2, 64, 64)])
def test_serving_signature_matches_jax_logits(exported, shape):
    loaded, saved = exported
    images = np.random.default_rng(sum(shape)).integers(0, 256, shape + (3,), dtype=np.uint8)
    outputs = saved.signatures["serving_default"](images=tf.constant(images))
    want = _jax_reference(loaded, images)
    logits = outputs["logits"].numpy()
    assert logits.shape == (shape[0], 10)
    assert np.max(np.abs(logits - want)) <= 1e-4 * np.max(np.abs(want))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), tf.nn.softmax(want).numpy(), atol=1e-6)


def test_feature_vector_has_the_head_width_and_matches_jax(exported):
    loaded, saved = exported
    images = np.random.default_rng(1).integers(0, 256, (2, 50, 36, 3), dtype=np.uint8)
    features = saved.signatures["feature_vector"](images=tf.constant(images))["feature_vector"].numpy()
    assert export.feature_width(loaded) == 320  # round_filters(1280, 0.25)
    assert features.shape == (2, export.feature_width(loaded))
    want = _jax_reference(loaded, images, features=True)
    assert np.max(np.abs(features - want)) <= 1e-4 * np.max(np.abs(want))


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
