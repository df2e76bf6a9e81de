"""``folder:<path>`` datasets: a user's own class sub-folders of JPEG/PNG images.

Two layouts are accepted:
  * split folders — ``<path>/train/<class>/*`` plus ``<path>/eval/<class>/*`` (``test``, ``val`` or
    ``validation`` are accepted too): each split is read from its own folder;
  * one folder — ``<path>/<class>/*``: a fixed, deterministic hold-out of about ``EVAL_PERCENT`` percent
    of each class, chosen by a CRC32 hash of the file's relative path (stable when files are added),
    forms ``eval``; the rest is ``train``; ``all`` is everything.
Class names are the sorted sub-folder names of the train folder (label = position in that list).
Listing goes through ``tf.io.gfile``, so the folder may live on gs:// (images are read with gfile too).
"""

from __future__ import annotations

import dataclasses
import os
import zlib

import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
EVAL_FOLDER_NAMES = ("eval", "test", "validation", "val")
EVAL_PERCENT = 10


@dataclasses.dataclass(frozen=True)
class FolderSplit:
    """File paths and integer labels of one split of a folder dataset."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]


def _class_folders(root: str) -> list[str]:
    names = (d.rstrip("/") for d in tf.io.gfile.listdir(root))
    return sorted(d for d in names if not d.startswith(".") and tf.io.gfile.isdir(os.path.join(root, d)))


def _image_files(class_dir: str) -> list[str]:
    files = []
    for directory, _, names in tf.io.gfile.walk(class_dir):
        files.extend(os.path.join(directory, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(files)


def _in_eval_holdout(root: str, path: str) -> bool:
    relative = path[len(root):].lstrip("/")  # Paths are listed under root; no OS call, so gs:// works too.
    return zlib.crc32(relative.encode()) % 100 < EVAL_PERCENT


def _eval_folder(root: str) -> str | None:
    for name in EVAL_FOLDER_NAMES:
        if tf.io.gfile.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def load_folder_split(root: str, split: str) -> FolderSplit:
    """Lists the images of ``split`` ('train', 'eval' or 'all') under ``root``; clear errors when empty."""
    root = os.path.expanduser(root)
    if not tf.io.gfile.isdir(root):
        raise FileNotFoundError(f"Folder dataset {root!r} does not exist; point 'folder:<path>' at a directory "
                                "holding one sub-folder of JPEG/PNG images per class.")
    if split not in ("train", "eval", "all"):
        raise ValueError(f"Unknown split {split!r} for a folder dataset; valid: 'train', 'eval', 'all'.")
    eval_dir = _eval_folder(root)
    split_layout = eval_dir is not None and tf.io.gfile.isdir(os.path.join(root, "train"))
    class_root = os.path.join(root, "train") if split_layout else root
    class_names = _class_folders(class_root)
    if not class_names:
        raise FileNotFoundError(f"No class sub-folders in {class_root!r}: put each class's images in "
                                f"<path>/<class_name>/ (extensions {IMAGE_EXTENSIONS}).")
    if split_layout:
        roots = {"train": [os.path.join(root, "train")], "eval": [eval_dir]}.get(split, [os.path.join(root, "train"), eval_dir])
    else:
        roots = [root]
    paths, labels = [], []
    for split_root in roots:
        for label, name in enumerate(class_names):
            class_dir = os.path.join(split_root, name)
            files = _image_files(class_dir) if tf.io.gfile.isdir(class_dir) else []
            if not split_layout and split != "all":
                files = [f for f in files if _in_eval_holdout(root, f) == (split == "eval")]
            paths.extend(files)
            labels.extend([label] * len(files))
    if not paths:
        raise FileNotFoundError(f"No {IMAGE_EXTENSIONS} images for split {split!r} under {roots}.")
    return FolderSplit(paths=tuple(paths), labels=tuple(labels), class_names=tuple(class_names))
