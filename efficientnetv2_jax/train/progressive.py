"""Progressive learning with adaptive regularization (Algorithm 1 of the paper) as stages of one run.

Two recipes (`progressive.recipe`):
- 'official' (default), google/automl `efficientnetv2/main.py` (reference/official.md §3): M equal stages,
  stage k (0-based) ends at int((k+1)/M * total_steps) and trains at int(base + (train_size - base) * (k+1)/M)
  px with base = `progressive.base_image_size` (official `ibase` 128; 0 = train_size/2, the official fallback):
  S 171/214/257/300, M/L/XL 192/256/320/384, B0/B1 144/160/176/192, B2 148/168/188/208, B3 156/184/212/240.
  RandAugment magnitude linspace(5, M_max, M), mixup and cutmix alpha linspace(0, alpha, M). Dropout is NOT
  scheduled (the official line is commented out): every stage uses the model's dropout.
- 'paper': Table 6 of Tan & Le, "EfficientNetV2: Smaller Models and Faster Training", ICML 2021
  (arXiv:2104.00298; the S column is also quoted in google/automl#1175), with Algorithm 1's interpolation
  S_i = S_0 + (S_e - S_0) * i/(M-1), the first stage at the minimum and the last at the maximum, for image
  size, RandAugment magnitude, mixup alpha and dropout:
      S: size 128->300, RandAugment 5->15, mixup 0->0,   dropout 0.1->0.3
      M: size 128->380, RandAugment 5->20, mixup 0->0.2, dropout 0.1->0.4
      L: size 128->380, RandAugment 5->25, mixup 0->0.4, dropout 0.1->0.5
  The paper gives no rounding rule; sizes are truncated with int() as the official code does (S: 128, 185, 242,
  300; M/L: 128, 212, 296, 380). The paper never uses CutMix, so its cutmix alpha is 0. Only S/M/L are in the
  table; this recipe fixes every value, so the progressive.* overrides and model.dropout_rate must stay unset.
`num_stages=1` is no progressive learning: one stage at the final size and regularization. The LR schedule,
optimizer state and EMA run on the global step and continue across stages.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from efficientnetv2_jax.models import get_variant

RECIPES = ("official", "paper")


@dataclasses.dataclass(frozen=True)
class PaperRange:
    """One column pair of Table 6: (min, max) of each scheduled quantity."""

    image_size: tuple[int, int]
    randaug_magnitude: tuple[float, float]
    mixup_alpha: tuple[float, float]
    dropout_rate: tuple[float, float]


PAPER_TABLE_6 = {
    "efficientnetv2-s": PaperRange((128, 300), (5, 15), (0.0, 0.0), (0.1, 0.3)),
    "efficientnetv2-m": PaperRange((128, 380), (5, 20), (0.0, 0.2), (0.1, 0.4)),
    "efficientnetv2-l": PaperRange((128, 380), (5, 25), (0.0, 0.4), (0.1, 0.5)),
}


@dataclasses.dataclass(frozen=True)
class Stage:
    """One progressive stage: its image size, regularization strengths and global step range [start, end)."""

    index: int
    image_size: int
    randaug_magnitude: float
    mixup_alpha: float
    cutmix_alpha: float
    dropout_rate: float
    start_step: int
    end_step: int


def _stage_bounds(num_stages: int, total_steps: int) -> list[tuple[int, int]]:
    """Official equal stages: stage k ends at int((k+1)/M * total_steps)."""
    ends = [int((k + 1) / num_stages * total_steps) for k in range(num_stages)]
    return list(zip([0] + ends[:-1], ends))


def _ramp(start: float, end: float, num_stages: int) -> list[float]:
    """linspace(start, end, M) over the stages; a single stage takes the final value."""
    return [float(v) for v in np.linspace(start, end, num_stages)] if num_stages > 1 else [float(end)]


def _official_values(config: ml_collections.ConfigDict, m: int) -> tuple[list, list, list, list, list]:
    pc = config.progressive
    variant = get_variant(config.model.name)
    size = pc.train_image_size or variant.train_size
    base = pc.base_image_size or size / 2
    magnitude = pc.randaug_magnitude if pc.randaug_magnitude >= 0 else variant.randaug_magnitude
    mixup = pc.mixup_alpha if pc.mixup_alpha >= 0 else variant.mixup_alpha
    cutmix = pc.cutmix_alpha if pc.cutmix_alpha >= 0 else variant.mixup_alpha  # Official: cutmix = mixup alpha.
    dropout = config.model.dropout_rate if config.model.dropout_rate >= 0 else variant.dropout_rate
    sizes = [int(base + (size - base) * (k + 1) / m) for k in range(m)]
    return (sizes, _ramp(5, magnitude, m), _ramp(0, mixup, m), _ramp(0, cutmix, m), [float(dropout)] * m)


def _paper_values(config: ml_collections.ConfigDict, m: int) -> tuple[list, list, list, list, list]:
    name = get_variant(config.model.name).name
    if name not in PAPER_TABLE_6:
        raise ValueError(f"progressive.recipe='paper' covers {', '.join(PAPER_TABLE_6)} (Table 6); "
                         f"use progressive.recipe='official' for {name}.")
    pc = config.progressive
    overridden = [field for field, unset in (("progressive.train_image_size", pc.train_image_size == 0),
                                             ("progressive.base_image_size", pc.base_image_size == 128),
                                             ("progressive.randaug_magnitude", pc.randaug_magnitude < 0),
                                             ("progressive.mixup_alpha", pc.mixup_alpha < 0),
                                             ("progressive.cutmix_alpha", pc.cutmix_alpha < 0),
                                             ("model.dropout_rate", config.model.dropout_rate < 0)) if not unset]
    if overridden:
        raise ValueError(f"progressive.recipe='paper' takes every value from Table 6; leave {', '.join(overridden)} "
                         "at the default or use progressive.recipe='official'.")
    row = PAPER_TABLE_6[name]
    sizes = [int(s) for s in _ramp(*row.image_size, m)]
    return (sizes, _ramp(*row.randaug_magnitude, m), _ramp(*row.mixup_alpha, m), [0.0] * m,
            _ramp(*row.dropout_rate, m))


def run_length(config: ml_collections.ConfigDict, train_examples: int) -> tuple[float, int]:
    """(steps per epoch, total steps) of the run: `total_steps` if set, else `total_epochs`, at least `min_steps`."""
    steps_per_epoch = train_examples / config.batch_size
    total_steps = config.total_steps if config.total_steps > 0 else int(config.total_epochs * steps_per_epoch)
    return steps_per_epoch, max(total_steps, config.min_steps)


def make_stages(config: ml_collections.ConfigDict, total_steps: int) -> list[Stage]:
    """The stage table of a run of `total_steps` global steps, per `config.progressive`."""
    m = config.progressive.num_stages
    if m < 1:
        raise ValueError(f"progressive.num_stages must be >= 1 (1 = no progressive learning), got {m}.")
    if total_steps < m:
        raise ValueError(f"total_steps ({total_steps}) must be at least progressive.num_stages ({m}).")
    recipe = config.progressive.recipe
    if recipe not in RECIPES:
        raise ValueError(f"Unknown progressive.recipe {recipe!r}; valid choices: {', '.join(RECIPES)}.")
    values = _official_values(config, m) if recipe == "official" else _paper_values(config, m)
    return [Stage(index=k, image_size=size, randaug_magnitude=magnitude, mixup_alpha=mixup, cutmix_alpha=cutmix,
                  dropout_rate=dropout, start_step=start, end_step=end)
            for k, (size, magnitude, mixup, cutmix, dropout, (start, end))
            in enumerate(zip(*values, _stage_bounds(m, total_steps)))]
