"""`predict --weights`: a converted-weights directory (a full-size B0 from the golden timm weights) on real photos,
against a reference computed by hand: NumPy eval crop and resize (tests/eval_reference.py), the official B0
normalisation, the model's logits, then softmax and ranking in NumPy."""

import importlib.util
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import eval_reference
from efficientnetv2_jax import predict
from efficientnetv2_jax.checkpoint import save_variables
from efficientnetv2_jax.convert import from_timm
from efficientnetv2_jax.models import create_model

HERE = Path(__file__).resolve().parent
LINE = re.compile(r"^  ([1-5])\. +([0-9.]+)%  (.+)$")
SIZE = 64
# Official ImageNet-1k B0-B3 eval: centre crop of size/(size+32) of the shorter side, TF1 bicubic resize,
# (x - mean) / std with the ImageNet statistics in 0..255.
MEAN, STD = np.array([0.485, 0.456, 0.406]) * 255, np.array([0.229, 0.224, 0.225]) * 255


def reference_images(paths: list[str]) -> np.ndarray:
    """float32 [N, SIZE, SIZE, 3]: the NumPy eval image of each file, as uint8 (what the pipeline ships), normalised."""
    images = []
    for path in paths:
        image = eval_reference.eval_image(eval_reference.decode(Path(path).read_bytes()), SIZE, crop_rule="v1",
                                          method="bicubic")
        images.append((eval_reference.as_uint8(image) - MEAN) / STD)
    return np.stack(images).astype(np.float32)


@pytest.fixture(scope="module")
def photo_paths(photo_jpegs):
    return [str(photo_jpegs[name]) for name in ("landscape", "portrait", "small", "grey")]


@pytest.fixture(scope="module")
def converted_weights(photo_paths, tmp_path_factory):
    """The golden timm B0 (tests/data/make_timm_golden.py) with BN statistics recomputed on these photos (its
    stored ones come from noise, which makes photo logits huge and the ranking hypersensitive), saved as a
    converted-weights directory: what `convert` writes and `predict --weights` reads."""
    spec = importlib.util.spec_from_file_location("make_timm_golden", HERE / "data" / "make_timm_golden.py")
    golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(golden)
    variables = from_timm(golden.generated_state_dict(load_file(str(HERE / "data" / golden.STATS_FILE))))
    model = create_model("b0", num_classes=10, dropout_rate=0.0, drop_connect_rate=0.0)
    _, updated = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, reference_images(photo_paths))
    momentum = 0.9  # running = 0.9 * running + 0.1 * batch: recover the batch statistics.
    variables["batch_stats"] = jax.tree.map(lambda new, old: (np.asarray(new) - momentum * old) / (1 - momentum),
                                            updated["batch_stats"], variables["batch_stats"])
    directory = str(tmp_path_factory.mktemp("converted") / "b0")
    save_variables(directory, variables, model_name="efficientnetv2-b0", num_classes=10)
    return directory, variables


def test_predict_with_converted_weights_matches_the_hand_reference(converted_weights, photo_paths, capsys):
    directory, variables = converted_weights
    assert predict.main(["--weights", directory, "--model", "b0", "--image-size", str(SIZE), *photo_paths]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"efficientnetv2-b0, {SIZE}x{SIZE} px, v1 crop, bicubic resize"), out[0]
    printed = [(int(m[1]), float(m[2]), m[3]) for m in map(LINE.match, out) if m]
    assert len(printed) == 5 * len(photo_paths)

    model = create_model("b0", num_classes=10)
    logits = np.asarray(model.apply(variables, reference_images(photo_paths), train=False))
    probabilities = eval_reference.softmax(logits.astype(np.float64))
    assert probabilities.max(1).min() < 0.9  # Not saturated: the ranking and the numbers mean something.
    for path, row, lines in zip(photo_paths, probabilities, np.split(np.array(printed, object), len(photo_paths))):
        top = np.argsort(-row)[:5]
        assert [rank for rank, _, _ in lines] == [1, 2, 3, 4, 5]
        assert [name for _, _, name in lines] == [f"class {c}" for c in top], (path, lines, np.round(100 * row, 2))
        np.testing.assert_allclose([p for _, p, _ in lines], 100 * row[top], atol=0.05, err_msg=path)
