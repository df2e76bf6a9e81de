"""Every config file and variant loads through `config_flags` as main.py does, overrides work, typos fail, and the
official hyper-parameters (reference/official.md §2) are what the files say."""

from __future__ import annotations

from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONTRACT = ("model.name", "dataset.name", "batch_size", "total_epochs", "total_steps", "seed",
            "checkpoint_every_steps", "eval_every_steps", "progressive.num_stages", "init_from")
EVERY_CONFIG = ([f"imagenet1k.py:{v}" for v in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl")]
                + [f"imagenet21k.py:{v}" for v in ("s", "l", "xl")]
                + ["finetune.py:s,cifar10", "finetune.py:l,imagenet2012", "finetune.py:b2,oxford_flowers102",
                   "digits.py"])


def parse(config: str, *overrides: str):
    """The config as main.py's `DEFINE_config_file(..., lock_config=True)` builds it from a command line."""
    argv = ["main", f"--config={CONFIGS / config}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "Config file.", flag_values=flag_values, lock_config=True,
                                    sys_argv=argv)
    flag_values(argv)
    return flag_values.config


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
    with pytest.raises(AttributeError, match="batch_size"):  # The message suggests the right name.
        parse("imagenet1k.py:s", "--config.batch_sise=1")
    with pytest.raises(flags.IllegalFlagValueError):
        parse("imagenet1k.py:s", "--config.batch_size=many")


@pytest.mark.parametrize("bad", ["imagenet1k.py:s9", "finetune.py:s,cifar10,extra", "imagenet21k.py:b7"])
def test_bad_config_argument_is_an_error(bad):
    with pytest.raises(flags.IllegalFlagValueError):
        parse(bad)


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


@pytest.mark.parametrize("arg,size", [("s,cifar10", 384), ("l,imagenet2012", 480), ("b2,oxford_flowers102", 256),
                                      ("b3,cars196", 288), ("xl,cifar100", 512)])
def test_finetune_official_hyperparameters(arg, size):
    c = parse(f"finetune.py:{arg}")
    variant, dataset = arg.split(",")
    assert c.model.name == f"efficientnetv2-{variant}" and c.dataset.name == dataset
    assert (c.batch_size, c.total_epochs, c.min_steps) == (512, 15, 10_000)
    assert (c.lr.schedule, c.lr.base, c.lr.warmup_epochs, c.ema_decay) == ("constant", 0.0005, 1, 0.9996)
    assert (c.weight_decay, c.label_smoothing, c.model.dropout_rate, c.model.drop_connect_rate) == (
        1e-5, 0.1, 1e-6, 0.2)
    assert (c.progressive.num_stages, c.progressive.train_image_size, c.eval_image_size) == (1, size, size)
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
