"""Import timm `tf_efficientnetv2_*` state dicts (`.safetensors`, or `.pth`/`.bin` with torch) into our variables.

timm's `tf_` EfficientNetV2 ports are the official networks (TF 'SAME' padding, BN epsilon 1e-3) with PyTorch
names and layouts: `conv_stem`/`bn1`, `blocks.<stage>.<index>.*`, `conv_head`/`bn2`, `classifier`; convolution
kernels OIHW, depthwise kernels (C, 1, k, k), the classifier (out, in). Block parts by kind: ConvBnAct (Fused-MBConv,
expansion 1) `conv`, `bn1`; EdgeResidual (Fused-MBConv) `conv_exp`, `bn1`, `conv_pwl`, `bn2`; InvertedResidual
(MBConv) `conv_pw`, `bn1`, `conv_dw`, `bn2`, `se.conv_reduce`, `se.conv_expand`, `conv_pwl`, `bn3`.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
from flax import traverse_util

from efficientnetv2_jax.convert.target import block_parts, target_leaves
from efficientnetv2_jax.models import get_variant, list_models
from efficientnetv2_jax.models.variants import round_repeats

TIMM_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_MBCONV = {"expand_conv": "conv_pw", "expand_bn": "bn1", "dwconv": "conv_dw", "bn": "bn2", "project_conv": "conv_pwl",
           "project_bn": "bn3"}
_FUSED = {"expand_conv": "conv_exp", "expand_bn": "bn1", "project_conv": "conv_pwl", "project_bn": "bn2"}
_FUSED_NO_EXPANSION = {"project_conv": "conv", "project_bn": "bn1"}
_TOP = {("stem", "conv"): "conv_stem", ("stem", "bn"): "bn1", ("head", "conv"): "conv_head", ("head", "bn"): "bn2"}
_SE = {"reduce": "se.conv_reduce", "expand": "se.conv_expand"}


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A timm state dict as numpy arrays: `.safetensors` through safetensors.numpy, `.pth`/`.pt`/`.bin` through
    torch (imported only here; never in a process that also runs TensorFlow, where it crashes)."""
    if not os.path.exists(path):
        raise ValueError(f"timm weights file {path} does not exist.")
    if not path.endswith(TIMM_FILE_SUFFIXES):
        raise ValueError(f"Unknown timm file type {path!r}; valid suffixes: {', '.join(TIMM_FILE_SUFFIXES)}.")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

        return load_file(path)
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise ValueError(f"Reading {path} needs torch (pip install torch), or convert it to .safetensors.") from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state.get("model", state)) if "conv_stem.weight" not in state else state
    return {key: value.float().numpy() for key, value in state.items()}


def _block_keys(model_name: str) -> list[str]:
    """timm's `blocks.<stage>.<index>` prefix of each of our global blocks, in order."""
    variant = get_variant(model_name)
    return [f"blocks.{stage}.{index}" for stage, spec in enumerate(variant.stages)
            for index in range(round_repeats(spec.repeats, variant.depth))]


def _infer_model_name(state: Mapping[str, np.ndarray]) -> str:
    """The variant with the same block layout and stem/head widths as the state dict."""
    blocks = {".".join(key.split(".")[:3]) for key in state if key.startswith("blocks.")}
    stem, head = state.get("conv_stem.weight"), state.get("conv_head.weight")
    for name in list_models():
        shapes = dict(target_leaves(name, 0))
        if (set(_block_keys(name)) == blocks and stem is not None and head is not None
                and shapes[("params", "stem", "conv", "kernel")][-1] == stem.shape[0]
                and shapes[("params", "head", "conv", "kernel")][-1] == head.shape[0]):
            return name
    raise ValueError(f"Not a timm tf_efficientnetv2 state dict, or not one of {', '.join(list_models())} "
                     f"({len(blocks)} blocks); pass the variant name.")


def _timm_key(path: tuple[str, ...], block_keys: list[str], parts_of: dict[str, set[str]]) -> str:
    """The timm key holding our leaf `path` (e.g. ('params', 'blocks_5', 'dwconv', 'kernel') -> ...conv_dw.weight)."""
    _, module, part, *rest = path
    leaf = rest[-1] if rest else part
    if module == "classifier":
        return f"classifier.{'weight' if leaf == 'kernel' else 'bias'}"
    if module in ("stem", "head"):
        layer = _TOP[module, part]
    else:
        parts = parts_of[module]
        kind = _MBCONV if "dwconv" in parts else _FUSED if "expand_conv" in parts else _FUSED_NO_EXPANSION
        layer = f"{block_keys[int(module[len('blocks_'):])]}.{_SE[rest[0]] if part == 'se' else kind[part]}"
    torch_leaf = _BN[leaf] if part.endswith("bn") or part == "bn" else ("weight" if leaf == "kernel" else leaf)
    return f"{layer}.{torch_leaf}"


def _to_ours(value: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
    """PyTorch layout -> ours: OIHW and (C, 1, k, k) -> HWIO and (k, k, 1, C); Linear (out, in) -> (in, out)."""
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2 and path[1] == "classifier":
        return value.T
    return value


def from_timm(path_or_state_dict: str | Mapping[str, np.ndarray], name: str | None = None) -> dict:
    """{'params', 'batch_stats'} (numpy float32) for `create_model(name, num_classes)` from a timm state dict.
    See `read_timm`."""
    return read_timm(path_or_state_dict, name)[1]


def read_timm(path_or_state_dict: str | Mapping[str, np.ndarray], name: str | None = None) -> tuple[str, dict]:
    """(variant name, {'params', 'batch_stats'} in numpy float32) from a timm state dict.

    `path_or_state_dict` is a file (`.safetensors`, `.pth`, `.pt`, `.bin`) or a mapping of numpy arrays. The
    variant is inferred from the block layout and widths when `name` is None, the class count from `classifier`.
    Shapes are checked leaf by leaf; a leftover key (other than BN's num_batches_tracked) is an error.
    """
    state = (load_state_dict(os.fspath(path_or_state_dict)) if isinstance(path_or_state_dict, (str, os.PathLike))
             else dict(path_or_state_dict))
    model_name = get_variant(name).name if name is not None else _infer_model_name(state)
    num_classes = int(state["classifier.bias"].shape[0]) if "classifier.bias" in state else 0
    targets = dict(target_leaves(model_name, num_classes))
    parts_of = block_parts(targets)
    block_keys = _block_keys(model_name)
    flat, used = {}, set()
    for path, target_shape in targets.items():
        key = _timm_key(path, block_keys, parts_of)
        if key not in state:
            raise ValueError(f"The state dict has no {key} (needed for {'/'.join(path)} of {model_name}).")
        value = _to_ours(np.asarray(state[key], dtype=np.float32), path)
        if value.shape != target_shape:
            raise ValueError(f"Shape mismatch: timm {key} gives shape {value.shape} but our {'/'.join(path)} of "
                             f"{model_name} needs {target_shape}.")
        flat[path] = value
        used.add(key)
    unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if unused:
        raise ValueError(f"The state dict has {len(unused)} tensor(s) that {model_name} has no place for, e.g. "
                         f"{unused[0]}: is it really timm's tf_{model_name.replace('-', '_')}?")
    return model_name, traverse_util.unflatten_dict(flat)
