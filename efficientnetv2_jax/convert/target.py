"""What every importer fills: the leaves of our variables for a variant, in network order."""

from __future__ import annotations

import functools
from typing import Iterable

import jax
import numpy as np
from flax import traverse_util

from efficientnetv2_jax.models import create_model

_PART_ORDER = ("conv", "expand_conv", "expand_bn", "dwconv", "bn", "se", "project_conv", "project_bn")


def _network_order(path: tuple[str, ...]) -> tuple:
    """Sort key: params before batch_stats, then layers in network order, so errors name the earliest layer."""
    collection, module, part = path[0], path[1], path[2]
    rank = {"stem": -1, "head": 10**6, "classifier": 10**6 + 1}.get(module)
    rank = int(module[len("blocks_"):]) if rank is None else rank
    return collection != "params", rank, _PART_ORDER.index(part) if part in _PART_ORDER else 0, path


@functools.lru_cache(maxsize=8)
def target_leaves(model_name: str, num_classes: int) -> tuple[tuple[tuple[str, ...], tuple[int, ...]], ...]:
    """[(('params'|'batch_stats', module, ..., leaf), shape)] of `create_model(model_name, num_classes)`, in
    network order; computed with jax.eval_shape, so even XL costs no memory."""
    model = create_model(model_name, num_classes=num_classes)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
    leaves = traverse_util.flatten_dict(shapes)
    return tuple((path, tuple(leaves[path].shape)) for path in sorted(leaves, key=_network_order))


def block_parts(paths: Iterable[tuple[str, ...]]) -> dict[str, set[str]]:
    """{'blocks_N': the names of our modules inside that block} for flattened variable paths."""
    parts: dict[str, set[str]] = {}
    for path in paths:
        if path[1].startswith("blocks_"):
            parts.setdefault(path[1], set()).add(path[2])
    return parts
