"""Cloud TPU launcher: exact gcloud lines in dry runs, validation before anything runs, and the worker scripts."""

import io
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tarfile
import time

import pytest

from launch import remote, tpu
from launch.accelerators import parse_accelerator

ZONE = "us-central2-b"
WORKDIR = "gs://bkt/effnetv2-s"
OVERRIDES = ["--config.batch_size=1024", "--config.lr.base=0.064"]

# The worker scripts, spelled out independently of launch.remote so that a change to them shows up here.
PID = "$HOME/efficientnetv2_jax_logs/train.pid"
ALIVE = f'p=$(cat "{PID}" 2>/dev/null || true); [ -n "$p" ] && kill -0 "$p" 2>/dev/null'
STOP = f'if {ALIVE}; then kill "$p"; timeout 300 tail --pid="$p" -f /dev/null || kill -9 "$p"; fi'
INSTALL = (
    f'set -e; {STOP}; export PATH="$HOME/.local/bin:$PATH"; '
    "command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh; "
    'mkdir -p "$HOME/efficientnetv2_jax"; cd "$HOME/efficientnetv2_jax"; '
    "if [ -f .shipped_files ]; then xargs -r -d '\\n' rm -f -- < .shipped_files; fi; "
    'tar -xzf "$HOME/efficientnetv2_jax.tar.gz"; tar -tzf "$HOME/efficientnetv2_jax.tar.gz" > .shipped_files; '
    '[ -x "$HOME/efficientnetv2_jax_venv/bin/python" ] || uv venv --python 3.11 "$HOME/efficientnetv2_jax_venv"; '
    "uv pip install --python \"$HOME/efficientnetv2_jax_venv/bin/python\" -e '.[tpu]'; "
    'echo "$(hostname): installed"'
)


def train_script(trainer_args: str, replace: bool) -> str:
    log = "$HOME/efficientnetv2_jax_logs/train.log"
    return (
        'set -e; mkdir -p "$HOME/efficientnetv2_jax_logs"; ' + (f"{STOP}; " if replace else "")
        + f'if {ALIVE}; then echo "$(hostname): a trainer is already running (pid $p); use --replace" >&2; exit 1; fi; '
        'rm -f /tmp/libtpu_lockfile; cd "$HOME/efficientnetv2_jax"; '
        f'echo "=== $(date -u +%FT%TZ) start" >> "{log}"; '
        f'nohup "$HOME/efficientnetv2_jax_venv/bin/python" -m efficientnetv2_jax.main {trainer_args} '
        f'>> "{log}" 2>&1 < /dev/null & echo $! > "{PID}"; '
        f'echo "$(hostname): trainer started (pid $(cat "{PID}")), log {log}"'
    )


TRAIN_ARGS = f"--config=configs/imagenet1k.py:s --workdir={WORKDIR} " + " ".join(OVERRIDES)


def ssh_line(worker: str, script: str, name: str = "effnet", project: str = "") -> str:
    command = shlex.quote(f"--command={script}")
    return f"gcloud compute tpus tpu-vm ssh {name} --zone={ZONE}{project} --worker={worker} {command}"


def launch(capsys, *argv: str) -> tuple[int, list[str], str]:
    """Run the CLI in-process; returns (exit code, stdout lines, stderr)."""
    rc = tpu.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNETV2_LAUNCH_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


FAKE_GCLOUD = """
import json, os, sys
args, env = sys.argv[1:], os.environ
open(os.environ["FAKE_CALLS"], "a").write(json.dumps(args) + "\\n")
if args[:2] == ["config", "get-value"]:
    print(env.get("FAKE_PROJECT", "fake-proj"))
elif args[:2] == ["services", "list"]:
    print(env.get("FAKE_API", "tpu.googleapis.com"))
elif args[:3] == ["storage", "buckets", "describe"]:
    if not env.get("FAKE_BUCKET"):
        sys.exit(print("ERROR: (gcloud.storage.buckets.describe) gs://x not found: 404.", file=sys.stderr) or 1)
    print(env["FAKE_BUCKET"])
elif args[:2] == ["projects", "describe"]:
    print("123")
elif "describe" in args and "--format=value(serviceAccount.email)" in args:
    print(env.get("FAKE_ACCOUNT", ""))
elif "describe" in args:
    print(env.get("FAKE_STATE", "READY"))
elif "create" in args and env.get("FAKE_CREATE_FAILS"):
    sys.exit(print("ERROR: Quota limit 'TPUV4sPerProjectPerZone' exceeded.", file=sys.stderr) or 1)
"""


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
    """A `gcloud` on PATH that records its argv (one JSON list per line) and answers queries from $FAKE_*."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    script = bin_dir / "gcloud"
    script.write_text(f"#!{sys.executable}\n{FAKE_GCLOUD}")
    script.chmod(0o755)
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return lambda: [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def _readme_sequence(text: str) -> list[list[str]]:
    """The `python -m launch.tpu ...` lines of the first bash block in `text`, continuation lines joined."""
    block = text.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [shlex.split(line.split("#")[0])[3:] for line in block.splitlines()
            if line.startswith("python -m launch.tpu")]


@pytest.mark.parametrize("source", ["launch/tpu.py", "README.md"])
def test_the_documented_sequence_previews_end_to_end_with_dry_run(capsys, state_dir, monkeypatch, source):
    """Every step of the README / module docstring sequence, with --dry-run, in order: zone, type and the train
    command come from the earlier dry runs, restart is previewed, and the real records stay untouched."""
    monkeypatch.setenv("PATH", "")  # a dry run needs no gcloud
    text = tpu.__doc__ if source == "launch/tpu.py" else (tpu.REPO_ROOT / "README.md").read_text().split(
        "## Training on Cloud TPU VMs", 1)[1]
    sequence = _readme_sequence(text)
    assert {"create", "install", "train", "restart", "delete"} <= {argv[0] for argv in sequence}
    printed = {}
    for argv in sequence:
        rc, lines, err = launch(capsys, *argv, "--dry-run")
        assert rc == 0, (argv, err)
        printed[argv[0]] = lines
    assert not list(state_dir.glob("*.json"))  # dry runs remember apart, in dry-run/
    restart = printed["restart"]
    assert [line.split()[:5] for line in restart] == [
        ["gcloud", "compute", "tpus", "tpu-vm", "describe"], ["gcloud", "compute", "tpus", "tpu-vm", "delete"],
        ["gcloud", "compute", "tpus", "tpu-vm", "create"], ["gcloud", "compute", "tpus", "tpu-vm", "scp"],
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert "--accelerator-type=v4-32" in restart[2] and "--spot" in restart[2]
    assert "--workdir=gs://my-bucket/effnetv2-s-1k" in restart[-1]


def test_v4_32_spot_launch_dry_run_prints_exact_gcloud_lines(capsys, state_dir, monkeypatch):
    monkeypatch.setenv("PATH", "")  # a dry run needs no gcloud
    where = f"--name=effnet --zone={ZONE}"
    rc, create, _ = launch(capsys, *f"create {where} --accelerator-type=v4-32 --spot --dry-run".split())
    assert rc == 0
    assert create == [
        "gcloud config get-value project",
        "gcloud services list --enabled --filter=config.name=tpu.googleapis.com '--format=value(config.name)'",
        f"gcloud compute tpus tpu-vm create effnet --zone={ZONE} --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base --spot",
    ]
    rc, install, _ = launch(capsys, *"install --name=effnet --dry-run".split())  # zone: from the dry create
    assert rc == 0
    assert install == [
        f"gcloud compute tpus tpu-vm scp {state_dir}/effnet.tar.gz effnet:efficientnetv2_jax.tar.gz "
        f"--zone={ZONE} --worker=all",
        ssh_line("all", INSTALL),
    ]
    rc, train, _ = launch(capsys, "train", "--name=effnet", "--config=configs/imagenet1k.py:s", f"--workdir={WORKDIR}",
                          *OVERRIDES, "--dry-run")
    assert rc == 0
    assert train == [ssh_line("all", train_script(TRAIN_ARGS, replace=False))]
    assert sorted(p.relative_to(state_dir).as_posix() for p in state_dir.rglob("*")) == [
        "dry-run", "dry-run/effnet.json"]  # a dry run writes no real record and no tarball


def test_queued_spot_create_waits_for_active_and_delete_forces(capsys, state_dir):
    flags = f"--name=q1 --zone={ZONE} --project=my-proj --dry-run".split()
    rc, lines, _ = launch(capsys, "create", *flags, "--accelerator-type=v5litepod-16", "--queued", "--spot")
    assert rc == 0
    assert lines == [
        "gcloud services list --enabled --project=my-proj --filter=config.name=tpu.googleapis.com "
        "'--format=value(config.name)'",
        f"gcloud compute tpus queued-resources create q1 --node-id=q1 --zone={ZONE} --project=my-proj "
        "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot",
        f"gcloud compute tpus queued-resources describe q1 --zone={ZONE} --project=my-proj "
        "'--format=value(state.state)'",
    ]
    rc, lines, _ = launch(capsys, "delete", *flags, "--queued")
    assert (rc, lines) == (0, [f"gcloud compute tpus queued-resources delete q1 --zone={ZONE} --project=my-proj "
                               "--force --quiet"])


def test_delete_of_an_unremembered_tpu(capsys, state_dir):
    rc, lines, _ = launch(capsys, "delete", "--name=q1", f"--zone={ZONE}", "--project=my-proj", "--dry-run")
    assert (rc, lines) == (0, [f"gcloud compute tpus tpu-vm delete q1 --zone={ZONE} --project=my-proj --quiet"])


def test_real_run_records_the_launch_and_restart_redoes_it(capsys, state_dir, fake_gcloud):
    where = f"--name=effnet --zone={ZONE}"
    assert launch(capsys, *f"create {where} --accelerator-type=v4-32 --spot".split())[0] == 0
    assert launch(capsys, *"install --name=effnet".split())[0] == 0  # zone comes from the saved launch
    rc, _, _ = launch(capsys, "train", "--name=effnet", "--config=configs/imagenet1k.py:s", f"--workdir={WORKDIR}",
                      *OVERRIDES)
    assert rc == 0
    tarball = state_dir / "effnet.tar.gz"
    assert [call[:4] for call in fake_gcloud()] == [
        ["config", "get-value", "project"], ["services", "list", "--enabled", "--project=fake-proj"],
        ["compute", "tpus", "tpu-vm", "create"], ["compute", "tpus", "tpu-vm", "scp"],
        ["compute", "tpus", "tpu-vm", "ssh"], ["compute", "tpus", "tpu-vm", "ssh"],
    ]
    where = f"--zone={ZONE} --project=fake-proj"  # gcloud's project, resolved once and remembered
    assert fake_gcloud()[3] == ["compute", "tpus", "tpu-vm", "scp", str(tarball), "effnet:efficientnetv2_jax.tar.gz",
                                *where.split(), "--worker=all"]
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert {"setup.py", "launch/tpu.py", "configs/imagenet1k.py"} <= names
    assert not any(n.startswith((".venv/", ".git/")) or "__pycache__" in n for n in names)

    rc, lines, err = launch(capsys, "restart", "--name=effnet", "--dry-run")
    assert rc == 0 and "effnet: PREEMPTED" in err
    assert lines == [
        f"gcloud compute tpus tpu-vm describe effnet {where} '--format=value(state)'",
        f"gcloud compute tpus tpu-vm delete effnet {where} --quiet",
        f"gcloud compute tpus tpu-vm create effnet {where} --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base --spot",
        f"gcloud compute tpus tpu-vm scp {tarball} effnet:efficientnetv2_jax.tar.gz {where} --worker=all",
        ssh_line("all", INSTALL, project=" --project=fake-proj"),
        ssh_line("all", train_script(TRAIN_ARGS, replace=True), project=" --project=fake-proj"),
    ]


PROJECT = "--project=fake-proj"


@pytest.mark.parametrize("vm_state, recovery", [
    ("READY", []),
    ("STOPPED", [["compute", "tpus", "tpu-vm", "start", "effnet", f"--zone={ZONE}", PROJECT]]),
    ("TERMINATED", [["compute", "tpus", "tpu-vm", "delete", "effnet", f"--zone={ZONE}", PROJECT, "--quiet"],
                    ["compute", "tpus", "tpu-vm", "create", "effnet", f"--zone={ZONE}", PROJECT,
                     "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base"]]),
])
def test_restart_recovers_according_to_the_vm_state(capsys, state_dir, fake_gcloud, monkeypatch, vm_state, recovery):
    launch(capsys, *f"create --name=effnet --zone={ZONE} --accelerator-type=v4-8".split())
    launch(capsys, "install", "--name=effnet")
    launch(capsys, "train", "--name=effnet", "--config=configs/imagenet1k.py:s", f"--workdir={WORKDIR}")
    before = len(fake_gcloud())
    monkeypatch.setenv("FAKE_STATE", vm_state)
    assert launch(capsys, "restart", "--name=effnet")[0] == 0
    calls = fake_gcloud()[before:]
    assert calls[0][3] == "describe"
    assert calls[1:-3] == recovery
    assert [c[3] for c in calls[-3:]] == ["scp", "ssh", "ssh"]
    assert calls[-1][-1] == "--command=" + train_script(f"--config=configs/imagenet1k.py:s --workdir={WORKDIR}", True)


def test_logs_status_ssh_and_stop_target_workers(capsys, state_dir):
    rc, lines, _ = launch(capsys, "logs", "--name=effnet", f"--zone={ZONE}", "--worker=3", "--lines=20", "--dry-run")
    assert (rc, lines) == (0, [ssh_line("3", 'tail -n 20 -F "$HOME/efficientnetv2_jax_logs/train.log"')])
    rc, lines, _ = launch(capsys, "status", "--name=effnet", f"--zone={ZONE}", "--dry-run")
    assert rc == 0
    assert lines[0] == f"gcloud compute tpus tpu-vm describe effnet --zone={ZONE} '--format=value(state)'"
    assert lines[1] == ssh_line("all", (
        f'if {ALIVE}; then echo "$(hostname): training (pid $p)"; else echo "$(hostname): not training"; fi; '
        'tail -n 3 "$HOME/efficientnetv2_jax_logs/train.log" 2>/dev/null || true'))
    rc, lines, _ = launch(capsys, "ssh", "--name=effnet", f"--zone={ZONE}", "--worker=1", "--dry-run")
    assert (rc, lines) == (0, [f"gcloud compute tpus tpu-vm ssh effnet --zone={ZONE} --worker=1"])
    rc, lines, _ = launch(capsys, "ssh", "--name=effnet", f"--zone={ZONE}", "--worker=all", "--command=df -h",
                          "--dry-run")
    assert (rc, lines) == (0, [ssh_line("all", "df -h")])
    rc, lines, _ = launch(capsys, "stop", "--name=effnet", f"--zone={ZONE}", "--dry-run")
    assert (rc, lines) == (0, [ssh_line("all", f'{STOP}; echo "$(hostname): not training"')])


def test_list_shows_remembered_launches_and_each_zone(capsys, state_dir, fake_gcloud):
    launch(capsys, *f"create --name=effnet --zone={ZONE} --accelerator-type=v4-8".split())
    launch(capsys, *"create --name=other --zone=europe-west4-a --accelerator-type=v3-8 --spot".split())
    rc, _, err = launch(capsys, "list")
    assert rc == 0
    assert "remembered: effnet us-central2-b v4-8 on-demand workdir -" in err
    assert "remembered: other europe-west4-a v3-8 spot workdir -" in err
    assert [c for c in fake_gcloud() if "list" in c and c[0] == "compute"] == [
        ["compute", "tpus", tpu_kind, "list", f"--zone={zone}"]
        for zone in ("europe-west4-a", ZONE) for tpu_kind in ("tpu-vm", "queued-resources")]


def test_bucket_is_created_granted_and_probed_from_every_worker(capsys, state_dir, fake_gcloud, monkeypatch):
    launch(capsys, *f"create --name=effnet --zone={ZONE} --accelerator-type=v4-32".split())
    before = len(fake_gcloud())
    assert launch(capsys, "bucket", "--name=effnet", "--bucket=gs://my-bkt")[0] == 0
    calls = fake_gcloud()[before:]
    assert calls[:4] == [
        ["storage", "buckets", "describe", "gs://my-bkt", PROJECT, "--format=value(name)"],
        ["storage", "buckets", "create", "gs://my-bkt", PROJECT, "--location=us-central2",
         "--uniform-bucket-level-access"],
        ["compute", "tpus", "tpu-vm", "describe", "effnet", f"--zone={ZONE}", PROJECT,
         "--format=value(serviceAccount.email)"],
        ["projects", "describe", "fake-proj", "--format=value(projectNumber)"],
    ]
    assert calls[4] == ["storage", "buckets", "add-iam-policy-binding", "gs://my-bkt", PROJECT,
                        "--member=serviceAccount:123-compute@developer.gserviceaccount.com",
                        "--role=roles/storage.objectAdmin"]
    assert calls[6][3:5] == ["ssh", "effnet"] and calls[6][-1] == "--command=" + remote.bucket_probe_script(
        "gs://my-bkt")
    monkeypatch.setenv("FAKE_BUCKET", "my-bkt")  # it exists now, and the TPU has its own service account
    monkeypatch.setenv("FAKE_ACCOUNT", "tpu-sa@fake-proj.iam.gserviceaccount.com")
    monkeypatch.setenv("FAKE_STATE", "CREATING")
    before = len(fake_gcloud())
    rc, _, err = launch(capsys, "bucket", "--name=effnet", "--bucket=gs://my-bkt/")
    assert rc == 0 and "effnet is not up: run bucket again once it is" in err
    assert [c[:3] for c in fake_gcloud()[before:]] == [
        ["storage", "buckets", "describe"], ["compute", "tpus", "tpu-vm"], ["storage", "buckets",
                                                                            "add-iam-policy-binding"],
        ["compute", "tpus", "tpu-vm"]]
    assert "--member=serviceAccount:tpu-sa@fake-proj.iam.gserviceaccount.com" in fake_gcloud()[before + 2]


def test_bucket_probe_script_writes_reads_and_deletes(tmp_path):
    """Run the real probe with a `gcloud storage` stand-in backed by a local folder."""
    bucket_dir = tmp_path / "bucket"
    gcloud = tmp_path / "bin" / "gcloud"
    gcloud.parent.mkdir()
    gcloud.write_text(f"#!/bin/bash\nf={bucket_dir}/${{3#gs://bkt/}}\n"  # gcloud storage {{cp -,cat,rm}} gs://bkt/X
                      'case "$2" in cp) f=' + f"{bucket_dir}" + '/${4#gs://bkt/}; mkdir -p "$(dirname "$f")"; '
                      'cat > "$f";; cat) cat "$f";; rm) rm "$f";; esac\n')
    gcloud.chmod(0o755)
    env = {**os.environ, "PATH": f"{gcloud.parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", remote.bucket_probe_script("gs://bkt")], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("can write, read and delete in gs://bkt\n")
    assert (bucket_dir / ".efficientnetv2_jax_probe").is_dir()  # written there, then deleted
    assert not [p for p in bucket_dir.rglob("*") if p.is_file()]
    gcloud.write_text("#!/bin/bash\nexit 1\n")  # no access: the probe fails
    done = subprocess.run(["bash", "-c", remote.bucket_probe_script("gs://bkt")], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode != 0 and "can write" not in done.stdout


def test_create_checks_project_api_and_reports_quota(capsys, state_dir, fake_gcloud, monkeypatch):
    create = f"create --name=effnet --zone={ZONE} --accelerator-type=v4-32".split()
    monkeypatch.setenv("FAKE_PROJECT", "")
    rc, _, err = launch(capsys, *create)
    assert (rc, err) == (2, "error: no GCP project: pass --project=ID (or run `gcloud config set project ID`)\n")
    monkeypatch.setenv("FAKE_API", "")
    rc, _, err = launch(capsys, *create, "--project=p1")
    assert rc == 1 and err == (
        "error: the Cloud TPU API is not enabled in p1: run `gcloud services enable tpu.googleapis.com "
        "--project=p1`, then check the TPU quota (https://console.cloud.google.com/iam-admin/quotas?"
        "service=tpu.googleapis.com)\n")
    assert not any("create" in c for c in fake_gcloud())
    monkeypatch.setenv("FAKE_API", "tpu.googleapis.com")
    monkeypatch.setenv("FAKE_CREATE_FAILS", "1")
    rc, _, err = launch(capsys, *create, "--project=p1")
    assert rc == 1 and err.startswith("error: creating v4-32 effnet in us-central2-b failed (its output is above); "
                                      "if it reports quota or capacity: TPU quota is per project")
    assert not (state_dir / "effnet.json").exists()


def test_plan_runs_the_planner_for_the_slice_type(capsys, state_dir, tmp_path, monkeypatch):
    """`plan` runs `python -m efficientnetv2_jax.plan` here (a stand-in records its arguments), no gcloud needed."""
    record = tmp_path / "planner_args.json"
    stand_in = tmp_path / "planner.py"
    stand_in.write_text(f"import json, os, sys\njson.dump([os.getcwd(), *sys.argv[1:]], open({str(record)!r}, 'w'))\n"
                        "sys.exit(int(os.environ.get('PLANNER_EXIT', '0')))\n")
    monkeypatch.setattr(tpu, "PLANNER", [sys.executable, str(stand_in)])
    monkeypatch.setenv("PATH", "")
    rc, _, err = launch(capsys, "plan", "--accelerator-type=v3-32", "--config=configs/imagenet1k.py:s",
                        "--config.model.dtype=bfloat16", "--json=/tmp/plan.json")
    assert rc == 0, err
    assert json.loads(record.read_text()) == [str(tpu.REPO_ROOT), "--config=configs/imagenet1k.py:s",
                                              "--accelerator-type=v3-32", "--config.model.dtype=bfloat16",
                                              "--json=/tmp/plan.json"]
    launch(capsys, *f"create --name=effnet --zone={ZONE} --accelerator-type=v4-32 --dry-run".split())
    rc, lines, _ = launch(capsys, "plan", "--name=effnet", "--config=configs/imagenet1k.py:m", "--dry-run")
    assert (rc, lines) == (0, [shlex.join([sys.executable, str(stand_in), "--config=configs/imagenet1k.py:m",
                                           "--accelerator-type=v4-32"])])
    monkeypatch.setenv("PLANNER_EXIT", "3")
    rc, _, err = launch(capsys, "plan", "--accelerator-type=v3-32", "--config=configs/imagenet1k.py:s")
    assert (rc, err) == (1, "error: the planner failed with exit status 3 (its output is above)\n")


@pytest.mark.parametrize("workdir", ["runs/x", "/home/me/runs/x", "gs://", "gs:///"])
def test_every_slice_refuses_a_local_workdir(capsys, state_dir, workdir):
    rc, lines, err = launch(capsys, "train", "--name=one", f"--zone={ZONE}", "--accelerator-type=v6e-8",
                            "--config=configs/imagenet1k.py:s", f"--workdir={workdir}", "--dry-run")
    assert (rc, lines) == (2, [])
    assert err.startswith(f"error: workdir {workdir!r} is not a gs:// path: a TPU VM's disk does not survive")


TRAIN = ["train", "--name=effnet", f"--zone={ZONE}", "--accelerator-type=v4-32", "--config=configs/imagenet1k.py:s"]


@pytest.mark.parametrize("argv, message", [
    (["create", "--name=effnet", "--zone=us-central2", "--accelerator-type=v4-32"],
     "bad zone 'us-central2': expected <region>-<letter>, e.g. us-central2-b, europe-west4-a"),
    (["create", "--name=effnet", f"--zone={ZONE}", "--accelerator-type=v4-12"],
     "bad accelerator size in 'v4-12': v4 sizes count TensorCores and must be multiples of 8 up to 8192"),
    (["create", "--name=effnet", f"--zone={ZONE}", "--accelerator-type=v5e-8"],
     "unknown TPU generation 'v5e' in 'v5e-8' (v5e is spelled v5litepod); valid: v2, v3, v4, v5litepod, v5p, v6e"),
    (["create", "--name=effnet", f"--zone={ZONE}", "--accelerator-type=v6e-12"],
     "bad accelerator size in 'v6e-12': v6e sizes count chips and must be 1, 4, 8, 16, 32, 64, 128, 256"),
    (["create", "--name=effnet", f"--zone={ZONE}", "--accelerator-type=tpu"],
     "bad accelerator type 'tpu': expected <generation>-<size>, e.g. v4-32, v5litepod-16"),
    (["create", "--name=Effnet", f"--zone={ZONE}", "--accelerator-type=v4-8"],
     "bad TPU name 'Effnet': use lower-case letters, digits and dashes, start with a letter, end with a letter or "
     "digit, at most 63 characters"),
    (["create", "--name=q", f"--zone={ZONE}", "--accelerator-type=v4-8", "--queued", "--preemptible"],
     "queued resources take --spot, not --preemptible"),
    ([*TRAIN, "--workdir=runs/effnet"],
     "workdir 'runs/effnet' is not a gs:// path: a TPU VM's disk does not survive `restart` (it recreates the VM) "
     "and every host must see the same checkpoints, so use a bucket, e.g. gs://my-bucket/effnetv2-s-1k"),
    ([*TRAIN[:-1], "--config=configs/imagenet1k.py:q", f"--workdir={WORKDIR}"],
     f"the trainer would reject this: --config={tpu.REPO_ROOT}/configs/imagenet1k.py:q: Unknown model 'q'; valid "
     "choices: efficientnetv2-b0, efficientnetv2-b1, efficientnetv2-b2, efficientnetv2-b3, efficientnetv2-s, "
     "efficientnetv2-m, efficientnetv2-l, efficientnetv2-xl."),
    ([*TRAIN, f"--workdir={WORKDIR}", "--config.batchsize=8"],
     "the trainer would reject this: unknown config field 'batchsize'; Did you mean \"batch_size\" instead of "
     "\"batchsize\"?"),
    ([*TRAIN, f"--workdir={WORKDIR}", "--config.lr.base=fast"],
     "the trainer would reject this: flag --config.lr.base=fast: could not convert string to float: 'fast'"),
    (["plan", "--config=configs/imagenet1k.py:s"],
     "accelerator type unknown: pass --accelerator-type (e.g. v4-32) or the --name of a created TPU"),
    (["logs", "--name=effnet", f"--zone={ZONE}", "--worker=x"],
     "bad --worker x: effnet (type unknown) has workers 0, 1, ... (or all)"),
    (["ssh", "--name=effnet", f"--zone={ZONE}", "--worker=all"],
     "an interactive shell needs one worker: pass --worker=N, or --command=CMD for all"),
    (["bucket", "--name=effnet", f"--zone={ZONE}", "--bucket=my-bkt"],
     "bad --bucket 'my-bkt': expected gs://NAME (lower-case letters, digits, -, _, .)"),
    (["list"], "no zone to list: pass --zone (no launches saved in {state})"),
    ([*TRAIN[:-1], "--config=configs/nope.py:s", f"--workdir={WORKDIR}"],
     f"config file 'configs/nope.py' not found in {tpu.REPO_ROOT} (e.g. configs/imagenet1k.py:s)"),
    ([*TRAIN, f"--workdir={WORKDIR}", "--config.lr.base", "0.1"],
     "unrecognized argument '--config.lr.base'; trainer overrides look like --config.FIELD=VALUE"),
    (["train", "--name=effnet", f"--zone={ZONE}", "--config=configs/imagenet1k.py:s", f"--workdir={WORKDIR}"],
     "accelerator type unknown for effnet: pass --accelerator-type (e.g. v4-32)"),
    (["install", "--name=effnet"], "zone unknown for effnet: pass --zone (nothing saved in {state})"),
    (["restart", "--name=effnet", f"--zone={ZONE}"],
     "nothing to restart for effnet in {state} (missing accelerator_type, runtime_version, config, workdir, "
     "effnet.tar.gz): "
     "run create, install and train first"),
    (["delete", "--name=effnet", f"--zone={ZONE}", "--oops"], "unrecognized arguments for delete: --oops"),
])
def test_bad_input_is_one_line_exit_2_and_runs_nothing(capsys, state_dir, fake_gcloud, argv, message):
    rc, out, err = launch(capsys, *argv)
    assert (rc, out, err) == (2, [], f"error: {message.format(state=state_dir)}\n")
    assert fake_gcloud() == []


def test_missing_gcloud_is_reported_before_anything_runs(capsys, state_dir, monkeypatch):
    monkeypatch.setenv("PATH", "")
    rc, out, err = launch(capsys, "create", "--name=effnet", f"--zone={ZONE}", "--accelerator-type=v4-32")
    assert (rc, out) == (2, [])
    assert err == ("error: gcloud not found on PATH: install the Google Cloud CLI "
                   "(https://cloud.google.com/sdk/docs/install) or pass --dry-run to only print the commands\n")


@pytest.mark.parametrize("text, hosts, runtime", [
    ("v2-8", 1, "tpu-ubuntu2204-base"), ("v3-32", 4, "tpu-ubuntu2204-base"),
    ("v4-8", 1, "tpu-ubuntu2204-base"), ("v4-16", 2, "tpu-ubuntu2204-base"), ("v4-32", 4, "tpu-ubuntu2204-base"),
    ("v5litepod-8", 1, "v2-alpha-tpuv5-lite"), ("v5litepod-16", 4, "v2-alpha-tpuv5-lite"),
    ("v5p-8", 1, "v2-alpha-tpuv5"), ("v5p-64", 8, "v2-alpha-tpuv5"),
    ("v6e-8", 1, "v2-alpha-tpuv6e"), ("v6e-64", 16, "v2-alpha-tpuv6e"),
])
def test_accelerator_hosts_and_default_runtime(text, hosts, runtime):
    accelerator = parse_accelerator(text)
    assert (accelerator.hosts, accelerator.multi_host, accelerator.generation.runtime_version) == (
        hosts, hosts > 1, runtime)


def _kill_leftover_trainer(pid_file: pathlib.Path) -> None:
    try:
        os.kill(int(pid_file.read_text()), 9)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        pass


def test_worker_scripts_run_detached_refuse_a_second_trainer_and_replace_it(tmp_path, request):
    """Execute the real train/status/stop scripts with a fake $HOME and a fake venv python that waits for SIGTERM;
    every wait is bounded and a trainer left behind by a failure is killed."""
    request.addfinalizer(lambda: _kill_leftover_trainer(tmp_path / "efficientnetv2_jax_logs" / "train.pid"))
    python = tmp_path / "efficientnetv2_jax_venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    (tmp_path / "efficientnetv2_jax").mkdir()
    # Waits for SIGTERM, but gives up by itself after 30 s so that a failing test leaves no process behind.
    python.write_text("#!/bin/bash\ntrap 'echo stopped; exit 0' TERM\necho \"args: $*\"\n"
                      "for _ in $(seq 300); do sleep 0.1; done\necho gave up\n")
    python.chmod(0o755)
    env = {**os.environ, "HOME": str(tmp_path)}

    def worker(script: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)

    log_path = tmp_path / "efficientnetv2_jax_logs" / "train.log"

    def wait_for_log(text: str) -> None:  # the fake trainer has set its TERM trap once it has printed its arguments
        for _ in range(200):
            if text in log_path.read_text():
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never reached the log")

    first = worker(remote.train_script(["--workdir=gs://b/w", "--config.name=a b"], replace=False))
    assert first.returncode == 0 and "trainer started" in first.stdout
    wait_for_log("--config.name=a b")
    assert "a trainer is already running" in worker(remote.train_script(["--x"], replace=False)).stderr
    assert "training (pid" in worker(remote.status_script()).stdout
    assert worker(remote.train_script(["--second"], replace=True)).returncode == 0
    wait_for_log("--second")
    stopped = worker(remote.stop_script())
    assert stopped.returncode == 0 and "not training" in stopped.stdout
    log = log_path.read_text()
    assert log.count("start\n") == 2 and log.count("stopped") == 2
    assert "args: -m efficientnetv2_jax.main --workdir=gs://b/w --config.name=a b\n" in log
    assert "args: -m efficientnetv2_jax.main --second\n" in log
    assert "not training" in worker(remote.status_script()).stdout


def _tarball(path: pathlib.Path, files: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))


def test_install_script_unpacks_the_checkout_into_a_venv_and_deletes_only_what_it_shipped(tmp_path):
    """Run the real install script twice with a fake `uv` (recording its calls) instead of the network: the second
    install removes the files the first one shipped and keeps everything else in the folder (runs, notes)."""
    uv = tmp_path / ".local" / "bin" / "uv"
    uv.parent.mkdir(parents=True)
    uv.write_text('#!/bin/bash\necho "uv $* in $PWD" >> "$HOME/uv.log"\n'
                  'if [ "$1" = venv ]; then mkdir -p "$4/bin"; touch "$4/bin/python"; chmod +x "$4/bin/python"; fi\n')
    uv.chmod(0o755)
    env = {**os.environ, "HOME": str(tmp_path)}
    venv, checkout = tmp_path / "efficientnetv2_jax_venv", tmp_path / "efficientnetv2_jax"

    def install(files: dict[str, str]) -> None:
        _tarball(tmp_path / "efficientnetv2_jax.tar.gz", files)
        done = subprocess.run(["bash", "-c", remote.install_script()], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0, done.stderr

    install({"setup.py": "# setup\n", "pkg/old module.py": "old\n"})
    (checkout / "runs" / "r1").mkdir(parents=True)
    (checkout / "runs" / "r1" / "checkpoint").write_text("precious\n")
    (checkout / "pkg" / "notes.txt").write_text("mine\n")
    install({"setup.py": "# setup 2\n", "pkg/new.py": "new\n"})  # the second install reuses the venv
    assert sorted(p.relative_to(checkout).as_posix() for p in checkout.rglob("*") if p.is_file()) == [
        ".shipped_files", "pkg/new.py", "pkg/notes.txt", "runs/r1/checkpoint", "setup.py"]
    assert (checkout / "setup.py").read_text() == "# setup 2\n"
    assert (checkout / "runs" / "r1" / "checkpoint").read_text() == "precious\n"
    assert (tmp_path / "uv.log").read_text().splitlines() == [
        f"uv venv --python 3.11 {venv} in {checkout}",
        f"uv pip install --python {venv}/bin/python -e .[tpu] in {checkout}",
        f"uv pip install --python {venv}/bin/python -e .[tpu] in {checkout}",
    ]


def test_every_subcommand_has_help(capsys):
    for command in ("plan", "create", "bucket", "install", "train", "logs", "status", "ssh", "stop", "restart",
                    "delete", "list"):
        with pytest.raises(SystemExit) as exit_info:
            tpu.main([command, "--help"])
        assert exit_info.value.code == 0
        assert "--dry-run" in capsys.readouterr().out
    assert "python -m launch.tpu create" in pathlib.Path(tpu.__file__).read_text()
