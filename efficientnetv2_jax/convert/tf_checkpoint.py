"""Import the official EfficientNetV2 TF checkpoints (`efficientnetv2-<v>`, `-21k`, `-21k-ft1k`) into our variables.

The official code (google/automl efficientnetv2/effnetv2_model.py) names its variables by Keras' per-scope
counters under the model name, e.g. `efficientnetv2-s/blocks_10/tpu_batch_normalization_2/moving_mean`:
- stem: `stem/conv2d/kernel`, `stem/tpu_batch_normalization/{gamma,beta,moving_mean,moving_variance}`;
- block N (numbered globally): its plain convolutions in creation order are `conv2d`, `conv2d_1` (expand, then
  project; a Fused-MBConv with expansion 1 has only `conv2d`), its batch norms `tpu_batch_normalization`, `_1`,
  `_2` in creation order (expand, depthwise, project), the depthwise kernel `depthwise_conv2d/depthwise_kernel`,
  and squeeze-excite `se/conv2d` (reduce) and `se/conv2d_1` (expand) with biases;
- head: `head/conv2d/kernel`, `head/tpu_batch_normalization/...`, `head/dense/{kernel,bias}`.
A checkpoint written by the official `main.py` under TF 2.x names the classifier `head_1/dense/{kernel,bias}`:
effnetv2_model.py creates it inside a legacy `tf.name_scope('head')`, which TF 2.x makes unique because the Head
layer already holds `head`. It is the only scope the official model opens by hand (every other name is a Keras
layer's own), so `head_1/dense` is the only alias accepted (TF2_SCOPE_ALIASES).
Training checkpoints hold `<name>/ExponentialMovingAverage` shadows, which the official evaluation uses; they
are preferred here too. Names as read by public converters of these checkpoints: sebastian-sz/efficientnet-v2-keras
(`scripts/convert_weights.py`: stem/blocks/head maps, `use_ema` picks the `ExponentialMovingAverage` names) and
leondgarse/keras_efficientnet_v2 (`model_name + '/' + layer name` with `tpu_batch_normalization`).
"""

from __future__ import annotations

import os
import re

import numpy as np
from flax import traverse_util

from efficientnetv2_jax.convert.target import block_parts, target_leaves
from efficientnetv2_jax.models import get_variant, list_models

EMA_SUFFIX = "/ExponentialMovingAverage"
# Optimizer slots and bookkeeping that a training checkpoint holds beside the model variables.
_NON_MODEL = re.compile(r"(/ExponentialMovingAverage|/RMSProp(_\d+)?|/Momentum|/Adam(_\d+)?)$|^global_step$")
_BN_LEAVES = {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"}
_CONV_PARTS = ("conv", "expand_conv", "project_conv")  # Plain convolutions, counted as conv2d, conv2d_1 ...
_BN_PARTS = ("bn", "expand_bn", "project_bn")  # Batch norms, counted as tpu_batch_normalization, _1 ...
_CREATION_ORDER = ("expand_conv", "expand_bn", "dwconv", "bn", "se", "project_conv", "project_bn")
# Released scope -> the name a TF 2.x run of the official code gives it (see the module docstring).
TF2_SCOPE_ALIASES = {"head/dense/": "head_1/dense/"}


def _counter_name(base: str, index: int) -> str:
    return base if index == 0 else f"{base}_{index}"


def _block_layer_names(parts: list[str]) -> dict[str, str]:
    """Our module names inside one block -> the official layer names, by creation-order counters."""
    names, convs, bns = {}, 0, 0
    for part in sorted(parts, key=_CREATION_ORDER.index):
        if part in _CONV_PARTS:
            names[part], convs = _counter_name("conv2d", convs), convs + 1
        elif part in _BN_PARTS:
            names[part], bns = _counter_name("tpu_batch_normalization", bns), bns + 1
        elif part == "dwconv":
            names[part] = "depthwise_conv2d"
        elif part == "se":
            names[part] = "se"
    return names


def official_names(model_name: str, num_classes: int) -> dict[tuple[str, ...], str]:
    """{our flattened variable path: official TF variable name} for `create_model(model_name, num_classes)`."""
    variant = get_variant(model_name)
    return _official_names(variant.name, [path for path, _ in target_leaves(variant.name, num_classes)])


def _official_names(model_name: str, leaves: list[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    layer_names = {block: _block_layer_names(sorted(parts)) for block, parts in block_parts(leaves).items()}
    top = {"stem": {"conv": "conv2d", "bn": "tpu_batch_normalization"},
           "head": {"conv": "conv2d", "bn": "tpu_batch_normalization"}}
    names = {}
    for path in leaves:
        _, module, part, *rest = path
        leaf = rest[-1] if rest else part
        if module == "classifier":
            names[path] = f"{model_name}/head/dense/{leaf}"
            continue
        layer = (top.get(module) or layer_names[module])[part]
        if part == "se":  # se/reduce -> se/conv2d, se/expand -> se/conv2d_1.
            layer = f"se/{'conv2d' if rest[0] == 'reduce' else 'conv2d_1'}"
        tf_leaf = _BN_LEAVES[leaf] if part in _BN_PARTS else ("depthwise_kernel" if part == "dwconv" else leaf)
        names[path] = f"{model_name}/{module}/{layer}/{tf_leaf}"
    return names


def _checkpoint_name(name: str, model_name: str, shapes: dict[str, list[int]]) -> str:
    """`name` as this checkpoint spells it: the released official name, else its TF 2.x alias when present."""
    for released, renamed in TF2_SCOPE_ALIASES.items():
        prefix = f"{model_name}/{released}"
        alias = f"{model_name}/{renamed}{name[len(prefix):]}"
        if name.startswith(prefix) and name not in shapes and alias in shapes:
            return alias
    return name


def _reader(path: str):
    """A checkpoint reader for a directory (its `checkpoint` file, else its only `*.index`) or a prefix."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  # TensorFlow only when converting.

    path = os.fspath(path)
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        indexes = [name[:-len(".index")] for name in sorted(os.listdir(path)) if name.endswith(".index")]
        if latest is None and len(indexes) != 1:
            raise ValueError(f"{path} holds no TF checkpoint (no `checkpoint` file and {len(indexes)} *.index "
                             "files); pass the checkpoint prefix, e.g. <dir>/model.ckpt-12345.")
        path = latest or os.path.join(path, indexes[0])
    elif not os.path.exists(path + ".index"):
        raise ValueError(f"TF checkpoint {path} does not exist (neither a directory nor a prefix with .index).")
    return tf.train.load_checkpoint(path)


def _model_name(shapes: dict[str, list[int]]) -> str:
    """The variant whose name prefixes the checkpoint's variables (`efficientnetv2-s/...`)."""
    prefixes = {name.split("/")[0] for name in shapes if "/" in name}
    found = sorted(prefixes & set(list_models()))
    if len(found) != 1:
        raise ValueError(f"Not an official EfficientNetV2 checkpoint: its variables start with "
                         f"{sorted(prefixes)[:5]}, expected one of {', '.join(list_models())}.")
    return found[0]


def from_tf_checkpoint(path: str, name: str | None = None, ema: bool = True) -> dict:
    """{'params', 'batch_stats'} (numpy float32) for `create_model(name, num_classes)` from an official checkpoint.
    See `read_tf_checkpoint`."""
    return read_tf_checkpoint(path, name, ema)[1]


def read_tf_checkpoint(path: str, name: str | None = None, ema: bool = True) -> tuple[str, dict]:
    """(variant name, {'params', 'batch_stats'} in numpy float32) from an official checkpoint.

    `path` is a checkpoint directory or prefix. The variant comes from the variables' name prefix (`name`, when
    given, must agree), the class count from `head/dense/kernel` (or `head_1/dense/kernel`, its TF 2.x
    name; 0 when the checkpoint has no classifier). With
    `ema` (the default, as the official evaluation) every variable's `/ExponentialMovingAverage` shadow is used
    where the checkpoint has one. Shapes are checked leaf by leaf, and a model variable left unused is an error.
    """
    reader = _reader(path)
    shapes = reader.get_variable_to_shape_map()
    model_name = _model_name(shapes)
    if name is not None and get_variant(name).name != model_name:
        raise ValueError(f"The checkpoint holds {model_name}, not {get_variant(name).name}.")
    dense = shapes.get(_checkpoint_name(f"{model_name}/head/dense/kernel", model_name, shapes))
    num_classes = int(dense[1]) if dense else 0
    targets = dict(target_leaves(model_name, num_classes))
    flat, used = {}, set()
    for path_, official in _official_names(model_name, list(targets)).items():
        tf_name = _checkpoint_name(official, model_name, shapes)
        if tf_name not in shapes:
            raise ValueError(f"The checkpoint has no variable {tf_name} (needed for {'/'.join(path_)}).")
        source = tf_name + EMA_SUFFIX if ema and tf_name + EMA_SUFFIX in shapes else tf_name
        value = np.asarray(reader.get_tensor(source), dtype=np.float32)
        if path_[2] == "dwconv":  # TF depthwise kernels are (k, k, C, 1); ours are (k, k, 1, C).
            value = value.transpose(0, 1, 3, 2)
        if value.shape != targets[path_]:
            raise ValueError(f"Shape mismatch: {source} has shape {value.shape} but our {'/'.join(path_)} of "
                             f"{model_name} needs {targets[path_]}.")
        flat[path_] = value
        used.add(tf_name)
    unused = sorted(n for n in shapes if n.startswith(model_name + "/") and n not in used and not _NON_MODEL.search(n))
    if unused:
        raise ValueError(f"The checkpoint has {len(unused)} model variable(s) that {model_name} has no place for, "
                         f"e.g. {unused[0]}.")
    return model_name, traverse_util.unflatten_dict(flat)
