"""Cloud TPU slice types (`v3-32`, `v4-32`, `v5litepod-16`, ...) as the TPU compiler's topologies, for planning.

`launch.accelerators` parses and validates the type (the launcher's rules); this module adds what compiling for
it needs: the topology name that `jax.experimental.topologies.get_topology_desc` resolves with libtpu on any
machine, how many JAX devices a chip is, and the HBM per device. v4 and v5p VMs run in megacore mode (one JAX
device per chip, both TensorCores), so they are planned that way; v2/v3 show one device per TensorCore.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from launch.accelerators import GENERATIONS, Accelerator, LaunchError, parse_accelerator

# generation -> (topology prefix, TensorCores per chip, JAX devices per chip, HBM GiB per JAX device, 3-D torus)
_CHIPS = {
    "v2": ("v2", 2, 2, 8, False),
    "v3": ("v3", 2, 2, 16, False),
    "v4": ("v4", 2, 1, 32, True),
    "v5litepod": ("v5e", 1, 1, 16, False),
    "v5p": ("v5p", 2, 1, 95, True),
    "v6e": ("v6e", 1, 1, 32, False),
}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    """One slice type as the compiler sees it."""

    accelerator: Accelerator
    topology_name: str  # e.g. 'v3:4x4'
    chips: int
    devices_per_chip: int
    hbm_gib_per_device: float

    @property
    def name(self) -> str:
        return self.accelerator.name

    @property
    def devices(self) -> int:
        return self.chips * self.devices_per_chip

    def topology_devices(self) -> list[Any]:
        """The slice's abstract devices (needs libtpu; no TPU needs to be attached)."""
        from jax.experimental import topologies  # pylint: disable=import-outside-toplevel

        # libtpu takes a machine-wide lock file unless told otherwise; compiling needs no TPU, so several planners
        # (and test workers) may load it at once.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

        options = {"chip_config_name": "megacore"} if self.accelerator.generation.name == "v4" else {}
        return list(topologies.get_topology_desc(platform="tpu", topology_name=self.topology_name,
                                                 **options).devices)


def _torus_2d(chips: int) -> tuple[int, ...]:
    side = 2 ** (int(math.log2(chips)) // 2)
    return side, chips // side


def _torus_3d(chips: int) -> tuple[int, ...]:
    """The standard v4/v5p slice shapes: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, ... (double the smallest side,
    the last one on ties)."""
    dims = [2, 2, 1]
    while math.prod(dims) < chips:
        smallest = min(dims)
        dims[max(i for i, d in enumerate(dims) if d == smallest)] *= 2
    return tuple(dims)


def valid_types() -> str:
    """The accepted accelerator types, in words, for error messages."""
    return "; ".join(f"{name}-N with N {g.size_rule()}" for name, g in GENERATIONS.items())


def tpu_slice(accelerator_type: str) -> TpuSlice:
    """`v3-32` -> TpuSlice('v3:4x4', 16 chips, 2 devices per chip, 16 GiB); raises LaunchError for others."""
    try:
        accelerator = parse_accelerator(accelerator_type)
    except LaunchError as error:
        raise LaunchError(f"{error}. Valid types: {valid_types()}") from error
    prefix, cores_per_chip, devices_per_chip, hbm_gib, three_d = _CHIPS[accelerator.generation.name]
    chips = accelerator.size // cores_per_chip if accelerator.generation.unit == "TensorCores" else accelerator.size
    if chips < 4 or chips & (chips - 1):
        raise LaunchError(f"{accelerator.name}: the planner handles slices of 4, 8, 16, ... chips (a power of two); "
                          f"{accelerator.name} has {chips}")
    dims = _torus_3d(chips) if three_d else _torus_2d(chips)
    return TpuSlice(accelerator, f"{prefix}:{'x'.join(map(str, dims))}", chips, devices_per_chip, hbm_gib)
