"""Cloud TPU VM launcher: create a slice, install this checkout on every worker, train, watch, resume, delete.

## Training on Cloud TPU VMs

Every worker of a TPU slice must run the same program; `python -m launch.tpu` does the `gcloud` work for you
(`--worker=all` ssh/scp), and JAX finds its peers by itself. You need the Google Cloud CLI, logged in
(`gcloud auth login`), a project (`--project=ID` on `create`, else gcloud's `core/project`; it is remembered) with
the Cloud TPU API enabled and TPU quota in the zone, and a GCS bucket for the workdir and the datasets. Run from
the checkout:

```bash
# 0. what the run will cost on that slice: compiles the train step for it locally (efficientnetv2_jax.plan)
python -m launch.tpu plan --accelerator-type=v4-32 --config=configs/imagenet1k.py:s
# 1. a v4-32 Spot slice (4 hosts); --queued asks for it as a queued resource and waits until it is ACTIVE
python -m launch.tpu create --name=effnet --zone=us-central2-b --accelerator-type=v4-32 --spot --project=my-proj
# 2. the bucket: create it in the TPU's region if missing, let the TPU's service account use it, and check
#    from every worker that it can write, read and delete there
python -m launch.tpu bucket --name=effnet --bucket=gs://my-bucket
# 3. ship this checkout (tracked + untracked, not ignored files) to every worker; pip install -e '.[tpu]' there
python -m launch.tpu install --name=effnet
# 4. start training on all workers, detached; the workdir must be gs:// (the VM's disk does not survive restart)
python -m launch.tpu train --name=effnet --config=configs/imagenet1k.py:s \
    --workdir=gs://my-bucket/effnetv2-s-1k --config.dataset.data_dir=gs://my-bucket/tensorflow_datasets
# 5. follow worker 0's log (Ctrl-C stops following, not training); per-worker state and last log lines
python -m launch.tpu logs --name=effnet --worker=0
python -m launch.tpu status --name=effnet
# 6. after a preemption: recreate the slice, reinstall the same code, rerun the same command (it resumes)
python -m launch.tpu restart --name=effnet
# 7. stop training (SIGTERM: the trainer checkpoints first), then delete the slice
python -m launch.tpu stop --name=effnet
python -m launch.tpu delete --name=effnet
```

`list` shows the remembered launches and the TPUs and queued resources in their zones (or `--zone`); `ssh
--name=effnet [--worker=N|all] [--command=CMD]` opens a shell on a worker or runs a command there.

Add `--dry-run` to any of them to print the exact `gcloud` command lines (one per line, shell-quoted) instead of
running them; it needs no `gcloud`. In a dry run, state queries are printed and answered as the worst case
(`restart`: preempted) or the usual one (`status`: ready), and what a command would remember goes to
`<state dir>/dry-run/`, never to the real records: so the README's sequence above, each with `--dry-run`, previews
end to end after `create --dry-run`, `restart` included.

What it remembers: `create`, `install` and `train` record the TPU (zone, project, type, runtime, spot/queued), the
shipped tarball and the train command (config, workdir, `--config.*` overrides) in
`~/.config/efficientnetv2_jax/launch/<name>.json` (`--state-dir` or `$EFFNETV2_LAUNCH_DIR` move it), so the later
commands only need `--name`, and `restart` redoes the launch exactly: same code, same command, same workdir, where
the trainer picks up its latest checkpoint. On each worker the code lives in `~/efficientnetv2_jax`, the venv
(Python 3.11 via uv) in `~/efficientnetv2_jax_venv`, the log in `~/efficientnetv2_jax_logs/train.log`; a reinstall
replaces only the files the previous install shipped. Runtime versions default per generation (v2-v4:
tpu-ubuntu2204-base, v5e: v2-alpha-tpuv5-lite, v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e); `--runtime-version`
overrides. Bad inputs stop with one line and exit code 2 before anything is created or run: no gcloud, a zone that
is not like us-central2-b, an unknown accelerator type, a workdir that is not gs://, and a config file or
`--config.*` override that `python -m efficientnetv2_jax.main` would reject (the launcher loads it with the same
function, `efficientnetv2_jax.main.load_config`). `create` checks first that the Cloud TPU API is enabled.
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

from efficientnetv2_jax import cli
from launch import remote
from launch.accelerators import LaunchError, check_tpu_name, check_zone, parse_accelerator
from launch.gcloud import Gcloud
from launch.state import LaunchState, default_state_dir, load_state, save_state, saved_states, tarball_path

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PLANNER = [sys.executable, "-m", "efficientnetv2_jax.plan"]  # run locally by `plan`, in the checkout
DRY_RUN_DIR = "dry-run"  # under the state dir: what dry runs remember
_TPU = ["compute", "tpus", "tpu-vm"]
_QUEUED = ["compute", "tpus", "queued-resources"]
_TPU_API = "tpu.googleapis.com"
_QUOTA_HINT = ("if it reports quota or capacity: TPU quota is per project, zone and type "
               "(https://console.cloud.google.com/iam-admin/quotas?service=tpu.googleapis.com); try --spot, "
               "--queued or another zone")
_QUEUE_POLL_S = 30
_QUEUE_WAIT_S = 24 * 3600
_OVERRIDE = re.compile(r"--config\.[A-Za-z_]\w*(\.[A-Za-z_]\w*)*=.*", re.DOTALL)
_UP = ("READY", "ACTIVE")

Step = Callable[[Gcloud], None]


def note(message: str) -> None:
    """Progress for the user on stderr, so that a dry run's stdout holds only commands."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- gcloud command lines


def _where(s: LaunchState) -> list[str]:
    return [f"--zone={s.zone}"] + ([f"--project={s.project}"] if s.project else [])


def _project(s: LaunchState) -> list[str]:
    return [f"--project={s.project}"] if s.project else []


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


def ssh_args(s: LaunchState, worker: str, script: str | None) -> list[str]:
    """Run a one-line script on one worker ("0", "1", ...) or on all of them at once ("all"); None: a shell."""
    return [*_TPU, "ssh", s.name, *_where(s), f"--worker={worker}", *([f"--command={script}"] if script else [])]


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


def _vm_state(s: LaunchState, gcloud: Gcloud, dry_run_answer: str) -> str:
    """The TPU's state word ("" when it does not exist), reported on stderr."""
    state = gcloud(describe_args(s), query=True, dry_run_answer=dry_run_answer)
    note(f"{s.name}: {state or 'not found'}" + (" (assumed in a dry run)" if gcloud.dry_run else ""))
    return state


def _resolve_project(s: LaunchState, gcloud: Gcloud) -> None:
    """Fills s.project from gcloud's configured one when none was given; a real run without any stops here."""
    if s.project:
        return
    s.project = gcloud(["config", "get-value", "project"], query=True) or None
    if not s.project and not gcloud.dry_run:
        raise LaunchError("no GCP project: pass --project=ID (or run `gcloud config set project ID`)")


def _check_tpu_api(s: LaunchState, gcloud: Gcloud) -> None:
    """Creating a TPU in a project without the Cloud TPU API fails late and obscurely; say so up front."""
    enabled = gcloud(["services", "list", "--enabled", *_project(s), f"--filter=config.name={_TPU_API}",
                      "--format=value(config.name)"], query=True, dry_run_answer=_TPU_API)
    if enabled != _TPU_API:
        project = s.project or "your project"
        raise RuntimeError(f"the Cloud TPU API is not enabled in {project}: run `gcloud services enable {_TPU_API}"
                           f"{' --project=' + s.project if s.project else ''}`, then check the TPU quota "
                           "(https://console.cloud.google.com/iam-admin/quotas?service=tpu.googleapis.com)")


def _create(s: LaunchState, gcloud: Gcloud) -> None:
    try:
        gcloud(create_args(s))
    except subprocess.CalledProcessError as error:
        raise RuntimeError(f"creating {s.accelerator_type} {s.name} in {s.zone} failed (its output is above); "
                           f"{_QUOTA_HINT}") from error
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


def check_config(config: str, overrides: list[str]) -> None:
    """Load the config file and overrides exactly as the trainer will (main.load_config), here, before any run."""
    from efficientnetv2_jax.main import ConfigError, load_config  # Imports JAX: only for commands with a config.

    try:
        load_config(str(REPO_ROOT / config), overrides)
    except ConfigError as error:
        raise LaunchError(f"the trainer would reject this: {error}") from None


def _check_workdir(workdir: str) -> None:
    if not (workdir.startswith("gs://") and len(workdir.rstrip("/")) > len("gs://")):
        raise LaunchError(
            f"workdir {workdir!r} is not a gs:// path: a TPU VM's disk does not survive `restart` (it recreates the "
            "VM) and every host must see the same checkpoints, so use a bucket, e.g. gs://my-bucket/effnetv2-s-1k"
        )


def _check_overrides(extras: list[str]) -> list[str]:
    for arg in extras:
        if not _OVERRIDE.fullmatch(arg):
            raise LaunchError(f"unrecognized argument {arg!r}; trainer overrides look like --config.FIELD=VALUE")
    return extras


def _load(args: argparse.Namespace, name: str) -> LaunchState | None:
    """The remembered launch: in a dry run what earlier dry runs remembered first, then the real record."""
    dirs = [args.state_dir / DRY_RUN_DIR, args.state_dir] if args.dry_run else [args.state_dir]
    return next(filter(None, (load_state(d, name) for d in dirs)), None)


def _save(args: argparse.Namespace, s: LaunchState) -> None:
    """Remember the launch; a dry run remembers it apart, so that the next dry run can use it."""
    path = save_state(args.state_dir / DRY_RUN_DIR if args.dry_run else args.state_dir, s)
    if not args.dry_run:
        note(f"saved {path}")


def _target(args: argparse.Namespace) -> LaunchState:
    """The saved launch for --name, with --zone/--project/--queued taking precedence; a zone is required."""
    s = _load(args, check_tpu_name(args.name)) or LaunchState(name=args.name, zone="")
    s.zone = check_zone(args.zone) if args.zone else s.zone
    if not s.zone:
        raise LaunchError(f"zone unknown for {args.name}: pass --zone (nothing saved in {args.state_dir})")
    s.project = args.project or s.project
    s.queued = getattr(args, "queued", False) or s.queued
    return s


def _worker(args: argparse.Namespace, s: LaunchState) -> str:
    """--worker checked against the slice's host count when it is known."""
    if args.worker == "all":
        return "all"
    hosts = parse_accelerator(s.accelerator_type).hosts if s.accelerator_type else None
    if not args.worker.isdigit() or (hosts is not None and int(args.worker) >= hosts):
        valid = f"0..{hosts - 1}" if hosts is not None else "0, 1, ..."
        raise LaunchError(f"bad --worker {args.worker}: {s.name} ({s.accelerator_type or 'type unknown'}) has "
                          f"workers {valid} (or all)")
    return args.worker


# ---------------------------------------------------------------- subcommands: validate, then return the work


def prepare_create(args: argparse.Namespace) -> Step:
    """Validate the slice; the step resolves the project, checks the TPU API, creates the TPU, remembers it."""
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
        _resolve_project(s, gcloud)
        _check_tpu_api(s, gcloud)
        _create(s, gcloud)
        _save(args, s)

    return run


def prepare_install(args: argparse.Namespace) -> Step:
    """The step packs this checkout, keeps the tarball for restart, and installs it on every worker."""
    s = _target(args)
    tarball = tarball_path(args.state_dir, s.name)

    def run(gcloud: Gcloud) -> None:
        if not gcloud.dry_run:
            build_tarball(tarball)
        _save(args, s)
        _ship(s, tarball, gcloud)

    return run


def prepare_train(args: argparse.Namespace, extras: list[str]) -> Step:
    """Validate workdir, config and overrides; the step remembers the command and starts it on every worker."""
    s = _target(args)
    s.accelerator_type = parse_accelerator(args.accelerator_type).name if args.accelerator_type else s.accelerator_type
    if not s.accelerator_type:
        raise LaunchError(f"accelerator type unknown for {s.name}: pass --accelerator-type (e.g. v4-32)")
    _check_workdir(args.workdir)
    s.config = _config_in_checkout(args.config)
    s.overrides = _check_overrides(extras)
    check_config(s.config, s.overrides)
    s.workdir = args.workdir

    def run(gcloud: Gcloud) -> None:
        _save(args, s)
        _start_training(s, args.replace, gcloud)

    return run


def prepare_restart(args: argparse.Namespace) -> Step:
    """The step brings the TPU back as needed, reinstalls the saved tarball and reruns the saved command."""
    s = _target(args)
    missing = [f for f in ("accelerator_type", "runtime_version", "config", "workdir") if not getattr(s, f)]
    tarball = tarball_path(args.state_dir, s.name)
    if not tarball.exists() and not args.dry_run:
        missing.append(tarball.name)
    if missing:
        raise LaunchError(
            f"nothing to restart for {s.name} in {args.state_dir} (missing {', '.join(missing)}): "
            "run create, install and train first"
        )

    def run(gcloud: Gcloud) -> None:
        state = _vm_state(s, gcloud, "SUSPENDED" if s.queued else "PREEMPTED")
        if state in ("PREEMPTED", "TERMINATED", "SUSPENDED", "FAILED"):
            gcloud(delete_args(s))
            _create(s, gcloud)
        elif state == "":
            _create(s, gcloud)
        elif state == "STOPPED" and not s.queued:
            gcloud([*_TPU, "start", s.name, *_where(s)])
        elif state in ("WAITING_FOR_RESOURCES", "PROVISIONING", "ACCEPTED", "CREATING") and s.queued:
            _wait_until_active(s, gcloud)
        elif state not in _UP:
            raise RuntimeError(f"{s.name} is {state}; wait until it settles and run restart again")
        _ship(s, tarball, gcloud)
        _start_training(s, True, gcloud)

    return run


def prepare_status(args: argparse.Namespace) -> Step:
    """The step reports the TPU state and, when it is up, each worker's trainer."""
    s = _target(args)

    def run(gcloud: Gcloud) -> None:
        if _vm_state(s, gcloud, "ACTIVE" if s.queued else "READY") in _UP:
            gcloud(ssh_args(s, "all", remote.status_script()))

    return run


def prepare_logs(args: argparse.Namespace) -> Step:
    """Validate the worker index against the slice's host count; the step follows that worker's log."""
    s = _target(args)
    if args.worker == "all":
        raise LaunchError("logs follows one worker: pass --worker=N")
    worker = _worker(args, s)
    if args.lines < 0:
        raise LaunchError(f"bad --lines {args.lines}: must be >= 0")
    return lambda gcloud: gcloud(ssh_args(s, worker, remote.logs_script(args.lines)))


def prepare_ssh(args: argparse.Namespace) -> Step:
    """The step opens a shell on one worker, or runs --command on one worker or all of them."""
    s = _target(args)
    worker = _worker(args, s)
    if worker == "all" and not args.command_line:
        raise LaunchError("an interactive shell needs one worker: pass --worker=N, or --command=CMD for all")
    return lambda gcloud: gcloud(ssh_args(s, worker, args.command_line))


def prepare_stop(args: argparse.Namespace) -> Step:
    """The step stops the trainer on every worker (SIGTERM: it checkpoints first); the TPU keeps running."""
    s = _target(args)
    return lambda gcloud: gcloud(ssh_args(s, "all", remote.stop_script()))


def prepare_delete(args: argparse.Namespace) -> Step:
    """The step deletes the TPU; the saved launch stays for a later restart."""
    s = _target(args)
    return lambda gcloud: gcloud(delete_args(s))


def prepare_bucket(args: argparse.Namespace) -> Step:
    """The step creates the bucket in the TPU's region if missing, grants the TPU's service account object
    access, and, when the TPU is up, proves from every worker that it can write, read and delete there."""
    s = _target(args)
    match = re.fullmatch(r"gs://([a-z0-9][-_.a-z0-9]{1,220}[a-z0-9])/?", args.bucket)
    if not match:
        raise LaunchError(f"bad --bucket {args.bucket!r}: expected gs://NAME (lower-case letters, digits, -, _, .)")
    bucket = f"gs://{match.group(1)}"
    region = s.zone.rsplit("-", 1)[0]

    def run(gcloud: Gcloud) -> None:
        _resolve_project(s, gcloud)
        if not gcloud(["storage", "buckets", "describe", bucket, *_project(s), "--format=value(name)"], query=True):
            gcloud(["storage", "buckets", "create", bucket, *_project(s), f"--location={region}",
                    "--uniform-bucket-level-access"])
        account = gcloud([*_TPU, "describe", s.name, *_where(s), "--format=value(serviceAccount.email)"],
                         query=True)
        if not account:  # TPU VMs run as the Compute Engine default service account unless told otherwise.
            number = gcloud(["projects", "describe", s.project or "PROJECT_ID", "--format=value(projectNumber)"],
                            query=True, dry_run_answer="PROJECT_NUMBER")
            account = f"{number}-compute@developer.gserviceaccount.com"
        gcloud(["storage", "buckets", "add-iam-policy-binding", bucket, *_project(s),
                f"--member=serviceAccount:{account}", "--role=roles/storage.objectAdmin"])
        if _vm_state(s, gcloud, "ACTIVE" if s.queued else "READY") in _UP:
            gcloud(ssh_args(s, "all", remote.bucket_probe_script(bucket)))
        else:
            note(f"{s.name} is not up: run bucket again once it is, to check access from its workers")

    return run


def prepare_list(args: argparse.Namespace) -> Step:
    """The step prints the remembered launches, then lists TPUs and queued resources per zone."""
    launches = saved_states(args.state_dir)
    if args.dry_run:  # what earlier dry runs remembered, in place of the real records of the same name
        dry = saved_states(args.state_dir / DRY_RUN_DIR)
        launches = sorted(dry + [s for s in launches if s.name not in {d.name for d in dry}], key=lambda s: s.name)
    zones = [check_zone(args.zone)] if args.zone else sorted({s.zone for s in launches if s.zone})
    if not zones:
        raise LaunchError(f"no zone to list: pass --zone (no launches saved in {args.state_dir})")

    def run(gcloud: Gcloud) -> None:
        for s in launches:
            note(f"remembered: {s.name} {s.zone} {s.accelerator_type or '?'} {s.capacity}"
                 f"{' queued' if s.queued else ''} workdir {s.workdir or '-'}")
        project = [f"--project={args.project}"] if args.project else []
        for zone in zones:
            gcloud([*_TPU, "list", f"--zone={zone}", *project])
            gcloud([*_QUEUED, "list", f"--zone={zone}", *project])

    return run


def prepare_plan(args: argparse.Namespace, extras: list[str]) -> Step:
    """Validate config and overrides; the step runs the pod planner here for the slice's accelerator type."""
    saved = _load(args, check_tpu_name(args.name)) if args.name else None
    accelerator_type = args.accelerator_type or (saved.accelerator_type if saved else None)
    if not accelerator_type:
        raise LaunchError("accelerator type unknown: pass --accelerator-type (e.g. v4-32) or the --name of a "
                          "created TPU")
    accelerator_type = parse_accelerator(accelerator_type).name
    config = _config_in_checkout(args.config)
    overrides = _check_overrides(extras)
    check_config(config, overrides)
    command = [*PLANNER, f"--config={config}", f"--accelerator-type={accelerator_type}", *overrides,
               *([f"--json={args.json}"] if args.json else [])]

    def run(gcloud: Gcloud) -> None:
        if gcloud.dry_run:
            print(shlex.join(command), file=gcloud.out, flush=True)
            return
        done = subprocess.run(command, cwd=REPO_ROOT, check=False)
        if done.returncode:
            raise RuntimeError(f"the planner failed with exit status {done.returncode} (its output is above)")

    return run


# ---------------------------------------------------------------- command line


_PREPARE = {
    "create": prepare_create, "bucket": prepare_bucket, "install": prepare_install, "restart": prepare_restart,
    "status": prepare_status, "logs": prepare_logs, "ssh": prepare_ssh, "stop": prepare_stop,
    "delete": prepare_delete, "list": prepare_list,
}
_WITH_OVERRIDES = {"train": prepare_train, "plan": prepare_plan}
_LOCAL_ONLY = ("plan",)  # commands that never call gcloud


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per lifecycle step, all sharing --project/--dry-run/--state-dir, most --name."""
    base = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    base.add_argument("--project", help="GCP project (default: the saved one, else gcloud's configured project)")
    base.add_argument("--dry-run", action="store_true", help="print the gcloud commands instead of running them")
    base.add_argument("--state-dir", type=pathlib.Path, default=default_state_dir(),
                      help="where launches are remembered (default: %(default)s)")
    cli.add_verbose_flag(base)
    named = argparse.ArgumentParser(add_help=False, allow_abbrev=False, parents=[base])
    named.add_argument("--name", required=True, help="TPU (and queued resource) name, e.g. effnet")

    def zone(p: argparse.ArgumentParser, required: bool) -> None:
        default = "" if required else " (default: the saved one)"
        p.add_argument("--zone", required=required, help=f"e.g. us-central2-b{default}")

    def worker(p: argparse.ArgumentParser, default: str) -> None:
        p.add_argument("--worker", default=default, help=f"worker index, or all (default: {default})")

    def config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, help="config file in this checkout with its argument, e.g. "
                                                        "configs/imagenet1k.py:s")

    parser = argparse.ArgumentParser(prog="python -m launch.tpu", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, parent: argparse.ArgumentParser = named) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[parent], help=help_text, description=help_text, allow_abbrev=False)

    p = add("plan", "Compile the train step for an accelerator type here, without a TPU, and print HBM per device, "
                    "collective bytes and estimated hours (python -m efficientnetv2_jax.plan); extra "
                    "--config.FIELD=VALUE args pass through.", base)
    p.add_argument("--name", help="take the accelerator type of this created TPU")
    p.add_argument("--accelerator-type", help="e.g. v3-32, v4-32, v5p-64")
    config(p)
    p.add_argument("--json", help="also write the plan as JSON to this path")

    p = add("create", "Create a TPU VM (or with --queued, a queued resource, waiting until it is ACTIVE), after "
                      "checking that the project has the Cloud TPU API enabled.")
    zone(p, True)
    p.add_argument("--accelerator-type", required=True, help="e.g. v4-32, v5litepod-16, v5p-64, v6e-8")
    p.add_argument("--runtime-version", help="TPU software version (default: the JAX one for the generation)")
    capacity = p.add_mutually_exclusive_group()
    capacity.add_argument("--spot", action="store_true", help="Spot capacity: cheap, preemptible, no time limit")
    capacity.add_argument("--preemptible", action="store_true", help="preemptible capacity (not with --queued)")
    p.add_argument("--queued", action="store_true", help="request through queued-resources (best practice for Spot)")

    p = add("bucket", "Create the GCS bucket in the TPU's region if missing, grant the TPU's service account "
                      "object access, and check from every worker that it can write, read and delete there.")
    zone(p, False)
    p.add_argument("--bucket", required=True, help="gs://NAME")

    p = add("install", "Ship this checkout to every worker and pip install -e '.[tpu]' there (stops a running "
                       "trainer; replaces only the files the previous install shipped).")
    zone(p, False)

    p = add("train", "Start the trainer detached on all workers; extra --config.FIELD=VALUE args pass through.")
    zone(p, False)
    config(p)
    p.add_argument("--workdir", required=True, help="checkpoints and metrics: a gs:// path")
    p.add_argument("--accelerator-type", help="only if the TPU was not created by this launcher")
    p.add_argument("--replace", action="store_true", help="stop a trainer that is still running first")

    p = add("logs", "Follow one worker's training log.")
    zone(p, False)
    worker(p, "0")
    p.add_argument("--lines", type=int, default=100, help="lines of history to show first (default: 100)")

    p = add("status", "Show the TPU's state and, when it is up, whether each worker trains and its last log lines.")
    zone(p, False)
    p.add_argument("--queued", action="store_true", help="the TPU is a queued resource (default: saved)")

    p = add("ssh", "Open a shell on one worker, or run --command on one worker or on all of them.")
    zone(p, False)
    worker(p, "0")
    p.add_argument("--command", dest="command_line", help="a shell command line to run instead of a shell")

    p = add("stop", "Stop the trainer on every worker (SIGTERM: it writes a checkpoint first). The TPU keeps "
                    "running: delete it, or train/restart to go on.")
    zone(p, False)

    p = add("restart", "After a preemption: recreate or start the TPU if needed, reinstall the saved code, and "
                       "rerun the saved train command (it resumes from the workdir).")
    zone(p, False)

    p = add("delete", "Delete the TPU (and its queued resource). The saved launch stays, so restart can recreate it.")
    zone(p, False)
    p.add_argument("--queued", action="store_true", help="the TPU is a queued resource (default: saved)")

    p = add("list", "List the remembered launches, and the TPUs and queued resources in their zones (or --zone).",
            base)
    p.add_argument("--zone", help="the zone to list (default: every zone of a remembered launch)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Validate everything, then check for gcloud, then run (or print) the commands; 2 = bad input, 1 = failure."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    try:
        if args.command in _WITH_OVERRIDES:
            step = _WITH_OVERRIDES[args.command](args, extras)
        elif extras:
            raise LaunchError(f"unrecognized arguments for {args.command}: {' '.join(extras)}")
        else:
            step = _PREPARE[args.command](args)
        gcloud = Gcloud(dry_run=args.dry_run, required=args.command not in _LOCAL_ONLY)
        step(gcloud)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
    cli.run_main(main, usage_errors=(LaunchError,))  # Anything unexpected: one line too (--verbose: traceback).
