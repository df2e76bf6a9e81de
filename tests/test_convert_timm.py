"""from_timm: a timm tf_efficientnetv2_b0 state dict gives the logits timm computed for it (golden files from
tests/data/make_timm_golden.py, so CI needs no torch); the recorded b0 key/shape layout is consumed exactly; CLI;
bad input."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from efficientnetv2_jax import checkpoint
from efficientnetv2_jax.convert import from_timm
from efficientnetv2_jax.convert.__main__ import main as convert_main
from efficientnetv2_jax.models import create_model

HERE = Path(__file__).resolve().parent
# timm 1.0.31's tf_efficientnetv2_b0 (1000 classes) state-dict keys and shapes, recorded with
# {k: list(v.shape) for k, v in timm.create_model('tf_efficientnetv2_b0').state_dict().items()}.
B0_SHAPES = json.loads((HERE / "data" / "timm_tf_efficientnetv2_b0_shapes.json").read_text())
HAVE_TIMM = all(importlib.util.find_spec(m) for m in ("torch", "timm"))  # Found, not imported: torch crashes beside TF.


def random_state_dict(shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.uniform(0.5, 1.5, shape).astype(np.float32) if shape else np.array(7, np.int64)
            for k, shape in shapes.items()}


def test_recorded_b0_layout_is_consumed_exactly(tmp_path):
    """Every recorded key lands in a leaf of the right shape (runs without torch: .safetensors via numpy)."""
    state = random_state_dict(B0_SHAPES)
    save_file(state, str(tmp_path / "b0.safetensors"))
    variables = from_timm(str(tmp_path / "b0.safetensors"))  # Variant inferred from the layout.
    expected = jax.eval_shape(create_model("b0").init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    assert jax.tree.map(lambda x: x.shape, variables) == jax.tree.map(lambda x: x.shape, expected)
    assert np.array_equal(variables["params"]["blocks_5"]["dwconv"]["kernel"][:, :, 0, 3],
                          state["blocks.3.0.conv_dw.weight"][3, 0])
    assert np.array_equal(variables["params"]["classifier"]["kernel"], state["classifier.weight"].T)
    assert np.array_equal(variables["batch_stats"]["head"]["bn"]["var"], state["bn2.running_var"])


def _golden():
    """tests/data/make_timm_golden.py as a module (it imports torch only when regenerating)."""
    spec = importlib.util.spec_from_file_location("make_timm_golden", HERE / "data" / "make_timm_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GOLDEN = _golden()


def test_logits_match_golden_timm_logits(tmp_path):
    """A randomised timm B0 (its state dict written as .safetensors) gives the logits timm computed for it."""
    state = GOLDEN.generated_state_dict(load_file(str(HERE / "data" / GOLDEN.STATS_FILE)))
    save_file(state, str(tmp_path / "b0.safetensors"))
    variables = from_timm(str(tmp_path / "b0.safetensors"))
    images = GOLDEN.to_float(np.load(HERE / "data" / GOLDEN.IMAGES_FILE))
    timm_logits = np.load(HERE / "data" / GOLDEN.LOGITS_FILE)
    assert float(np.ptp(timm_logits, axis=0).max()) > 1.0, "the golden logits barely depend on the input"
    ours = np.asarray(create_model("b0", num_classes=GOLDEN.NUM_CLASSES).apply(variables, images, train=False))
    np.testing.assert_allclose(ours, timm_logits, rtol=0, atol=5e-4)  # Measured gap 3.6e-5; logit spread 2.3.


@pytest.mark.skipif(not HAVE_TIMM, reason="torch and timm are not installed (pip install torch torchvision timm)")
def test_golden_files_are_what_the_installed_timm_computes(tmp_path):
    """Regenerates the golden files with timm (in a subprocess: torch crashes beside TensorFlow); same content."""
    done = subprocess.run([sys.executable, str(HERE / "data" / "make_timm_golden.py"), str(tmp_path)],
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in (GOLDEN.IMAGES_FILE, GOLDEN.LOGITS_FILE):
        np.testing.assert_allclose(np.load(tmp_path / name), np.load(HERE / "data" / name), rtol=0, atol=1e-4)
    fresh, stored = load_file(str(tmp_path / GOLDEN.STATS_FILE)), load_file(str(HERE / "data" / GOLDEN.STATS_FILE))
    assert fresh.keys() == stored.keys()
    for key in stored:
        np.testing.assert_allclose(fresh[key], stored[key], rtol=1e-3, err_msg=key)


def test_cli_round_trip(tmp_path):
    save_file(random_state_dict(B0_SHAPES), str(tmp_path / "b0.safetensors"))
    output = tmp_path / "converted"
    assert convert_main(["timm", "--weights", str(tmp_path / "b0.safetensors"), "--output", str(output)]) == 0
    assert checkpoint.restore_metadata(str(output))["model_name"] == "efficientnetv2-b0"
    restored = checkpoint.restore_variables(str(output))
    direct = from_timm(str(tmp_path / "b0.safetensors"))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(direct)))


def test_bad_inputs_name_the_problem(tmp_path, capsys):
    state = random_state_dict(B0_SHAPES)
    with pytest.raises(ValueError, match="does not exist"):
        from_timm(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="Unknown timm file type"):
        (tmp_path / "w.npz").write_bytes(b"")
        from_timm(str(tmp_path / "w.npz"))
    with pytest.raises(ValueError, match="Not a timm tf_efficientnetv2 state dict"):
        from_timm({"fc.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(ValueError, match=r"conv_stem.weight gives shape \(3, 3, 3, 32\) .* efficientnetv2-s needs"):
        from_timm(state, name="s")  # A B0 state dict read as S.
    with pytest.raises(ValueError, match="Shape mismatch: timm conv_stem.weight"):
        from_timm({**state, "conv_stem.weight": np.zeros((32, 3, 5, 5), np.float32)})
    with pytest.raises(ValueError, match="no place for, e.g. extra.weight"):
        from_timm({**state, "extra.weight": np.zeros(3, np.float32)})
    assert convert_main(["timm", "--weights", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "o")]) == 2
    assert "error: timm weights file" in capsys.readouterr().err
