"""The official EfficientNetV2 variant table: block strings, compound scaling and per-variant defaults.

Everything here is transcribed from google/automl `efficientnetv2/effnetv2_configs.py` and the rounding
rules of `effnetv2_model.py`, so that the Flax network has the official channel and block counts.
"""

from __future__ import annotations

import dataclasses
import math
import re

_BASE_BLOCKS = (  # B0-B3, scaled by width/depth below.
    "r1_k3_s1_e1_i32_o16_c1",
    "r2_k3_s2_e4_i16_o32_c1",
    "r2_k3_s2_e4_i32_o48_c1",
    "r3_k3_s2_e4_i48_o96_se0.25",
    "r5_k3_s1_e6_i96_o112_se0.25",
    "r8_k3_s2_e6_i112_o192_se0.25",
)
_S_BLOCKS = (
    "r2_k3_s1_e1_i24_o24_c1",
    "r4_k3_s2_e4_i24_o48_c1",
    "r4_k3_s2_e4_i48_o64_c1",
    "r6_k3_s2_e4_i64_o128_se0.25",
    "r9_k3_s1_e6_i128_o160_se0.25",
    "r15_k3_s2_e6_i160_o256_se0.25",
)
_M_BLOCKS = (
    "r3_k3_s1_e1_i24_o24_c1",
    "r5_k3_s2_e4_i24_o48_c1",
    "r5_k3_s2_e4_i48_o80_c1",
    "r7_k3_s2_e4_i80_o160_se0.25",
    "r14_k3_s1_e6_i160_o176_se0.25",
    "r18_k3_s2_e6_i176_o304_se0.25",
    "r5_k3_s1_e6_i304_o512_se0.25",
)
_L_BLOCKS = (
    "r4_k3_s1_e1_i32_o32_c1",
    "r7_k3_s2_e4_i32_o64_c1",
    "r7_k3_s2_e4_i64_o96_c1",
    "r10_k3_s2_e4_i96_o192_se0.25",
    "r19_k3_s1_e6_i192_o224_se0.25",
    "r25_k3_s2_e6_i224_o384_se0.25",
    "r7_k3_s1_e6_i384_o640_se0.25",
)
_XL_BLOCKS = (
    "r4_k3_s1_e1_i32_o32_c1",
    "r8_k3_s2_e4_i32_o64_c1",
    "r8_k3_s2_e4_i64_o96_c1",
    "r16_k3_s2_e4_i96_o192_se0.25",
    "r24_k3_s1_e6_i192_o256_se0.25",
    "r32_k3_s2_e6_i256_o512_se0.25",
    "r8_k3_s1_e6_i512_o640_se0.25",
)

FEATURE_SIZE = 1280  # Head width before width scaling.
DEPTH_DIVISOR = 8
MIN_DEPTH = 8


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage of an official block string, e.g. `r4_k3_s2_e4_i24_o48_c1`."""

    repeats: int
    kernel: int
    stride: int
    expand_ratio: int
    in_filters: int
    out_filters: int
    se_ratio: float | None
    fused: bool


@dataclasses.dataclass(frozen=True)
class BlockArgs:
    """One concrete block after width/depth scaling (what a Flax block module is built from)."""

    kernel: int
    stride: int
    expand_ratio: int
    in_filters: int
    out_filters: int
    se_ratio: float | None
    fused: bool

    @property
    def has_residual(self) -> bool:
        return self.stride == 1 and self.in_filters == self.out_filters

    @property
    def expanded_filters(self) -> int:
        return self.in_filters * self.expand_ratio

    @property
    def se_filters(self) -> int | None:
        """SE bottleneck width, computed from the block *input* channels as the official code does."""
        if self.se_ratio is None or not 0 < self.se_ratio <= 1:
            return None
        return max(1, int(self.in_filters * self.se_ratio))


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """Architecture and the training/eval defaults the official configs attach to one variant."""

    name: str
    stages: tuple[StageSpec, ...]
    width: float
    depth: float
    train_size: int
    eval_size: int
    dropout_rate: float
    randaug_magnitude: float
    mixup_alpha: float
    augment: str  # 'randaug' (S/M/L/XL) or 'autoaug' (B0-B3, the V1 recipe).

    @property
    def normalization(self) -> str:
        """'v2' = (x-128)/128 for S/M/L/XL; 'imagenet' = ImageNet mean/std for B0-B3 (official preprocessing)."""
        return "v2" if self.augment == "randaug" else "imagenet"

    @property
    def resize_method(self) -> str:
        return "bilinear" if self.augment == "randaug" else "bicubic"


_STAGE_RE = re.compile(r"^r(\d+)_k(\d+)_s(\d+)_e(\d+)_i(\d+)_o(\d+)(?:_se([0-9.]+))?(?:_c([01]))?$")


def decode_stage(block_string: str) -> StageSpec:
    """Parses one official block string (format of automl's `BlockDecoder`)."""
    match = _STAGE_RE.match(block_string)
    if not match:
        raise ValueError(f"Malformed block string {block_string!r}; expected like 'r4_k3_s2_e4_i24_o48_c1'.")
    r, k, s, e, i, o, se, conv_type = match.groups()
    return StageSpec(
        repeats=int(r), kernel=int(k), stride=int(s), expand_ratio=int(e), in_filters=int(i),
        out_filters=int(o), se_ratio=float(se) if se is not None else None, fused=conv_type == "1",
    )


def round_filters(filters: int, width: float) -> int:
    """Official channel rounding: scale by width, round to a multiple of 8, never below 8."""
    if not width:
        return filters
    scaled = filters * width
    return int(max(MIN_DEPTH, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR))


def round_repeats(repeats: int, depth: float) -> int:
    """Official depth rounding: ceil(depth * repeats)."""
    return int(math.ceil(depth * repeats))


def expand_blocks(stages: tuple[StageSpec, ...], width: float, depth: float) -> list[BlockArgs]:
    """Turns stage specs into the flat list of blocks: the first of a stage strides, the rest keep channels."""
    blocks = []
    for stage in stages:
        in_filters = round_filters(stage.in_filters, width)
        out_filters = round_filters(stage.out_filters, width)
        for repeat in range(round_repeats(stage.repeats, depth)):
            blocks.append(BlockArgs(
                kernel=stage.kernel, stride=stage.stride if repeat == 0 else 1,
                expand_ratio=stage.expand_ratio, in_filters=in_filters if repeat == 0 else out_filters,
                out_filters=out_filters, se_ratio=stage.se_ratio, fused=stage.fused,
            ))
    return blocks


def _variant(name, blocks, width, depth, train, eval_, dropout, randaug, mixup, augment) -> VariantSpec:
    return VariantSpec(
        name=name, stages=tuple(decode_stage(b) for b in blocks), width=width, depth=depth,
        train_size=train, eval_size=eval_, dropout_rate=dropout, randaug_magnitude=randaug,
        mixup_alpha=mixup, augment=augment,
    )


# (blocks, width, depth, train size, eval size, dropout, RandAugment magnitude, mixup=cutmix alpha, augment)
VARIANTS: dict[str, VariantSpec] = {
    v.name: v for v in (
        _variant("efficientnetv2-b0", _BASE_BLOCKS, 1.0, 1.0, 192, 224, 0.2, 0, 0, "autoaug"),
        _variant("efficientnetv2-b1", _BASE_BLOCKS, 1.0, 1.1, 192, 240, 0.2, 0, 0, "autoaug"),
        _variant("efficientnetv2-b2", _BASE_BLOCKS, 1.1, 1.2, 208, 260, 0.3, 0, 0, "autoaug"),
        _variant("efficientnetv2-b3", _BASE_BLOCKS, 1.2, 1.4, 240, 300, 0.3, 0, 0, "autoaug"),
        _variant("efficientnetv2-s", _S_BLOCKS, 1.0, 1.0, 300, 384, 0.2, 10, 0, "randaug"),
        _variant("efficientnetv2-m", _M_BLOCKS, 1.0, 1.0, 384, 480, 0.3, 15, 0.2, "randaug"),
        _variant("efficientnetv2-l", _L_BLOCKS, 1.0, 1.0, 384, 480, 0.4, 20, 0.5, "randaug"),
        _variant("efficientnetv2-xl", _XL_BLOCKS, 1.0, 1.0, 384, 512, 0.4, 20, 0.5, "randaug"),
    )
}


def list_models() -> list[str]:
    """The eight official variant names."""
    return list(VARIANTS)


def get_variant(name: str) -> VariantSpec:
    """Looks up a variant; accepts the short form ('s', 'b0') too."""
    key = name if name.startswith("efficientnetv2-") else f"efficientnetv2-{name}"
    if key not in VARIANTS:
        raise ValueError(f"Unknown model {name!r}; valid choices: {', '.join(VARIANTS)}.")
    return VARIANTS[key]
