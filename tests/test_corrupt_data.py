"""Undecodable images: counted into the trainer's metrics and summary.json, excluded from eval, and masked out of
the loss while (by decision, see README "Corrupt images") still feeding the BN batch statistics."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from efficientnetv2_jax.models import create_model
from efficientnetv2_jax.train import losses
from processes import cpu_env, run_one

ROOT = Path(__file__).resolve().parents[1]


def _write_split(folder: Path, good_per_class: int, rng: np.random.Generator) -> None:
    """Two classes of 40x30 textured PNGs (class 0 reddish, class 1 bluish) and one corrupt file in class 1."""
    for label, tint in enumerate(((200, 60, 40), (40, 60, 200))):
        (folder / f"class{label}").mkdir(parents=True)
        for i in range(good_per_class):
            pixels = np.clip(rng.normal(tint, 40, (30, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"class{label}" / f"{i:02d}.png")
    (folder / "class1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated, not a JPEG")


@pytest.mark.timeout(900)
def test_trainer_counts_corrupt_images_in_metrics_summary_and_eval(tmp_path):
    rng = np.random.default_rng(0)
    _write_split(tmp_path / "data" / "train", 16, rng)  # 32 good + 1 corrupt; batch 33 is not divisible:
    (tmp_path / "data" / "train" / "class0" / "00.png").unlink()  # 31 good + 1 corrupt = one batch of 32.
    _write_split(tmp_path / "data" / "eval", 8, rng)  # 16 good + 1 corrupt, eval batch 8: 3 steps, 7 padding.
    workdir = tmp_path / "run"
    env = cpu_env(8)
    code, out = run_one([
        sys.executable, "-m", "efficientnetv2_jax.main", "--config=configs/digits.py", f"--workdir={workdir}",
        f"--config.dataset.name=folder:{tmp_path / 'data'}", "--config.model.width=0.25", "--config.model.depth=0.25",
        "--config.batch_size=32", "--config.eval_batch_size=8", "--config.total_steps=3",
        "--config.progressive.num_stages=1", "--config.progressive.train_image_size=16", "--config.eval_image_size=16",
        "--config.log_every_steps=1", "--config.checkpoint_every_steps=0", "--config.lr.warmup_epochs=0"],
        timeout=600, cwd=ROOT, env=env)
    assert code == 0, out[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["num_corrupt"] == 3  # One epoch per step, one corrupt file per epoch.
    assert summary["eval_num_corrupt"] == 1 and summary["eval_examples"] == 16
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["num_corrupt"] for r in rows if "loss" in r] == [1.0, 1.0, 1.0]
    assert [r["eval_num_corrupt"] for r in rows if "eval_top1" in r] == [1]


@jax.jit
def _stem_bn_mean(variables: dict, images: jax.Array) -> jax.Array:
    model = create_model("b0", num_classes=2, width=0.25, depth=0.25)
    _, updated = model.apply(variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
    return updated["batch_stats"]["stem"]["bn"]["mean"]


def test_masked_rows_leave_the_loss_but_feed_the_bn_batch_statistics():
    """The loss averages over mask=1 rows only, so a masked row's label is irrelevant; BN statistics are over the
    whole batch (the model has no mask input), so a masked row's pixels move them by 1/batch of the difference."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(0, 1, (4, 2)), jnp.float32)
    mask = jnp.asarray([1, 1, 0, 1], jnp.float32)
    label_a, label_b = jnp.eye(2)[jnp.array([0, 1, 0, 1])], jnp.eye(2)[jnp.array([0, 1, 1, 1])]
    assert losses.classification_loss(logits, label_a, mask, 0.1) == losses.classification_loss(logits, label_b, mask, 0.1)
    assert losses.top1_accuracy(logits, label_a, mask) == losses.top1_accuracy(logits, label_b, mask)
    assert losses.classification_loss(logits, label_a, jnp.ones(4), 0.1) != losses.classification_loss(
        logits, label_b, jnp.ones(4), 0.1)

    model = create_model("b0", num_classes=2, width=0.25, depth=0.25)
    images = jnp.asarray(rng.uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(images)
    momentum = 0.9  # Official BN momentum: running = 0.9 * running + 0.1 * batch.
    blank = images.at[2].set(0.0)  # What a corrupt row carries (normalised blank).
    moved = (_stem_bn_mean(variables, images) - _stem_bn_mean(variables, blank)) / (1 - momentum)
    kernel = variables["params"]["stem"]["conv"]["kernel"]  # The stem conv (TF SAME, stride 2, no bias), by hand:
    stem = lambda x: jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME",  # noqa: E731
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    expected = (stem(images[2:3]) - stem(blank[2:3])).mean(axis=(0, 1, 2)) / 4
    np.testing.assert_allclose(moved, expected, rtol=1e-3, atol=1e-5)
    assert float(jnp.abs(expected).max()) > 1e-3
