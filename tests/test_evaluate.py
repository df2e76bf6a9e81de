"""evaluate: equals the trainer's eval (train.evaluate on the restored train state) exactly, at any padding and size."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from efficientnetv2_jax import evaluate, inference
from efficientnetv2_jax.checkpoint import Checkpointer
from efficientnetv2_jax.train import program, steps, train
from efficientnetv2_jax.train.state import TrainState
from inference_checkpoint import NUM_CLASSES, tiny_config, write_tiny_checkpoint

METRICS = ("eval_top1", "eval_top5", "eval_loss", "eval_examples")
EVAL_SIZE = 16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A digits workdir whose config evaluates 100 test images at 16 px, the last batch padded (100 = 64 + 36)."""
    workdir = str(tmp_path_factory.mktemp("run"))
    config = tiny_config(eval_image_size=EVAL_SIZE, crop_rule="v2")
    config.eval_batch_size = 64
    config.dataset.eval_split = "test[:100]"
    write_tiny_checkpoint(workdir, config)
    return workdir, config


@pytest.fixture(scope="module")
def trainer_metrics(checkpoint):
    """What the trainer's eval reports for this checkpoint: its restore, its eval step (EMA), its config."""
    workdir, config = checkpoint
    model = program.build_model(config, NUM_CLASSES)
    mesh = program.make_mesh(config.eval_batch_size)
    replicated = NamedSharding(mesh, P())
    def init_state():  # The structure write_tiny_checkpoint saved (its optimizer is optax.identity).
        variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
        return TrainState.create(params=variables["params"], batch_stats=variables["batch_stats"],
                                 tx=optax.identity())

    with Checkpointer(workdir, model_name=model.model_name, num_classes=NUM_CLASSES, keep_best=0) as checkpointer:
        state = checkpointer.restore_latest(jax.eval_shape(init_state), shardings=replicated).state
    eval_fn = jax.jit(steps.make_eval_step(model, config, multi_label=False), out_shardings=replicated)
    return train.evaluate(eval_fn, state, config, mesh, EVAL_SIZE)


def test_equals_the_trainers_eval_on_the_same_checkpoint(checkpoint, trainer_metrics):
    results = evaluate.evaluate_checkpoint(inference.load_checkpoint(checkpoint[0]))
    assert list(results) == [EVAL_SIZE]
    for key in METRICS:
        assert results[EVAL_SIZE][key] == pytest.approx(trainer_metrics[key], rel=1e-6, abs=1e-6), key
    raw = evaluate.evaluate_checkpoint(inference.load_checkpoint(checkpoint[0], ema=False))
    assert raw[EVAL_SIZE]["eval_loss"] != pytest.approx(trainer_metrics["eval_loss"], rel=1e-6)


def test_several_sizes_and_unpadded_batches_in_one_call(checkpoint, trainer_metrics, capsys):
    assert evaluate.main(["--checkpoint", checkpoint[0], "--image-size", str(EVAL_SIZE), "24", "--batch-size", "40",
                          "--json"]) == 0  # The default split is the config's; 100 = 2 x 40 + 20: other padding.
    results = json.loads(capsys.readouterr().out)
    assert sorted(results, key=int) == [str(EVAL_SIZE), "24"]
    for key in METRICS:
        assert results[str(EVAL_SIZE)][key] == pytest.approx(trainer_metrics[key], rel=1e-6, abs=1e-6), key
    assert results["24"]["eval_examples"] == 100
    assert results["24"]["eval_loss"] != pytest.approx(results[str(EVAL_SIZE)]["eval_loss"], rel=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "/nonexistent/run"], "does not exist"),
    (["--dataset", "cifar11"], "Unknown dataset"),
    (["--batch-size", "12"], "not divisible by the 8 devices"),
    (["--model", "m"], "not efficientnetv2-m"),
])
def test_bad_input_is_one_line_with_exit_code_2(checkpoint, capsys, args, message):
    argv = args if args[0] == "--checkpoint" else ["--checkpoint", checkpoint[0]] + args
    assert evaluate.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
