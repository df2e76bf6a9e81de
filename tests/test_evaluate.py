"""evaluate: whole-split metrics equal an independent reference (tests/eval_reference.py: NumPy crop and resize,
top-1/top-5/loss counted by hand from the logits) on real photos, at several sizes, with padded batches."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

import eval_reference
from efficientnetv2_jax import evaluate, inference
from inference_checkpoint import NUM_CLASSES, tiny_config, write_tiny_checkpoint

EVAL_SIZE = 48


@pytest.fixture(scope="module")
def folder_dataset(photo_jpegs, tmp_path_factory):
    """folder:<root> with 10 classes; eval/ holds the shared real photos and their mirrors (10 images, labels
    spread over the classes), train/ one photo per class (only its class list is read)."""
    root = tmp_path_factory.mktemp("folder")
    examples = []
    for index, (name, path) in enumerate(sorted(photo_jpegs.items())):
        pixels = eval_reference.decode(path.read_bytes())
        for mirrored in (False, True):
            label = (2 * index + mirrored * 3) % NUM_CLASSES
            target = root / "eval" / f"class_{label}" / f"{name}{'_mirror' if mirrored else ''}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            if mirrored:
                from PIL import Image  # pylint: disable=import-outside-toplevel

                Image.fromarray(np.ascontiguousarray(pixels[:, ::-1])).save(target)
            else:
                target = target.with_suffix(".jpg")
                shutil.copy(path, target)
            examples.append((target, label))
    for label in range(NUM_CLASSES):
        (root / "train" / f"class_{label}").mkdir(parents=True)
        shutil.copy(photo_jpegs["small"], root / "train" / f"class_{label}" / "small.jpg")
    return f"folder:{root}", examples


@pytest.fixture(scope="module")
def checkpoint(folder_dataset, tmp_path_factory):
    """A tiny B0 workdir whose config evaluates the folder's eval split at 48 px with a batch of 8 (10 = 8 + 2)."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = tiny_config(eval_image_size=EVAL_SIZE, crop_rule="v2")
    config.dataset.name = folder_dataset[0]
    config.dataset.eval_split = "eval"
    config.eval_batch_size = 8
    write_tiny_checkpoint(workdir, config)
    return workdir


def reference_metrics(loaded: inference.LoadedModel, examples, size: int) -> dict:
    """Metrics by hand: NumPy eval image of every file, the network's logits, top-1/top-5/loss in NumPy."""
    images = np.stack([eval_reference.as_uint8(eval_reference.eval_image(
        eval_reference.decode(path.read_bytes()), size, loaded.preprocessing.crop_rule)) for path, _ in examples])
    logits = np.asarray(jax.jit(loaded.logits_fn())(loaded.variables, images))
    return eval_reference.eval_metrics(logits, np.array([label for _, label in examples]))


def assert_metrics_equal(got: dict, want: dict) -> None:
    assert got["eval_examples"] == want["eval_examples"]
    assert got["eval_top1"] == pytest.approx(want["eval_top1"], abs=1e-6)
    assert got["eval_top5"] == pytest.approx(want["eval_top5"], abs=1e-6)
    assert got["eval_loss"] == pytest.approx(want["eval_loss"], rel=1e-3)


def test_equals_the_reference_with_ema_and_raw_weights(checkpoint, folder_dataset):
    examples = folder_dataset[1]
    for ema in (True, False):
        loaded = inference.load_checkpoint(checkpoint, ema=ema)
        results = evaluate.evaluate_checkpoint(loaded)
        assert list(results) == [EVAL_SIZE]
        want = reference_metrics(loaded, examples, EVAL_SIZE)
        assert_metrics_equal(results[EVAL_SIZE], want)
        assert 0 < want["eval_top5"] < 1, "top-5 would not tell a wrong label or image from a right one"


def test_several_sizes_and_other_padding_in_one_call(checkpoint, folder_dataset, capsys):
    assert evaluate.main(["--checkpoint", checkpoint, "--image-size", "64", "320", "--batch-size", "16",
                          "--json"]) == 0  # 10 images in one batch of 16; 320 px: the whole image (V2 rule).
    results = json.loads(capsys.readouterr().out)
    assert sorted(results, key=int) == ["64", "320"]
    loaded = inference.load_checkpoint(checkpoint)
    for size in (64, 320):
        assert_metrics_equal(results[str(size)], reference_metrics(loaded, folder_dataset[1], size))


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "/nonexistent/run"], "does not exist"),
    (["--dataset", "cifar11"], "Unknown dataset"),
    (["--batch-size", "12"], "not divisible by the 8 devices"),
    (["--model", "m"], "not efficientnetv2-m"),
])
def test_bad_input_is_one_line_with_exit_code_2(checkpoint, capsys, args, message):
    argv = args if args[0] == "--checkpoint" else ["--checkpoint", checkpoint] + args
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
