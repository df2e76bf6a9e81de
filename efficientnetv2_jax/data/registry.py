"""Dataset registry: what each supported dataset is called, where it lives and how its labels look.

Names:
  * ``digits`` — the embedded default: scikit-learn's 1,797 real 8x8 handwritten digits as an offline
    TFDS dataset (ArrayRecord), built on first use (see ``digits.py``).
  * ``imagenet2012`` — TFDS with a manual download dir; ``train`` = ``train[:98%]``, ``minival`` =
    ``train[98%:]`` (held out for model selection, as the official ``imagenettfds`` config),
    ``eval`` = ``validation``, ``trainval`` = all of ``train``.
  * ``imagenet21k`` — the official TFRecords converted once to ArrayRecord by
    ``python -m efficientnetv2_jax.data.prepare_imagenet21k`` into ``<data_dir>/imagenet21k``.
  * ``cifar10``, ``cifar100``, ``oxford_flowers102``, ``cars196``, ``tf_flowers`` and any other TFDS
    image-classification name (prepared with ``file_format='array_record'`` for random access).
  * ``folder:<path>`` — class sub-folders of JPEG/PNG files (see ``folder_source.py`` for the splits).

Split names given to the iterators are the aliases ``train``, ``eval``, ``minival`` (where defined)
and ``trainval``; any other string is passed to TFDS unchanged (e.g. ``'train[:10%]'``).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

DIGITS_TFDS_NAME = "sklearn_digits"
IMAGENET21K_NUM_CLASSES = 21843
FOLDER_PREFIX = "folder:"
# Labels leave the host as this many class indices per example (plus a count) for multi-label datasets:
# the official 21k TFRecords carry a handful per image; more is reported as an error, never truncated.
MULTI_LABEL_WIDTH = 32


def label_width(multi_label: bool) -> int:
    """W of the int32 [batch, W] label indices a host sends: 1 for single-label datasets."""
    return MULTI_LABEL_WIDTH if multi_label else 1


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static description of one dataset: source kind, split aliases, keys and label format."""

    name: str
    source: str  # 'tfds', 'imagenet21k' or 'folder'
    tfds_name: str | None = None
    split_aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    image_key: str = "image"
    label_key: str = "label"
    multi_label: bool = False
    num_classes: int | None = None  # None: read from the TFDS metadata or the folder
    manual_download_files: tuple[str, ...] = ()
    path: str | None = None  # for folder datasets

    def resolve_split(self, split: str) -> str:
        """Maps an alias ('train', 'eval', 'minival', 'trainval') to the source's split string."""
        if split in self.split_aliases:
            return self.split_aliases[split]
        if split == "minival":
            raise ValueError(
                f"Dataset {self.name!r} defines no 'minival' split; use one of {sorted(self.split_aliases)} "
                "or an explicit TFDS slice such as 'train[95%:]'."
            )
        if self.source != "tfds":
            raise ValueError(f"Unknown split {split!r} for dataset {self.name!r}; valid: {sorted(self.split_aliases)}.")
        return split


def _tfds_entry(name: str, train: str, evaluation: str, **extra) -> DatasetSpec:
    """Registry entry for a TFDS dataset with the usual train/eval aliases."""
    aliases = {"train": train, "eval": evaluation, "trainval": train, **extra.pop("aliases", {})}
    return DatasetSpec(name=name, source="tfds", tfds_name=name, split_aliases=aliases, **extra)


_REGISTRY: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        name="digits",
        source="tfds",
        tfds_name=DIGITS_TFDS_NAME,
        split_aliases={"train": "train", "eval": "test", "trainval": "train"},
        num_classes=10,
    ),
    "imagenet2012": _tfds_entry(
        "imagenet2012",
        train="train[:98%]",
        evaluation="validation",
        aliases={"minival": "train[98%:]", "trainval": "train"},
        num_classes=1000,
        manual_download_files=("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
    ),
    "imagenet21k": DatasetSpec(
        name="imagenet21k",
        source="imagenet21k",
        split_aliases={"train": "train", "eval": "eval", "minival": "minival"},
        label_key="labels",
        multi_label=True,
        num_classes=IMAGENET21K_NUM_CLASSES,
    ),
    "cifar10": _tfds_entry("cifar10", train="train", evaluation="test", num_classes=10),
    "cifar100": _tfds_entry("cifar100", train="train", evaluation="test", num_classes=100),
    "oxford_flowers102": _tfds_entry("oxford_flowers102", train="train+validation", evaluation="test", num_classes=102),
    "cars196": _tfds_entry("cars196", train="train", evaluation="test", num_classes=196),
    "tf_flowers": _tfds_entry("tf_flowers", train="train[:70%]", evaluation="train[70%:]", num_classes=5),
}


def registered_names() -> list[str]:
    """Names with a dedicated registry entry (any other TFDS image-classification name works too)."""
    return sorted(_REGISTRY)


def get_dataset_spec(name: str) -> DatasetSpec:
    """Returns the spec for ``name``; raises ValueError naming the valid choices when it is unknown."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(FOLDER_PREFIX):
        path = name[len(FOLDER_PREFIX) :]
        if not path:
            raise ValueError("'folder:' needs a path, e.g. 'folder:/data/my_images' (class sub-folders inside).")
        return DatasetSpec(
            name=name,
            source="folder",
            path=path,
            split_aliases={"train": "train", "eval": "eval", "trainval": "all", "all": "all", "test": "eval"},
        )
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    if name in tfds.list_builders():
        return _tfds_entry(name, train="train", evaluation="test")
    raise ValueError(
        f"Unknown dataset {name!r}. Valid: {registered_names()}, 'folder:<path>' (class sub-folders of JPEG/PNG) "
        "or any TFDS image-classification name (see tfds.list_builders())."
    )
