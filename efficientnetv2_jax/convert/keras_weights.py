"""Import `keras.applications.EfficientNetV2*` weights (a model object or a saved file) into our variables.

Keras names its layers `stem_conv`, `block{stage}{letter}_<part>`, `top_conv`, `predictions`; our blocks are
numbered globally (`blocks_0` ... `blocks_{N-1}`), so the mapping walks the official stage table in order.
Keras folds the input rescaling into the model (Rescaling/Normalization layers without weights); our models
take inputs already normalised by `efficientnetv2_jax.models.normalize_images`, which computes the same
function, so that part needs no conversion.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

import numpy as np
from flax import traverse_util

from efficientnetv2_jax.convert.target import target_leaves
from efficientnetv2_jax.models import get_variant
from efficientnetv2_jax.models.variants import VariantSpec, round_repeats

# Our variant name -> the keras.applications constructor (Keras has no XL).
KERAS_CONSTRUCTORS = {
    "efficientnetv2-b0": "EfficientNetV2B0",
    "efficientnetv2-b1": "EfficientNetV2B1",
    "efficientnetv2-b2": "EfficientNetV2B2",
    "efficientnetv2-b3": "EfficientNetV2B3",
    "efficientnetv2-s": "EfficientNetV2S",
    "efficientnetv2-m": "EfficientNetV2M",
    "efficientnetv2-l": "EfficientNetV2L",
}
KERAS_FILE_SUFFIXES = (".weights.h5", ".h5", ".keras")

# Our module path -> Keras layer name (outside the blocks) or layer-name suffix (inside `block{stage}{letter}_`).
_TOP_LAYERS = {"stem/conv": "stem_conv", "stem/bn": "stem_bn", "head/conv": "top_conv", "head/bn": "top_bn",
               "classifier": "predictions"}
_BLOCK_LAYERS = {"expand_conv": "expand_conv", "expand_bn": "expand_bn", "dwconv": "dwconv2", "bn": "bn",
                 "se/reduce": "se_reduce", "se/expand": "se_expand", "project_conv": "project_conv",
                 "project_bn": "project_bn"}
_BN_WEIGHTS = {"scale": "gamma", "bias": "beta", "mean": "moving_mean", "var": "moving_variance"}
_KERAS_BLOCK_RE = re.compile(r"^(block\d+[a-z]_)")
# Keras' load_weights error for a file of another variant: its first failing variable, with shapes, then the
# variable's whole value (hundreds of KB for all failing layers); only the names and shapes are kept.
_KERAS_MISMATCH = re.compile(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\))\. "
                             r"Target variable: <Variable path=([\w/]+)")
_KERAS_FAILURES = re.compile(r"A total of (\d+) objects could not be loaded")


def _keras_variant(name: str) -> VariantSpec:
    """The variant for `name`, refusing XL (no Keras port) with a pointer to the TF checkpoint importer."""
    variant = get_variant(name)
    if variant.name not in KERAS_CONSTRUCTORS:
        raise ValueError(f"{variant.name} has no Keras port (keras.applications stops at -l); import it from the "
                         "official TF checkpoint instead (`python -m efficientnetv2_jax.convert tf`). Keras variants: "
                         f"{', '.join(KERAS_CONSTRUCTORS)}.")
    return variant


def keras_block_prefixes(variant: VariantSpec) -> list[str]:
    """Keras' `block{stage}{letter}_` prefix of each of our global blocks, in order."""
    return [f"block{stage + 1}{chr(ord('a') + repeat)}_"
            for stage, spec in enumerate(variant.stages)
            for repeat in range(round_repeats(spec.repeats, variant.depth))]


def _keras_layer_name(module_path: str, prefixes: list[str]) -> str:
    """The Keras layer holding our module `module_path` (e.g. 'blocks_3/se/reduce' -> 'block2b_se_reduce')."""
    head, _, rest = module_path.partition("/")
    if head.startswith("blocks_"):
        return prefixes[int(head[len("blocks_"):])] + _BLOCK_LAYERS[rest]
    return _TOP_LAYERS[module_path]


def _infer_variant(model: Any) -> VariantSpec:
    """The variant of a Keras model: from its name, else the unique Keras variant with its number of blocks."""
    try:
        return _keras_variant(model.name)
    except ValueError:
        pass
    num_blocks = len({m.group(1) for layer in model.layers if (m := _KERAS_BLOCK_RE.match(layer.name))})
    matches = [name for name in KERAS_CONSTRUCTORS if len(keras_block_prefixes(get_variant(name))) == num_blocks]
    if len(matches) != 1:
        raise ValueError(f"Cannot tell which EfficientNetV2 the Keras model {model.name!r} ({num_blocks} blocks) "
                         f"is; pass name=, one of {', '.join(KERAS_CONSTRUCTORS)}.")
    return get_variant(matches[0])


def _keras_num_classes(model: Any) -> int:
    """Classes of the Keras `predictions` layer; 0 for a headless model (include_top=False)."""
    names = {layer.name for layer in model.layers}
    return int(model.get_layer("predictions").kernel.shape[-1]) if "predictions" in names else 0


def _keras_weight(layers: dict, layer_name: str, leaf: str, our_path: str) -> tuple[str, np.ndarray]:
    """('layer/weight', value) of the Keras weight that fills our leaf `our_path`."""
    if layer_name not in layers:
        raise ValueError(f"The Keras model has no layer {layer_name!r} (needed for {our_path}).")
    layer = layers[layer_name]
    weights = {w.name: w for w in layer.weights}
    weight_name = _BN_WEIGHTS[leaf] if type(layer).__name__ == "BatchNormalization" else leaf
    if weight_name not in weights:
        raise ValueError(f"Keras layer {layer_name!r} has no weight {weight_name!r} (needed for {our_path}); "
                         f"it has {sorted(weights)}.")
    return f"{layer_name}/{weight_name}", np.asarray(weights[weight_name].numpy(), dtype=np.float32)


def _convert_model(model: Any, variant: VariantSpec) -> dict:
    """Fills every leaf of our variables from the Keras model, checking shapes and that no Keras weight is left."""
    prefixes = keras_block_prefixes(variant)
    layers = {layer.name: layer for layer in model.layers}
    used: set[str] = set()
    flat = {}
    for path, target_shape in target_leaves(variant.name, _keras_num_classes(model)):
        _, *module, leaf = path
        our_path = "/".join(path)
        layer_name = _keras_layer_name("/".join(module), prefixes)
        keras_path, value = _keras_weight(layers, layer_name, leaf, our_path)
        if module[-1] == "dwconv":  # Keras depthwise kernels are (k, k, C, 1); ours are (k, k, 1, C).
            value = value.transpose(0, 1, 3, 2)
        if value.shape != target_shape:
            raise ValueError(f"Shape mismatch: Keras {keras_path} has shape {value.shape} but our {our_path} of "
                             f"{variant.name} needs {target_shape}.")
        flat[path] = value
        used.add(keras_path)
    unused = [f"{layer.name}/{w.name}" for layer in model.layers for w in layer.weights
              if f"{layer.name}/{w.name}" not in used]
    if unused:
        raise ValueError(f"The Keras model has {len(unused)} weight(s) that {variant.name} has no place for, e.g. "
                         f"{unused[0]}: is it really {variant.name}?")
    return traverse_util.unflatten_dict(flat)


def _h5_num_classes(path: str) -> int:
    """Classes of a weights file: the width of its only rank-2 weight (the Dense kernel), 0 when headless."""
    import h5py  # pylint: disable=import-outside-toplevel  # Comes with Keras; needed only for files.

    shapes = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda _, obj: shapes.append(obj.shape) if isinstance(obj, h5py.Dataset) else None)
    kernels = [shape for shape in shapes if len(shape) == 2]
    if len(kernels) > 1:
        raise ValueError(f"{path} holds {len(kernels)} dense kernels; an EfficientNetV2 has at most one.")
    return int(kernels[0][1]) if kernels else 0


def load_keras_model(path: str, name: str) -> Any:
    """Builds the keras.applications model of variant `name` (weights=None) and loads the file at `path` into it."""
    import keras  # pylint: disable=import-outside-toplevel  # Keras (and TensorFlow) only when converting.

    variant = _keras_variant(name)
    if not os.path.exists(path):
        raise ValueError(f"Keras weights file {path} does not exist.")
    if not path.endswith(KERAS_FILE_SUFFIXES):
        raise ValueError(f"Unknown Keras file type {path!r}; valid suffixes: {', '.join(KERAS_FILE_SUFFIXES)}.")
    if path.endswith(".keras"):
        return keras.saving.load_model(path, compile=False)
    num_classes = _h5_num_classes(path)
    constructor = getattr(keras.applications, KERAS_CONSTRUCTORS[variant.name])
    model = constructor(weights=None, include_top=num_classes > 0, classes=max(num_classes, 1),
                        classifier_activation=None)
    try:
        with warnings.catch_warnings():  # One UserWarning per skipped container for a file of another variant.
            warnings.simplefilter("ignore")
            model.load_weights(path)
    except Exception as error:  # pylint: disable=broad-except  # Keras raises many types for a wrong file.
        raise ValueError(_load_error_line(path, variant, num_classes, error)) from None
    return model


def _load_error_line(path: str, variant: VariantSpec, num_classes: int, error: Exception) -> str:
    """One line for Keras' load_weights failure: the first Keras layer that does not fit and our parameter."""
    text = str(error)
    match = _KERAS_MISMATCH.search(text)
    if match is None:
        return f"Could not load {path} into Keras {variant.name}: {' '.join(text.split())[:300]}"
    model_shape, file_shape, keras_path = match.groups()
    failures = _KERAS_FAILURES.search(text)
    return (f"{path} does not fit Keras {variant.name}: Keras layer {keras_path.split('/')[0]} (weight "
            f"{keras_path}) is {file_shape} in the file but {model_shape} in the model, our "
            f"{_our_path(keras_path, variant, num_classes)}"
            f"{f'; {failures.group(1)} layers differ' if failures else ''}. Is the file another variant?")


def _our_path(keras_path: str, variant: VariantSpec, num_classes: int) -> str:
    """Our parameter filled from Keras weight `layer/weight` (e.g. 'stem_conv/kernel' -> 'params/stem/conv/kernel')."""
    prefixes = keras_block_prefixes(variant)
    for path, _ in target_leaves(variant.name, num_classes):
        _, *module, leaf = path
        weight = _BN_WEIGHTS[leaf] if module[-1].endswith("bn") else leaf
        if f"{_keras_layer_name('/'.join(module), prefixes)}/{weight}" == keras_path:
            return "/".join(path)
    return "(none)"


def from_keras(model_or_path: Any, name: str | None = None) -> dict:
    """{'params', 'batch_stats'} (numpy float32) for `create_model(name, num_classes)` from Keras EfficientNetV2.

    `model_or_path` is a `keras.applications.EfficientNetV2*` model object (the variant is inferred from its name
    or block count when `name` is None) or a `.h5` / `.weights.h5` / `.keras` file (then `name` is required).
    The class count comes from the Keras `predictions` layer; a model built with include_top=False gives the
    headless `num_classes=0` variables. Feed our model `normalize_images(images, name)`: it equals Keras'
    in-model rescaling (x/128-1 for S/M/L; /255 then ImageNet mean/variance for B0-B3). Shapes are checked leaf
    by leaf and a mismatch raises ValueError naming the Keras weight and our path.
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        if name is None:
            raise ValueError(f"Converting the file {model_or_path} needs the variant name: pass name=, one of "
                             f"{', '.join(KERAS_CONSTRUCTORS)}.")
        model_or_path = load_keras_model(os.fspath(model_or_path), name)
    variant = _infer_variant(model_or_path) if name is None else _keras_variant(name)
    return _convert_model(model_or_path, variant)
