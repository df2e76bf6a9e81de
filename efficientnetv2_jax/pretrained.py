"""The official EfficientNetV2 checkpoints by name: download once, verify, convert once, cache; then offline.

    variables = pretrained.load("efficientnetv2-s-21k-ft1k")                 # {'params', 'batch_stats'}
    model, variables = pretrained.create_pretrained_model("s", "21k-ft1k")   # the network to apply them with

Names (the official README's table, google/automl efficientnetv2/README.md): `efficientnetv2-<b0..b3,s,m,l>`
(ImageNet-1k), `efficientnetv2-<b0..b3,s,m,l,xl>-21k` (ImageNet-21k pretraining, 21,843 sigmoid outputs) and
`efficientnetv2-<b0..b3,s,m,l,xl>-21k-ft1k` (21k then 1k). Each is `<base>/<name>.tgz` with base
`https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/v2` (environment variable
`EFFICIENTNETV2_JAX_WEIGHTS_URL` overrides it; `file://` works), a tar.gz of a folder holding a TF checkpoint.

Cache (`cache_dir`, else `$EFFICIENTNETV2_JAX_CACHE`, else `~/.cache/efficientnetv2_jax`):
    downloads/<name>.tgz.part   a partial download, resumed by the next call (HTTP Range)
    downloads/<name>.tgz        a complete archive, or one dropped here by hand on an air-gapped machine
    weights/<name>/             the converted variables (a `save_variables` folder: `--checkpoint` reads it)
A per-name file lock serialises processes that ask for the same name; the converted folder is written under
`tmp/` and renamed into `weights/` whole, so it exists only when complete. The archive is deleted once
converted. A corrupt archive (bad gzip/tar, unsafe member paths, no checkpoint inside, not the variant or class
count the name promises, or an MD5 other than GCS's x-goog-hash) is deleted and reported, never converted.

Sizes and checksums: the official README publishes none, so none are recorded here; the bucket's own MD5
(the `x-goog-hash` response header) is checked on every download where the server sends it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import pathlib
import shutil
import sys
import tarfile
import zlib
from typing import Iterator

from efficientnetv2_jax import download
from efficientnetv2_jax.models import EfficientNetV2, create_model, get_variant

DEFAULT_URL_BASE = "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/v2"
URL_ENV = "EFFICIENTNETV2_JAX_WEIGHTS_URL"
CACHE_ENV = "EFFICIENTNETV2_JAX_CACHE"
DEFAULT_CACHE = "~/.cache/efficientnetv2_jax"
TAGS = ("1k", "21k", "21k-ft1k")
IMAGENET21K_EVAL_SIZE = 224  # The official ImageNet21k dataset config evaluates every variant at 224 px.


class WeightsUnavailable(OSError):
    """Official weights could not be fetched or were corrupt (the message says what to do); runtime failure."""


@dataclasses.dataclass(frozen=True)
class OfficialCheckpoint:
    """One released checkpoint: its name, variant, training data (tag), classes, eval size and label set."""

    name: str
    variant: str
    tag: str
    num_classes: int
    eval_size: int
    label_set: str

    @property
    def multi_label(self) -> bool:
        """The 21k checkpoints were trained with a sigmoid loss (official README, Jul 2021): sigmoid outputs."""
        return self.tag == "21k"

    def url(self, base: str | None = None) -> str:
        """`<base>/<name>.tgz`, base from the argument, $EFFICIENTNETV2_JAX_WEIGHTS_URL, or the official bucket."""
        base = base or os.environ.get(URL_ENV) or DEFAULT_URL_BASE
        return f"{base.rstrip('/')}/{self.name}.tgz"


def _registry() -> dict[str, OfficialCheckpoint]:
    """Every checkpoint the official README links (XL has no ImageNet-1k-only checkpoint)."""
    entries = {}
    for size in ("b0", "b1", "b2", "b3", "s", "m", "l", "xl"):
        variant = get_variant(size)
        for tag in TAGS:
            if tag == "1k" and size == "xl":
                continue
            name = variant.name if tag == "1k" else f"{variant.name}-{tag}"
            in21k = tag == "21k"
            entries[name] = OfficialCheckpoint(
                name=name, variant=variant.name, tag=tag, num_classes=21843 if in21k else 1000,
                eval_size=IMAGENET21K_EVAL_SIZE if in21k else variant.eval_size,
                label_set="imagenet21k" if in21k else "imagenet2012")
    return entries


REGISTRY = _registry()


def list_pretrained() -> list[str]:
    """Names of the official checkpoints, in the README's order."""
    return list(REGISTRY)


def get(name: str) -> OfficialCheckpoint:
    """The registry entry for `name`; an unknown name raises ValueError listing the valid ones."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown official checkpoint {name!r}; valid names: {', '.join(REGISTRY)}.")
    return REGISTRY[name]


def cache_root(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The cache folder: `cache_dir`, else $EFFICIENTNETV2_JAX_CACHE, else ~/.cache/efficientnetv2_jax."""
    return pathlib.Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def archive_path(name: str, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Where the archive of `name` is downloaded to (and where a manually downloaded one can be dropped)."""
    return cache_root(cache_dir) / "downloads" / f"{get(name).name}.tgz"


def weights_dir(name: str, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Where the converted variables of `name` live once cached."""
    return cache_root(cache_dir) / "weights" / get(name).name


@contextlib.contextmanager
def _locked(path: pathlib.Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (another process asking for the same name waits here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"Waiting for another process preparing {path.stem} ...", file=sys.stderr)
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _corrupt(archive: pathlib.Path, why: str) -> WeightsUnavailable:
    """Deletes `archive` and returns the error that reports it."""
    archive.unlink(missing_ok=True)
    return WeightsUnavailable(f"{archive.name} is corrupt ({why}); deleted it, run again to download it anew.")


def _unpack(archive: pathlib.Path, destination: pathlib.Path) -> pathlib.Path:
    """Extracts `archive` (safe member paths only) and returns the folder holding its TF checkpoint.

    Only the bytes of regular files and the folders are written, with this process's default modes and owner (what
    tarfile's "data" filter gives; its `filter` argument needs Python >= 3.11.4, Debian 12 ships 3.11.2)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            unsafe = [m.name for m in members if not (m.isfile() or m.isdir()) or m.name.startswith("/")
                      or ".." in pathlib.PurePosixPath(m.name).parts]
            if unsafe:
                raise _corrupt(archive, f"unsafe member {unsafe[0]!r}")
            for member in members:
                target = destination.joinpath(*pathlib.PurePosixPath(member.name).parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        if isinstance(error, WeightsUnavailable):
            raise
        raise _corrupt(archive, f"not a readable tar.gz: {error}") from None
    folders = sorted({path.parent for path in destination.rglob("*.index")})
    if len(folders) != 1 or not any(folders[0].glob("*.data-*")):
        raise _corrupt(archive, f"expected one TF checkpoint (*.index, *.data-*), found {len(folders)} folders")
    return folders[0]


def _convert(entry: OfficialCheckpoint, archive: pathlib.Path, root: pathlib.Path) -> None:
    """Unpacks and converts `archive` and moves the variables folder into the cache in one rename."""
    from efficientnetv2_jax import checkpoint  # pylint: disable=import-outside-toplevel  # Orbax when needed.
    from efficientnetv2_jax.convert.tf_checkpoint import read_tf_checkpoint  # pylint: disable=import-outside-toplevel

    work = root / "tmp" / entry.name
    shutil.rmtree(work, ignore_errors=True)  # A killed earlier call's leftovers (we hold the name's lock).
    try:
        folder = _unpack(archive, work / "archive")
        try:
            model_name, variables = read_tf_checkpoint(str(folder), name=entry.variant)
        except ValueError as error:
            raise _corrupt(archive, str(error)) from None
        classes = variables["params"].get("classifier", {}).get("bias")
        if classes is None or classes.shape[0] != entry.num_classes:
            raise _corrupt(archive, f"{entry.name} has {entry.num_classes} classes, the archive "
                                    f"{0 if classes is None else classes.shape[0]}")
        staged = work / "variables"
        checkpoint.save_variables(str(staged), variables, model_name=model_name, num_classes=entry.num_classes)
        final = root / "weights" / entry.name
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    archive.unlink(missing_ok=True)


def fetch(name: str, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The cached variables folder of official checkpoint `name`, downloading and converting it the first time.

    Offline once cached. Raises ValueError for an unknown name and WeightsUnavailable when the archive cannot
    be downloaded (the message names the URL and where to put a manually downloaded archive) or is corrupt.
    """
    entry = get(name)
    root = cache_root(cache_dir)
    final = root / "weights" / entry.name
    if final.is_dir():
        return final
    with _locked(root / "locks" / f"{entry.name}.lock"):
        if final.is_dir():  # Another process finished it while we waited.
            return final
        archive = root / "downloads" / f"{entry.name}.tgz"
        if not archive.is_file():
            archive.parent.mkdir(parents=True, exist_ok=True)
            url = entry.url()
            try:
                download.download(url, archive)
            except download.CorruptDownload as error:
                raise WeightsUnavailable(f"{error} Run again to download it anew.") from None
            except download.DownloadError as error:
                raise WeightsUnavailable(f"{error}; without network, download it elsewhere and put it at "
                                         f"{archive}") from None
        _convert(entry, archive, root)
    return final


def load(name: str, cache_dir: str | os.PathLike | None = None) -> dict:
    """{'params', 'batch_stats'} (numpy) of official checkpoint `name` (EMA weights, as the official eval)."""
    from efficientnetv2_jax import checkpoint  # pylint: disable=import-outside-toplevel

    return checkpoint.restore_variables(str(fetch(name, cache_dir)))


def create_pretrained_model(model: str, pretrained: str = "21k-ft1k", cache_dir: str | os.PathLike | None = None,
                            **overrides) -> tuple[EfficientNetV2, dict]:
    """(network, variables) of variant `model` (e.g. 's') with official weights `pretrained` (1k, 21k, 21k-ft1k).

    `overrides` are `create_model`'s (dtype, remat, ...); apply with
    `network.apply(variables, normalize_images(images, network.model_name), train=False)`.
    """
    if pretrained not in TAGS:
        raise ValueError(f"Unknown pretrained={pretrained!r}; valid: {', '.join(TAGS)}.")
    variant = get_variant(model).name
    entry = get(variant if pretrained == "1k" else f"{variant}-{pretrained}")
    return create_model(variant, num_classes=entry.num_classes, **overrides), load(entry.name, cache_dir)
