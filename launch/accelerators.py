"""Cloud TPU accelerator types: parse `v4-32` into a slice size, its host count and its default runtime."""

from __future__ import annotations

import dataclasses
import re


class LaunchError(ValueError):
    """A bad launcher input, reported as one line with exit code 2 before anything is created or run."""


@dataclasses.dataclass(frozen=True)
class Generation:
    """What the number in `<generation>-<N>` counts, how a slice splits into hosts, and what runtime it boots."""

    name: str
    unit: str  # "TensorCores" or "chips": what N counts
    per_host: int  # units per host in a multi-host slice
    single_host_max: int  # largest N that is one host
    runtime_version: str  # default TPU software version for JAX (cloud.google.com/tpu/docs/runtimes)
    sizes: tuple[int, ...] | None = None  # the accepted N; None: any whole number of hosts up to max_size
    max_size: int = 0

    def valid_size(self, n: int) -> bool:
        """Whether `<generation>-<n>` is a slice gcloud can make (whole hosts, within the pod)."""
        if self.sizes is not None:
            return n in self.sizes
        return 0 < n <= self.max_size and (n <= self.single_host_max or n % self.per_host == 0)

    def size_rule(self) -> str:
        """The valid sizes, in words, for error messages."""
        if self.sizes is not None:
            return ", ".join(str(s) for s in self.sizes)
        return f"multiples of {self.per_host} up to {self.max_size}"


_LITE_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)
GENERATIONS = {
    g.name: g
    for g in (
        Generation("v2", "TensorCores", 8, 8, "tpu-ubuntu2204-base", sizes=(8, 32, 128, 256, 512)),
        Generation("v3", "TensorCores", 8, 8, "tpu-ubuntu2204-base", sizes=(8, 32, 64, 128, 256, 512, 1024, 2048)),
        Generation("v4", "TensorCores", 8, 8, "tpu-ubuntu2204-base", max_size=8192),
        Generation("v5litepod", "chips", 4, 8, "v2-alpha-tpuv5-lite", sizes=_LITE_SIZES),
        Generation("v5p", "TensorCores", 8, 8, "v2-alpha-tpuv5", max_size=17920),
        Generation("v6e", "chips", 4, 8, "v2-alpha-tpuv6e", sizes=_LITE_SIZES),
    )
}
_ALIASES = {"v5e": "v5litepod", "v5lite": "v5litepod", "v6": "v6e", "v5": "v5p"}


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One slice type, e.g. v4-32: 32 TensorCores on 4 hosts."""

    generation: Generation
    size: int

    @property
    def name(self) -> str:
        """The gcloud accelerator type, e.g. v4-32."""
        return f"{self.generation.name}-{self.size}"

    @property
    def hosts(self) -> int:
        """TPU VM workers in the slice: one up to the single-host size, else size / units per host."""
        g = self.generation
        return 1 if self.size <= g.single_host_max else self.size // g.per_host

    @property
    def multi_host(self) -> bool:
        """Multi-host slices need every worker to run the trainer and a shared gs:// workdir."""
        return self.hosts > 1


def parse_accelerator(text: str) -> Accelerator:
    """`v4-32` -> Accelerator; unknown generations or sizes raise LaunchError naming the valid ones."""
    match = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
    if not match:
        raise LaunchError(f"bad accelerator type {text!r}: expected <generation>-<size>, e.g. v4-32, v5litepod-16")
    name, size = match.group(1), int(match.group(2))
    if name not in GENERATIONS:
        hint = f" ({name} is spelled {_ALIASES[name]})" if name in _ALIASES else ""
        raise LaunchError(f"unknown TPU generation {name!r} in {text!r}{hint}; valid: {', '.join(GENERATIONS)}")
    generation = GENERATIONS[name]
    if not generation.valid_size(size):
        raise LaunchError(
            f"bad accelerator size in {text!r}: {name} sizes count {generation.unit} and must be "
            f"{generation.size_rule()}"
        )
    return Accelerator(generation, size)


def check_zone(zone: str) -> str:
    """Zones look like `us-central2-b`; catching a typo here beats a gcloud error after minutes of waiting."""
    if not re.fullmatch(r"[a-z]+-[a-z]+\d+-[a-z]", zone):
        raise LaunchError(f"bad zone {zone!r}: expected <region>-<letter>, e.g. us-central2-b, europe-west4-a")
    return zone


def check_tpu_name(name: str) -> str:
    """TPU names are lower-case letters, digits and dashes, start with a letter, at most 63 characters."""
    if not re.fullmatch(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?", name):
        raise LaunchError(
            f"bad TPU name {name!r}: use lower-case letters, digits and dashes, start with a letter, "
            "end with a letter or digit, at most 63 characters"
        )
    return name
