"""Progressive stage tables: the official google/automl values, the paper's Table 6, and bad input."""

import numpy as np
import pytest

from configs import finetune, imagenet1k
from efficientnetv2_jax.train.progressive import PAPER_TABLE_6, make_stages

ONE_K_STEPS = 107_336  # 350 epochs x 1,256,144 images // 4096.

# reference/official.md §3 (computed from google/automl main.py): sizes, RandAugment, mixup = cutmix, dropout.
OFFICIAL = {
    "s": ([171, 214, 257, 300], [5, 20 / 3, 25 / 3, 10], [0, 0, 0, 0], 0.2),
    "m": ([192, 256, 320, 384], [5, 25 / 3, 35 / 3, 15], [0, 0.2 / 3, 0.4 / 3, 0.2], 0.3),
    "l": ([192, 256, 320, 384], [5, 10, 15, 20], [0, 0.5 / 3, 1 / 3, 0.5], 0.4),
    "xl": ([192, 256, 320, 384], [5, 10, 15, 20], [0, 0.5 / 3, 1 / 3, 0.5], 0.4),
    "b0": ([144, 160, 176, 192], None, [0, 0, 0, 0], 0.2),
    "b1": ([144, 160, 176, 192], None, [0, 0, 0, 0], 0.2),
    "b2": ([148, 168, 188, 208], None, [0, 0, 0, 0], 0.3),
    "b3": ([156, 184, 212, 240], None, [0, 0, 0, 0], 0.3),
}

# Tan & Le 2021, Table 6: (min, max) of image size, RandAugment, mixup alpha, dropout.
TABLE_6 = {
    "s": ((128, 300), (5, 15), (0, 0), (0.1, 0.3)),
    "m": ((128, 380), (5, 20), (0, 0.2), (0.1, 0.4)),
    "l": ((128, 380), (5, 25), (0, 0.4), (0.1, 0.5)),
}


@pytest.mark.parametrize("variant", sorted(OFFICIAL))
def test_official_stage_table(variant):
    sizes, magnitudes, mixups, dropout = OFFICIAL[variant]
    stages = make_stages(imagenet1k.get_config(variant), ONE_K_STEPS)
    assert [s.image_size for s in stages] == sizes
    assert [s.end_step for s in stages] == [26_834, 53_668, 80_502, 107_336]
    assert [s.start_step for s in stages] == [0, 26_834, 53_668, 80_502]
    np.testing.assert_allclose([s.mixup_alpha for s in stages], mixups, atol=1e-12)
    np.testing.assert_allclose([s.cutmix_alpha for s in stages], mixups, atol=1e-12)
    if magnitudes is not None:
        np.testing.assert_allclose([s.randaug_magnitude for s in stages], magnitudes, atol=1e-12)
    assert [s.dropout_rate for s in stages] == [dropout] * 4  # Not scheduled in the official code.


@pytest.mark.parametrize("variant", sorted(TABLE_6))
def test_paper_recipe_spans_table_6(variant):
    config = imagenet1k.get_config(variant)
    config.progressive.recipe = "paper"
    stages = make_stages(config, ONE_K_STEPS)
    size, magnitude, mixup, dropout = TABLE_6[variant]
    for field, (lo, hi) in (("image_size", size), ("randaug_magnitude", magnitude), ("mixup_alpha", mixup),
                            ("dropout_rate", dropout)):
        values = [getattr(s, field) for s in stages]
        np.testing.assert_allclose([values[0], values[-1]], [lo, hi], atol=1e-12, err_msg=field)
        if field != "image_size":  # Algorithm 1: linear in the stage index.
            np.testing.assert_allclose(values, np.linspace(lo, hi, 4), atol=1e-12, err_msg=field)
    assert np.all(np.diff([s.image_size for s in stages]) > 0)
    assert [s.image_size for s in stages] == [int(v) for v in np.linspace(*size, 4)]
    assert all(s.cutmix_alpha == 0 for s in stages)  # The paper uses no CutMix.


def test_single_stage_is_the_final_setting():
    config = imagenet1k.get_config("m")
    config.progressive.num_stages = 1
    (stage,) = make_stages(config, 1000)
    assert (stage.image_size, stage.randaug_magnitude, stage.mixup_alpha, stage.start_step, stage.end_step) == (
        384, 15, 0.2, 0, 1000)


def test_finetune_trains_at_the_rounded_eval_size():
    for variant, size in (("s", 384), ("m", 480), ("xl", 512), ("b2", 256), ("b3", 288)):
        (stage,) = make_stages(finetune.get_config(f"{variant},cifar10"), 10_000)
        assert stage.image_size == size
        assert (stage.randaug_magnitude, stage.mixup_alpha, stage.cutmix_alpha) == (0, 0, 0)


def test_overrides_and_bad_input():
    config = imagenet1k.get_config("s")
    config.progressive.train_image_size = 256
    config.progressive.base_image_size = 0  # Official fallback: half the train size.
    assert [s.image_size for s in make_stages(config, 100)] == [160, 192, 224, 256]
    with pytest.raises(ValueError, match="valid choices: official, paper"):
        config.progressive.recipe = "papr"
        make_stages(config, 100)
    config = imagenet1k.get_config("b0")
    config.progressive.recipe = "paper"
    with pytest.raises(ValueError, match="Table 6"):
        make_stages(config, 100)
    config = imagenet1k.get_config("s")
    config.progressive.recipe = "paper"
    config.model.dropout_rate = 0.5
    with pytest.raises(ValueError, match="model.dropout_rate"):
        make_stages(config, 100)
    config = imagenet1k.get_config("s")
    config.progressive.num_stages = 0
    with pytest.raises(ValueError, match="num_stages"):
        make_stages(config, 100)


def test_stage_bounds_come_from_the_config_and_tile_the_run():
    config = imagenet1k.get_config("s")
    assert int(config.total_epochs * 1_256_144 / config.batch_size) == ONE_K_STEPS
    for total in (ONE_K_STEPS, 10, 7):
        stages = make_stages(config, total)
        assert [s.end_step for s in stages] == [int((k + 1) / 4 * total) for k in range(4)]
        assert stages[0].start_step == 0 and stages[-1].end_step == total
        assert all(a.end_step == b.start_step for a, b in zip(stages, stages[1:]))
        assert [s.index for s in stages] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="num_stages"):
        make_stages(config, 3)  # Fewer steps than stages.


def test_paper_table_constant_and_its_single_stage():
    for variant, (size, magnitude, mixup, dropout) in TABLE_6.items():
        row = PAPER_TABLE_6[f"efficientnetv2-{variant}"]
        assert (row.image_size, row.randaug_magnitude, row.mixup_alpha, row.dropout_rate) == (
            size, magnitude, mixup, dropout)
    config = imagenet1k.get_config("m")
    config.progressive.recipe = "paper"
    config.progressive.num_stages = 1
    (stage,) = make_stages(config, 1000)
    assert (stage.image_size, stage.randaug_magnitude, stage.mixup_alpha, stage.dropout_rate) == (380, 20, 0.2, 0.4)
    config = imagenet1k.get_config("xl")
    config.progressive.recipe = "paper"
    with pytest.raises(ValueError, match="official"):  # Table 6 has no XL column.
        make_stages(config, 100)
