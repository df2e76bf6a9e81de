"""What the launcher remembers per TPU (a small JSON file), so that `restart` can redo a launch exactly."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

from launch.accelerators import LaunchError

STATE_DIR_ENV = "EFFNETV2_LAUNCH_DIR"


def default_state_dir() -> pathlib.Path:
    """$EFFNETV2_LAUNCH_DIR, else ~/.config/efficientnetv2_jax/launch."""
    if os.environ.get(STATE_DIR_ENV):
        return pathlib.Path(os.environ[STATE_DIR_ENV])
    return pathlib.Path.home() / ".config" / "efficientnetv2_jax" / "launch"


@dataclasses.dataclass
class LaunchState:
    """How a TPU was created (by `create`) and what runs on it (by `train`)."""

    name: str
    zone: str
    project: str | None = None
    accelerator_type: str | None = None
    runtime_version: str | None = None
    capacity: str = "on-demand"  # "on-demand", "spot" or "preemptible"
    queued: bool = False
    config: str | None = None
    workdir: str | None = None
    overrides: list[str] = dataclasses.field(default_factory=list)


def state_path(state_dir: pathlib.Path, name: str) -> pathlib.Path:
    """<state_dir>/<name>.json."""
    return state_dir / f"{name}.json"


def tarball_path(state_dir: pathlib.Path, name: str) -> pathlib.Path:
    """The checkout shipped by `install`, kept so that `restart` reinstalls the very same code."""
    return state_dir / f"{name}.tar.gz"


def load_state(state_dir: pathlib.Path, name: str) -> LaunchState | None:
    """The saved launch for name, or None if there is none."""
    path = state_path(state_dir, name)
    if not path.exists():
        return None
    fields = json.loads(path.read_text())
    known = {f.name for f in dataclasses.fields(LaunchState)}
    unknown = set(fields) - known
    if unknown:
        raise LaunchError(f"{path}: unknown fields {sorted(unknown)}; valid: {sorted(known)}")
    return LaunchState(**fields)


def saved_states(state_dir: pathlib.Path) -> list[LaunchState]:
    """Every launch remembered in state_dir (not the dry-run ones), by name."""
    return [load_state(state_dir, path.stem) for path in sorted(state_dir.glob("*.json"))]


def save_state(state_dir: pathlib.Path, state: LaunchState) -> pathlib.Path:
    """Write the launch as JSON and return the file's path."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_path(state_dir, state.name)
    path.write_text(json.dumps(dataclasses.asdict(state), indent=2) + "\n")
    return path
