"""Cloud TPU VM launcher: create a slice, install this checkout on every worker, train, watch, resume, delete.

## Training on Cloud TPU VMs

Every worker of a TPU slice must run the same program; `python -m launch.tpu` does the `gcloud` work for you
(`--worker=all` ssh/scp), and JAX finds its peers by itself. You need the Google Cloud CLI, logged in
(`gcloud auth login`), and a GCS bucket in the TPU's region for the workdir and the datasets. Run from the checkout:

```bash
# 1. a v4-32 Spot slice (4 hosts); --queued asks for it as a queued resource and waits until it is ACTIVE
python -m launch.tpu create --name=effnet --zone=us-central2-b --accelerator-type=v4-32 --spot
# 2. ship this checkout (tracked + untracked, not ignored files) to every worker; pip install -e '.[tpu]' there
python -m launch.tpu install --name=effnet
# 3. start training on all workers, detached; the workdir must be gs:// on a multi-host slice
python -m launch.tpu train --name=effnet --config=configs/imagenet1k.py:s \
    --workdir=gs://BUCKET/effnetv2-s-1k --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets
# 4. follow worker 0's log (Ctrl-C stops following, not training); per-worker state and last log lines
python -m launch.tpu logs --name=effnet --worker=0
python -m launch.tpu status --name=effnet
# 5. after a preemption: recreate the slice, reinstall the same code, rerun the same command (it resumes)
python -m launch.tpu restart --name=effnet
# 6. done
python -m launch.tpu delete --name=effnet
```

Add `--dry-run` to any of them to print the exact `gcloud` command lines (one per line, shell-quoted) instead of
running them; it needs no `gcloud`. In a dry run, state queries are printed and answered as the worst case
(`restart`: preempted) or the usual one (`status`: ready), and nothing is written locally.

What it remembers: `create`, `install` and `train` record the TPU (zone, project, type, runtime, spot/queued), the
shipped tarball and the train command (config, workdir, `--config.*` overrides) in
`~/.config/efficientnetv2_jax/launch/<name>.json` (`--state-dir` or `$EFFNETV2_LAUNCH_DIR` move it), so the later
commands only need `--name`, and `restart` redoes the launch exactly: same code, same command, same workdir, where
the trainer picks up its latest checkpoint. On each worker the code lives in `~/efficientnetv2_jax`, the venv
(Python 3.11 via uv) in `~/efficientnetv2_jax_venv`, the log in `~/efficientnetv2_jax_logs/train.log`.
Runtime versions default per generation (v2-v4: tpu-ubuntu2204-base, v5e: v2-alpha-tpuv5-lite,
v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e); `--runtime-version` overrides. Bad inputs (no gcloud, a zone that is not
like us-central2-b, an unknown accelerator type, a local workdir on a multi-host slice, a missing config file) stop
with one line and exit code 2 before anything is created or run.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import shlex
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable

from launch import remote
from launch.accelerators import LaunchError, check_tpu_name, check_zone, parse_accelerator
from launch.gcloud import Gcloud
from launch.state import LaunchState, default_state_dir, load_state, save_state, tarball_path

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_TPU = ["compute", "tpus", "tpu-vm"]
_QUEUED = ["compute", "tpus", "queued-resources"]
_QUEUE_POLL_S = 30
_QUEUE_WAIT_S = 24 * 3600
_OVERRIDE = re.compile(r"--config\.[A-Za-z_]\w*(\.[A-Za-z_]\w*)*=.*", re.DOTALL)

Step = Callable[[Gcloud], None]


def note(message: str) -> None:
    """Progress for the user on stderr, so that a dry run's stdout holds only commands."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- gcloud command lines


def _where(s: LaunchState) -> list[str]:
    return [f"--zone={s.zone}"] + ([f"--project={s.project}"] if s.project else [])


def create_args(s: LaunchState) -> list[str]:
    """`tpu-vm create` (gcloud calls the runtime --version) or `queued-resources create` (--runtime-version)."""
    capacity = [] if s.capacity == "on-demand" else [f"--{s.capacity}"]
    if s.queued:
        return [*_QUEUED, "create", s.name, f"--node-id={s.name}", *_where(s),
                f"--accelerator-type={s.accelerator_type}", f"--runtime-version={s.runtime_version}", *capacity]
    return [*_TPU, "create", s.name, *_where(s),
            f"--accelerator-type={s.accelerator_type}", f"--version={s.runtime_version}", *capacity]


def describe_args(s: LaunchState) -> list[str]:
    """Print only the state word (READY, PREEMPTED, ACTIVE, SUSPENDED, ...)."""
    if s.queued:
        return [*_QUEUED, "describe", s.name, *_where(s), "--format=value(state.state)"]
    return [*_TPU, "describe", s.name, *_where(s), "--format=value(state)"]


def delete_args(s: LaunchState) -> list[str]:
    """--force also deletes the queued resource's TPU; --quiet skips the confirmation prompt."""
    if s.queued:
        return [*_QUEUED, "delete", s.name, *_where(s), "--force", "--quiet"]
    return [*_TPU, "delete", s.name, *_where(s), "--quiet"]


def ssh_args(s: LaunchState, worker: str, script: str) -> list[str]:
    """Run a one-line script on one worker ("0", "1", ...) or on all of them at once ("all")."""
    return [*_TPU, "ssh", s.name, *_where(s), f"--worker={worker}", f"--command={script}"]


def scp_args(s: LaunchState, local: pathlib.Path) -> list[str]:
    """Copy the checkout tarball into every worker's home directory."""
    return [*_TPU, "scp", str(local), f"{s.name}:{remote.TARBALL}", *_where(s), "--worker=all"]


# ---------------------------------------------------------------- steps shared by subcommands


def _wait_until_active(s: LaunchState, gcloud: Gcloud) -> None:
    """A queued resource is usable once ACTIVE; FAILED or SUSPENDED will never get there."""
    deadline = time.monotonic() + _QUEUE_WAIT_S
    while True:
        state = gcloud(describe_args(s), query=True, dry_run_answer="ACTIVE")
        if state == "ACTIVE":
            return
        if state in ("FAILED", "SUSPENDED", "") or time.monotonic() > deadline:
            raise RuntimeError(f"queued resource {s.name} is {state or 'gone'}; delete it and create again")
        note(f"{s.name}: {state}; checking again in {_QUEUE_POLL_S} s")
        time.sleep(_QUEUE_POLL_S)


def _report_state(s: LaunchState, state: str, gcloud: Gcloud) -> None:
    note(f"{s.name}: {state or 'not found'}" + (" (assumed in a dry run)" if gcloud.dry_run else ""))


def _create(s: LaunchState, gcloud: Gcloud) -> None:
    gcloud(create_args(s))
    if s.queued:
        _wait_until_active(s, gcloud)


def _ship(s: LaunchState, tarball: pathlib.Path, gcloud: Gcloud) -> None:
    gcloud(scp_args(s, tarball))
    gcloud(ssh_args(s, "all", remote.install_script()))


def _start_training(s: LaunchState, replace: bool, gcloud: Gcloud) -> None:
    trainer_args = [f"--config={s.config}", f"--workdir={s.workdir}", *s.overrides]
    gcloud(ssh_args(s, "all", remote.train_script(trainer_args, replace)))


def build_tarball(dest: pathlib.Path) -> None:
    """Pack the checkout's tracked and untracked-but-not-ignored files (uncommitted edits included)."""
    listing = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=False,
    )
    if listing.returncode != 0:
        raise LaunchError(f"install ships the git checkout at {REPO_ROOT}, but git ls-files failed there")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w:gz") as tar:
        for name in sorted(filter(None, listing.stdout.decode().split("\0"))):
            if (REPO_ROOT / name).is_file():
                tar.add(REPO_ROOT / name, arcname=name)


# ---------------------------------------------------------------- validation


def _config_in_checkout(value: str) -> str:
    """`configs/x.py:arg` -> the same with the path relative to the checkout root (where workers run it)."""
    path_text, colon, arg = value.partition(":")
    path = pathlib.Path(path_text)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(REPO_ROOT)
        except ValueError:
            raise LaunchError(f"config {path_text!r} is outside the checkout {REPO_ROOT} that install ships") from None
    if path.suffix != ".py" or not (REPO_ROOT / path).is_file():
        raise LaunchError(f"config file {str(path)!r} not found in {REPO_ROOT} (e.g. configs/imagenet1k.py:s)")
    return f"{path.as_posix()}{colon}{arg}"


def _check_workdir(workdir: str, accelerator_type: str) -> None:
    accelerator = parse_accelerator(accelerator_type)
    if accelerator.multi_host and not (workdir.startswith("gs://") and len(workdir) > len("gs://")):
        raise LaunchError(
            f"workdir {workdir!r} is not a gs:// path: {accelerator.name} has {accelerator.hosts} hosts, which must "
            "share one GCS workdir for checkpoints and metrics"
        )


def _check_overrides(extras: list[str]) -> list[str]:
    for arg in extras:
        if not _OVERRIDE.fullmatch(arg):
            raise LaunchError(f"unrecognized argument {arg!r}; trainer overrides look like --config.FIELD=VALUE")
    return extras


def _target(args: argparse.Namespace) -> LaunchState:
    """The saved launch for --name, with --zone/--project/--queued taking precedence; a zone is required."""
    s = load_state(args.state_dir, check_tpu_name(args.name)) or LaunchState(name=args.name, zone="")
    s.zone = check_zone(args.zone) if args.zone else s.zone
    if not s.zone:
        raise LaunchError(f"zone unknown for {args.name}: pass --zone (nothing saved in {args.state_dir})")
    s.project = args.project or s.project
    s.queued = getattr(args, "queued", False) or s.queued
    return s


# ---------------------------------------------------------------- subcommands: validate, then return the work


def prepare_create(args: argparse.Namespace) -> Step:
    """Validate the slice; the step creates it and remembers it."""
    accelerator = parse_accelerator(args.accelerator_type)
    capacity = "spot" if args.spot else "preemptible" if args.preemptible else "on-demand"
    if args.queued and capacity == "preemptible":
        raise LaunchError("queued resources take --spot, not --preemptible")
    s = LaunchState(
        name=check_tpu_name(args.name), zone=check_zone(args.zone), project=args.project,
        accelerator_type=accelerator.name, capacity=capacity, queued=args.queued,
        runtime_version=args.runtime_version or accelerator.generation.runtime_version,
    )

    def run(gcloud: Gcloud) -> None:
        _create(s, gcloud)
        if not gcloud.dry_run:
            note(f"saved {save_state(args.state_dir, s)}")

    return run


def prepare_install(args: argparse.Namespace) -> Step:
    """The step packs this checkout, keeps the tarball for restart, and installs it on every worker."""
    s = _target(args)
    tarball = tarball_path(args.state_dir, s.name)

    def run(gcloud: Gcloud) -> None:
        if not gcloud.dry_run:
            build_tarball(tarball)
            save_state(args.state_dir, s)
        _ship(s, tarball, gcloud)

    return run


def prepare_train(args: argparse.Namespace, extras: list[str]) -> Step:
    """Validate config, workdir and overrides; the step remembers the command and starts it on every worker."""
    s = _target(args)
    s.accelerator_type = parse_accelerator(args.accelerator_type).name if args.accelerator_type else s.accelerator_type
    if not s.accelerator_type:
        raise LaunchError(f"accelerator type unknown for {s.name}: pass --accelerator-type (e.g. v4-32)")
    s.config = _config_in_checkout(args.config)
    _check_workdir(args.workdir, s.accelerator_type)
    s.workdir = args.workdir
    s.overrides = _check_overrides(extras)

    def run(gcloud: Gcloud) -> None:
        if not gcloud.dry_run:
            save_state(args.state_dir, s)
        _start_training(s, args.replace, gcloud)

    return run


def prepare_restart(args: argparse.Namespace) -> Step:
    """The step brings the TPU back as needed, reinstalls the saved tarball and reruns the saved command."""
    s = _target(args)
    missing = [f for f in ("accelerator_type", "runtime_version", "config", "workdir") if not getattr(s, f)]
    tarball = tarball_path(args.state_dir, s.name)
    if missing or not tarball.exists():
        raise LaunchError(
            f"nothing to restart for {s.name} in {args.state_dir} (missing {', '.join(missing) or tarball.name}): "
            "run create, install and train first"
        )

    def run(gcloud: Gcloud) -> None:
        state = gcloud(describe_args(s), query=True, dry_run_answer="SUSPENDED" if s.queued else "PREEMPTED")
        _report_state(s, state, gcloud)
        if state in ("PREEMPTED", "TERMINATED", "SUSPENDED", "FAILED"):
            gcloud(delete_args(s))
            _create(s, gcloud)
        elif state == "":
            _create(s, gcloud)
        elif state == "STOPPED" and not s.queued:
            gcloud([*_TPU, "start", s.name, *_where(s)])
        elif state in ("WAITING_FOR_RESOURCES", "PROVISIONING", "ACCEPTED", "CREATING") and s.queued:
            _wait_until_active(s, gcloud)
        elif state not in ("READY", "ACTIVE"):
            raise RuntimeError(f"{s.name} is {state}; wait until it settles and run restart again")
        _ship(s, tarball, gcloud)
        _start_training(s, True, gcloud)

    return run


def prepare_status(args: argparse.Namespace) -> Step:
    """The step reports the TPU state and, when it is up, each worker's trainer."""
    s = _target(args)

    def run(gcloud: Gcloud) -> None:
        state = gcloud(describe_args(s), query=True, dry_run_answer="ACTIVE" if s.queued else "READY")
        _report_state(s, state, gcloud)
        if state in ("READY", "ACTIVE"):
            gcloud(ssh_args(s, "all", remote.status_script()))

    return run


def prepare_logs(args: argparse.Namespace) -> Step:
    """Validate the worker index against the slice's host count; the step follows that worker's log."""
    s = _target(args)
    hosts = parse_accelerator(s.accelerator_type).hosts if s.accelerator_type else None
    if args.worker < 0 or (hosts is not None and args.worker >= hosts):
        raise LaunchError(f"bad --worker {args.worker}: {s.name} ({s.accelerator_type}) has workers 0..{hosts - 1}")
    if args.lines < 0:
        raise LaunchError(f"bad --lines {args.lines}: must be >= 0")
    return lambda gcloud: gcloud(ssh_args(s, str(args.worker), remote.logs_script(args.lines)))


def prepare_delete(args: argparse.Namespace) -> Step:
    """The step deletes the TPU; the saved launch stays for a later restart."""
    s = _target(args)
    return lambda gcloud: gcloud(delete_args(s))


# ---------------------------------------------------------------- command line


_PREPARE = {
    "create": prepare_create, "install": prepare_install, "restart": prepare_restart,
    "status": prepare_status, "logs": prepare_logs, "delete": prepare_delete,
}


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per lifecycle step, all sharing --name/--project/--dry-run/--state-dir."""
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--name", required=True, help="TPU (and queued resource) name, e.g. effnet")
    common.add_argument("--project", help="GCP project (default: gcloud's configured project)")
    common.add_argument("--dry-run", action="store_true", help="print the gcloud commands instead of running them")
    common.add_argument("--state-dir", type=pathlib.Path, default=default_state_dir(),
                        help="where launches are remembered (default: %(default)s)")

    def zone(p: argparse.ArgumentParser, required: bool) -> None:
        default = "" if required else " (default: the saved one)"
        p.add_argument("--zone", required=required, help=f"e.g. us-central2-b{default}")

    parser = argparse.ArgumentParser(prog="python -m launch.tpu", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text, description=help_text, allow_abbrev=False)

    p = add("create", "Create a TPU VM (or with --queued, a queued resource, waiting until it is ACTIVE).")
    zone(p, True)
    p.add_argument("--accelerator-type", required=True, help="e.g. v4-32, v5litepod-16, v5p-64, v6e-8")
    p.add_argument("--runtime-version", help="TPU software version (default: the JAX one for the generation)")
    capacity = p.add_mutually_exclusive_group()
    capacity.add_argument("--spot", action="store_true", help="Spot capacity: cheap, preemptible, no time limit")
    capacity.add_argument("--preemptible", action="store_true", help="preemptible capacity (not with --queued)")
    p.add_argument("--queued", action="store_true", help="request through queued-resources (best practice for Spot)")

    p = add("install", "Ship this checkout to every worker and pip install -e '.[tpu]' there (stops a running "
                       "trainer).")
    zone(p, False)

    p = add("train", "Start the trainer detached on all workers; extra --config.FIELD=VALUE args pass through.")
    zone(p, False)
    p.add_argument("--config", required=True, help="config file in this checkout with its argument, e.g. "
                                                    "configs/imagenet1k.py:s")
    p.add_argument("--workdir", required=True, help="checkpoints and metrics; must be gs:// on a multi-host slice")
    p.add_argument("--accelerator-type", help="only if the TPU was not created by this launcher")
    p.add_argument("--replace", action="store_true", help="stop a trainer that is still running first")

    p = add("logs", "Follow one worker's training log.")
    zone(p, False)
    p.add_argument("--worker", type=int, default=0, help="worker index (default: 0)")
    p.add_argument("--lines", type=int, default=100, help="lines of history to show first (default: 100)")

    p = add("status", "Show the TPU's state and, when it is up, whether each worker trains and its last log lines.")
    zone(p, False)
    p.add_argument("--queued", action="store_true", help="the TPU is a queued resource (default: saved)")

    p = add("restart", "After a preemption: recreate or start the TPU if needed, reinstall the saved code, and "
                       "rerun the saved train command (it resumes from the workdir).")
    zone(p, False)

    p = add("delete", "Delete the TPU (and its queued resource). The saved launch stays, so restart can recreate it.")
    zone(p, False)
    p.add_argument("--queued", action="store_true", help="the TPU is a queued resource (default: saved)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Validate everything, then check for gcloud, then run (or print) the commands; 2 = bad input, 1 = failure."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    try:
        if args.command == "train":
            step = prepare_train(args, extras)
        elif extras:
            raise LaunchError(f"unrecognized arguments for {args.command}: {' '.join(extras)}")
        else:
            step = _PREPARE[args.command](args)
        gcloud = Gcloud(dry_run=args.dry_run)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        step(gcloud)
    except subprocess.CalledProcessError as e:
        words = [w for w in e.cmd if not w.startswith("--")]
        print(f"error: {shlex.join(words)} failed with exit status {e.returncode} (its output is above)",
              file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
