"""A trained model ready for inference: network, variables and eval preprocessing, from a checkpoint, a weights
file or an official checkpoint by name.

Shared by the `predict`, `evaluate` and `export` commands so that all three build the network exactly as the
trainer did (the checkpoint's config: width/depth overrides, dtype) and preprocess exactly as its eval did
(the config's eval size, resize method and crop rule; the variant's official ones when there is no config).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from efficientnetv2_jax import checkpoint as ckpt_lib
from efficientnetv2_jax import labels, pretrained
from efficientnetv2_jax.cli import UsageError
from efficientnetv2_jax.models import EfficientNetV2, create_model, get_variant, normalize_images
from efficientnetv2_jax.models.normalization import config_normalization

SAVED_MODEL_FILE = "saved_model.pb"

@dataclasses.dataclass(frozen=True)
class EvalPreprocessing:
    """How eval images are made: square size, resize method, the official crop rule, opt-in JPEG DCT downscale."""

    image_size: int
    resize_method: str
    crop_rule: str
    jpeg_downscale: bool = False


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A network with its variables, class count, eval preprocessing and the training config (if recorded)."""

    model: EfficientNetV2
    variables: dict
    model_name: str
    num_classes: int
    preprocessing: EvalPreprocessing
    config: ml_collections.ConfigDict | None
    label_set: str | None = None  # An official checkpoint's classes: 'imagenet2012' or 'imagenet21k'.

    @property
    def dataset(self) -> str | None:
        """The dataset the checkpoint was trained on, when its config (or the official registry) says so."""
        return self.config.dataset.name if self.config is not None else self.label_set

    @property
    def multi_label(self) -> bool:
        """Whether the classifier was trained with a sigmoid loss (independent per-class probabilities)."""
        if self.config is not None:
            return self.config.get("loss") == "sigmoid"
        return self.label_set == "imagenet21k"  # The official 21k checkpoints use the sigmoid loss.

    def logits_fn(self, features: bool = False):
        """uint8 (or [0, 255] float) NHWC images -> float32 logits, or pooled features; inference mode only."""
        model, name = self.model, self.model_name
        normalization = config_normalization(name, self.config)  # The training recipe's, as its eval step used.

        def apply(variables: dict, images: jax.Array) -> jax.Array:
            x = normalize_images(images, name, model.dtype, normalization)
            if features:
                return model.apply(variables, x, train=False, return_endpoints=True)["pooled_features"]
            return model.apply(variables, x, train=False).astype(jnp.float32)

        return apply


def eval_preprocessing(model_name: str, config: ml_collections.ConfigDict | None = None,
                       image_size: int | None = None) -> EvalPreprocessing:
    """The trainer's eval preprocessing for `config` (train.evaluate's rule), else the variant's official one."""
    variant = get_variant(model_name)
    if config is None:
        size = image_size or variant.eval_size
        return EvalPreprocessing(size, variant.resize_method, "v1" if variant.augment == "autoaug" else "v2")
    size = image_size or config.eval_image_size or variant.eval_size
    resize = "bicubic" if config.dataset.augment == "autoaug" else "bilinear"
    return EvalPreprocessing(size, resize, config.dataset.eval_crop_rule,
                             bool(config.dataset.get("jpeg_downscale", False)))


def build_network(model_name: str, num_classes: int, config: ml_collections.ConfigDict | None) -> EfficientNetV2:
    """The trainer's network for `config` (same width/depth/dtype), else the official variant."""
    if config is None:
        return create_model(model_name, num_classes=num_classes)
    from efficientnetv2_jax.train.program import build_model  # pylint: disable=import-outside-toplevel

    return build_model(config, num_classes)


def _num_classes(variables: dict) -> int:
    """Classifier width of `variables`; 0 for a headless backbone."""
    classifier = variables["params"].get("classifier")
    return 0 if classifier is None else int(np.shape(classifier["bias"])[0])


def _check_variables_fit(model: EfficientNetV2, variables: dict, source: str) -> None:
    """Raises UsageError naming the first leaf whose shape differs from what `model` expects."""
    expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
    want = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(expected)[0]}
    have = {jax.tree_util.keystr(p): tuple(np.shape(x))
            for p, x in jax.tree_util.tree_flatten_with_path({k: variables[k] for k in expected})[0]}
    for path in sorted(set(want) | set(have)):
        if want.get(path) != have.get(path):
            raise UsageError(f"{source} does not fit {model.model_name} (width {model.width}, depth {model.depth}): "
                           f"{path} is {have.get(path)} in the weights but {want.get(path)} in the model; "
                           "pass the right --model.")


def _resolve_model_name(recorded: str | None, requested: str | None, source: str) -> str:
    """The checkpoint's model name, checked against --model; --model is required when none is recorded."""
    try:
        requested = get_variant(requested).name if requested else None
    except ValueError as error:
        raise UsageError(str(error)) from error
    if recorded and requested and recorded != requested:
        raise UsageError(f"{source} holds a {recorded} checkpoint, not {requested}; drop --model or fix it.")
    if not (recorded or requested):
        raise UsageError(f"{source} records no model name; pass --model.")
    return recorded or requested


def _step_folder(path: epath.Path, step: int | None) -> tuple[epath.Path, int | None]:
    """(checkpoints folder, step) for a step folder such as `<workdir>/checkpoints/1347`; else (path, step)."""
    if not (path.name.isdigit() and (path / ckpt_lib.STATE_ITEM).exists()):
        return path, step
    if step is not None and step != int(path.name):
        raise UsageError(f"{path} is the folder of step {path.name} but --step {step} was given; pass one of them.")
    return path.parent, int(path.name)


def load_checkpoint(directory: str, model_name: str | None = None, *, step: int | None = None, ema: bool = True,
                    image_size: int | None = None) -> LoadedModel:
    """Loads a training workdir (EMA weights by default), one of its step folders (`.../checkpoints/1347`) or a
    save_variables directory for inference."""
    path = epath.Path(directory)
    if not path.is_dir():
        raise UsageError(f"Checkpoint directory {directory} does not exist.")
    if (path / SAVED_MODEL_FILE).exists():
        raise UsageError(f"{directory} is a TensorFlow SavedModel (what export writes), not a checkpoint; pass the "
                         "training workdir, a step folder of it, or a converted weights folder.")
    path, step = _step_folder(path, step)
    directory = str(path)
    try:
        metadata = ckpt_lib.restore_metadata(directory, step)
        variables = ckpt_lib.restore_variables(directory, step, ema=ema)
    except (ValueError, FileNotFoundError) as error:
        raise UsageError(str(error)) from error
    name = _resolve_model_name(metadata.get("model_name"), model_name, directory)
    config = ml_collections.ConfigDict(metadata["config"]) if metadata.get("config") else None
    return _assemble(name, variables, config, image_size, directory, metadata.get("num_classes"))


def load_weights(path: str, model_name: str | None = None, *, image_size: int | None = None) -> LoadedModel:
    """Loads converted weights: a save_variables directory, or a Keras .h5/.keras file (official variant)."""
    if epath.Path(path).is_dir():
        return load_checkpoint(path, model_name, image_size=image_size)
    if not epath.Path(path).exists():
        raise UsageError(f"Weights file {path} does not exist.")
    name = _resolve_model_name(None, model_name, path)
    from efficientnetv2_jax.convert import from_keras  # pylint: disable=import-outside-toplevel  # Keras on demand.

    try:
        variables = from_keras(path, name=name)
    except (ValueError, OSError) as error:
        raise UsageError(f"Cannot read {path} as Keras {name} weights: {error}") from error
    return _assemble(name, variables, None, image_size, path, None)


def load_pretrained(name: str, *, image_size: int | None = None) -> LoadedModel:
    """Loads official checkpoint `name` (`efficientnetv2_jax.pretrained`: downloaded and converted on first use).

    Preprocessing is the official eval one at the checkpoint's eval size (224 px for the 21k checkpoints, the
    variant's eval size otherwise); class names come from its label set.
    """
    try:
        entry = pretrained.get(name)
    except ValueError as error:
        raise UsageError(str(error)) from None
    loaded = load_checkpoint(str(pretrained.fetch(name)), image_size=image_size or entry.eval_size)
    return dataclasses.replace(loaded, label_set=entry.label_set)


def add_source_flags(parser: argparse.ArgumentParser, *, weights: bool) -> None:
    """The flags that choose the model (--checkpoint, [--weights], --pretrained, --step, --model), one code path
    for predict, evaluate and export."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="training workdir (EMA weights of the newest step), one of its step "
                                             "folders (checkpoints/<step>) or a converted weights folder")
    if weights:
        source.add_argument("--weights", help="converted weights: a variables dir or a Keras .h5/.keras file")
    source.add_argument("--pretrained", metavar="NAME", help="official checkpoint by name, e.g. "
                                                             "efficientnetv2-s-21k-ft1k (downloaded once, then cached)")
    parser.add_argument("--step", type=int, help="checkpoint step of a training workdir (default the newest)")
    parser.add_argument("--model", help="variant (b0..b3, s, m, l, xl); read from the checkpoint when recorded")


def load_from_flags(args: argparse.Namespace) -> LoadedModel:
    """The model that the flags of `add_source_flags` name (plus --image-size and --no-ema where the command has
    them)."""
    image_size = getattr(args, "image_size", None)
    if getattr(args, "weights", None):
        return load_weights(args.weights, args.model, image_size=image_size)
    if args.pretrained:
        if args.model or args.step is not None:
            raise UsageError("--pretrained names the model and its weights; drop --model and --step.")
        return load_pretrained(args.pretrained, image_size=image_size)
    return load_checkpoint(args.checkpoint, args.model, step=args.step, image_size=image_size,
                           ema=not getattr(args, "no_ema", False))


def _assemble(name: str, variables: dict, config: ml_collections.ConfigDict | None, image_size: int | None,
              source: str, num_classes: int | None) -> LoadedModel:
    """Builds the network for `variables` and checks that every leaf fits it."""
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    num_classes = _num_classes(variables) if num_classes is None else int(num_classes)
    if image_size is not None and image_size < 8:
        raise UsageError(f"Image size must be at least 8 pixels, got {image_size}.")
    model = build_network(name, num_classes, config)
    _check_variables_fit(model, variables, source)
    return LoadedModel(model=model, variables=variables, model_name=name, num_classes=num_classes,
                       preprocessing=eval_preprocessing(name, config, image_size), config=config)


def imagenet1k_class_names() -> tuple[str, ...]:
    """ImageNet-1k "<synset> <names>" in class order, from the official label file shipped with the package."""
    return labels.class_names("imagenet2012")


def class_names(loaded: LoadedModel) -> tuple[str, ...] | None:
    """Names of the classifier's classes: the training dataset's, ImageNet-1k's or -21k's, or None when unknown."""
    dataset = loaded.dataset or ("imagenet2012" if loaded.num_classes == labels.NUM_CLASSES["imagenet2012"] else None)
    if dataset in labels.NUM_CLASSES:  # The official label files, shipped with the package.
        return labels.class_names(dataset) if loaded.num_classes == labels.NUM_CLASSES[dataset] else None
    if dataset is None:
        return None
    from efficientnetv2_jax import data as data_lib  # pylint: disable=import-outside-toplevel

    try:
        names = data_lib.get_dataset_info(dataset, loaded.config.dataset.data_dir or None).class_names
    except Exception:  # pylint: disable=broad-except  # Dataset not prepared here: indices instead.
        return None
    return tuple(names) if names and len(names) == loaded.num_classes else None


def replicated_variables(variables: Any, mesh: jax.sharding.Mesh) -> Any:
    """The variables as float arrays replicated over `mesh`."""
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), variables)
