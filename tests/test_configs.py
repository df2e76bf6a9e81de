"""Every config file and variant loads through `main.load_config` (the one path of main and the TPU launcher),
overrides work, typos fail with one line from any working directory, and the official hyper-parameters
(reference/official.md §2) are what the files say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from efficientnetv2_jax.main import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CONTRACT = ("model.name", "dataset.name", "batch_size", "total_epochs", "total_steps", "seed",
            "checkpoint_every_steps", "eval_every_steps", "progressive.num_stages", "init_from")
EVERY_CONFIG = ([f"imagenet1k.py:{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl")]
                + [f"imagenet21k.py:{v}" for v in ("s", "l", "xl")]
                + ["finetune.py:s,cifar10", "finetune.py:l,imagenet2012", "finetune.py:b2,oxford_flowers102",
                   "digits.py"])


def parse(config: str, *overrides: str):
    """The config as main.py builds it from `--config=configs/<config> <overrides>`."""
    return load_config(f"{CONFIGS / config}", overrides)


def field(config, dotted: str):
    for name in dotted.split("."):
        config = getattr(config, name)
    return config


@pytest.mark.parametrize("name", EVERY_CONFIG)
def test_every_config_loads_locked_with_the_contract_fields(name):
    config = parse(name)
    assert config.is_locked
    for dotted in CONTRACT:
        field(config, dotted)
    assert config.model.name.startswith("efficientnetv2-")
    assert config.batch_size > 0 and config.progressive.num_stages >= 1
    with pytest.raises(AttributeError):
        config.batch_sise = 1


def test_command_line_overrides():
    config = parse("imagenet1k.py:s", "--config.batch_size=512", "--config.lr.schedule=cosine",
                   "--config.progressive.num_stages=1", "--config.init_from=/tmp/ckpt")
    assert (config.batch_size, config.lr.schedule, config.progressive.num_stages, config.init_from) == (
        512, "cosine", 1, "/tmp/ckpt")
    assert parse("imagenet1k.py:s").batch_size == 4096  # Each parse starts from the file again.


def test_misspelt_field_is_an_error():
    with pytest.raises(ConfigError, match="^unknown config field 'batch_sise'; Did you mean \"batch_size\""):
        parse("imagenet1k.py:s", "--config.batch_sise=1")
    with pytest.raises(ConfigError, match="^flag --config.batch_size=many: invalid literal for int"):
        parse("imagenet1k.py:s", "--config.batch_size=many")
    with pytest.raises(ConfigError, match="^unexpected arguments: extra"):
        parse("imagenet1k.py:s", "extra")


@pytest.mark.parametrize("bad", ["imagenet1k.py:s9", "finetune.py:s,cifar10,extra", "imagenet21k.py:b7"])
def test_bad_config_argument_is_an_error(bad):
    with pytest.raises(ConfigError, match=f"^--config={CONFIGS / bad}: "):
        parse(bad)


def test_missing_config_names_the_closest_file():
    with pytest.raises(ConfigError, match=f"^config file {CONFIGS}/digit.py not found; did you mean "
                                          f"{CONFIGS}/digits.py\\?$"):
        load_config(f"{CONFIGS}/digit.py")


def test_configs_load_from_any_working_directory(tmp_path):
    """`from configs.common import ...` inside a config works with the file's full path from another folder."""
    probe = f"from efficientnetv2_jax.main import load_config; print(load_config({str(CONFIGS / 'digits.py')!r}).batch_size)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ""})
    assert (done.returncode, done.stdout) == (0, "64\n"), done.stderr[-2000:]


@pytest.mark.parametrize("config, message", [
    ("configs/digit.py", "config file configs/digit.py not found (relative to {cwd}); did you mean configs/digits.py?"),
    ("configs/digits.py:q", "--config=configs/digits.py:q: configs/digits.py takes no argument or 'aug', got 'q'."),
])
def test_main_reports_a_bad_config_in_one_line_with_exit_2(tmp_path, config, message):
    env = {**os.environ, "EFFICIENTNETV2_JAX_ALLOCATOR": "system"}
    done = subprocess.run([sys.executable, "-m", "efficientnetv2_jax.main", f"--config={config}",
                           f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    assert done.stderr == "error: " + message.format(cwd=ROOT) + "\n"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("variant", ["b0", "b1", "b2", "b3", "s", "m", "l", "xl"])
def test_imagenet1k_official_hyperparameters(variant):
    c = parse(f"imagenet1k.py:{variant}")
    assert c.model.name == f"efficientnetv2-{variant}" and c.dataset.name == "imagenet2012"
    assert (c.optimizer.name, c.optimizer.decay, c.optimizer.momentum, c.optimizer.eps) == ("rmsprop", 0.9, 0.9, 1e-3)
    assert (c.lr.base, c.lr.schedule, c.lr.warmup_epochs, c.lr.decay_factor, c.lr.decay_epochs, c.lr.min) == (
        0.016, "exponential", 5, 0.97, 2.4, 0)
    assert (c.total_epochs, c.total_steps, c.min_steps, c.batch_size) == (350, 0, 0, 4096)
    assert (c.label_smoothing, c.weight_decay, c.ema_decay, c.grad_clip) == (0.1, 1e-5, 0.9999, 0)
    assert (c.model.drop_connect_rate, c.model.dropout_rate) == (0.2, -1)  # -1: the variant's dropout.
    assert (c.progressive.num_stages, c.progressive.recipe, c.progressive.base_image_size) == (4, "official", 128)
    assert c.loss == "softmax" and c.eval_with_ema
    assert c.dataset.augment == ("autoaug" if variant.startswith("b") else "randaug")
    assert int(c.total_epochs * 1_256_144 / c.batch_size) == 107_336


@pytest.mark.parametrize("variant", ["s", "l", "xl"])
def test_imagenet21k_official_hyperparameters(variant):
    c = parse(f"imagenet21k.py:{variant}")
    assert c.dataset.name == "imagenet21k" and c.model.name == f"efficientnetv2-{variant}"
    assert (c.total_epochs, c.batch_size, c.lr.base, c.lr.schedule, c.lr.warmup_epochs) == (
        60, 4096, 0.008, "cosine", 1)
    assert (c.label_smoothing, c.weight_decay, c.ema_decay, c.optimizer.name) == (0, 1e-5, 0.9999, "rmsprop")
    assert (c.model.drop_connect_rate, c.model.dropout_rate) == (0, 1e-6)
    assert (c.dataset.augment, c.progressive.num_stages, c.progressive.train_image_size, c.eval_image_size) == (
        "none", 1, 224, 224)
    assert (c.progressive.mixup_alpha, c.progressive.cutmix_alpha) == (0, 0)
    assert parse(f"imagenet21k.py:{variant}", "--config.loss=sigmoid").loss == "sigmoid"


@pytest.mark.parametrize("arg,size,eval_size", [("s,cifar10", 384, 384), ("l,imagenet2012", 480, 480),
                                                ("b2,oxford_flowers102", 256, 260), ("b3,cars196", 288, 300),
                                                ("xl,cifar100", 512, 512)])
def test_finetune_official_hyperparameters(arg, size, eval_size):
    c = parse(f"finetune.py:{arg}")
    variant, dataset = arg.split(",")
    assert c.model.name == f"efficientnetv2-{variant}" and c.dataset.name == dataset
    assert (c.batch_size, c.total_epochs, c.min_steps) == (512, 15, 10_000)
    assert (c.lr.schedule, c.lr.base, c.lr.warmup_epochs, c.ema_decay) == ("constant", 0.0005, 1, 0.9996)
    assert (c.weight_decay, c.label_smoothing, c.model.dropout_rate, c.model.drop_connect_rate) == (
        1e-5, 0.1, 1e-6, 0.2)
    # Official isize=1.0: train at the eval size rounded down to a multiple of 16, eval at the unrounded one.
    assert (c.progressive.num_stages, c.progressive.train_image_size, c.eval_image_size) == (1, size, eval_size)
    assert (c.progressive.randaug_magnitude, c.progressive.mixup_alpha, c.progressive.cutmix_alpha) == (0, 0, 0)
    assert c.dataset.augment == "finetune"


def test_finetune_default_dataset_is_imagenet():
    assert parse("finetune.py:m").dataset.name == "imagenet2012"


def test_digits_quickstart_is_small_and_progressive():
    c = parse("digits.py")
    assert c.dataset.name == "digits" and c.model.name == "efficientnetv2-b0"
    assert 0 < c.model.width < 1 and 0 < c.model.depth < 1
    assert c.progressive.num_stages == 4 and c.progressive.train_image_size == c.eval_image_size == 32
    assert c.progressive.base_image_size < c.progressive.train_image_size
    assert not c.dataset.random_flip  # A mirrored digit is another digit.
