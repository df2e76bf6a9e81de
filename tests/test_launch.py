"""Cloud TPU launcher: exact gcloud lines in dry runs, validation before anything runs, and the worker scripts."""

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
    'rm -rf "$HOME/efficientnetv2_jax"; mkdir -p "$HOME/efficientnetv2_jax"; '
    'tar -xzf "$HOME/efficientnetv2_jax.tar.gz" -C "$HOME/efficientnetv2_jax"; '
    '[ -x "$HOME/efficientnetv2_jax_venv/bin/python" ] || uv venv --python 3.11 "$HOME/efficientnetv2_jax_venv"; '
    'cd "$HOME/efficientnetv2_jax"; '
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


def ssh_line(worker: str, script: str, name: str = "effnet") -> str:
    command = shlex.quote(f"--command={script}")
    return f"gcloud compute tpus tpu-vm ssh {name} --zone={ZONE} --worker={worker} {command}"


def launch(capsys, *argv: str) -> tuple[int, list[str], str]:
    """Run the CLI in-process; returns (exit code, stdout lines, stderr)."""
    rc = tpu.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNETV2_LAUNCH_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch):
    """A `gcloud` on PATH that records its argv (one JSON list per line) and answers describe with $FAKE_STATE."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    script = bin_dir / "gcloud"
    script.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if 'describe' in sys.argv: print(os.environ.get('FAKE_STATE', 'READY'))\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return lambda: [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


def test_v4_32_spot_launch_dry_run_prints_exact_gcloud_lines(capsys, state_dir, monkeypatch):
    monkeypatch.setenv("PATH", "")  # a dry run needs no gcloud
    where = f"--name=effnet --zone={ZONE}"
    rc, create, _ = launch(capsys, *f"create {where} --accelerator-type=v4-32 --spot --dry-run".split())
    assert rc == 0
    assert create == [
        f"gcloud compute tpus tpu-vm create effnet --zone={ZONE} --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base --spot"
    ]
    rc, install, _ = launch(capsys, *f"install {where} --dry-run".split())
    assert rc == 0
    assert install == [
        f"gcloud compute tpus tpu-vm scp {state_dir}/effnet.tar.gz effnet:efficientnetv2_jax.tar.gz "
        f"--zone={ZONE} --worker=all",
        ssh_line("all", INSTALL),
    ]
    rc, train, _ = launch(
        capsys, *f"train {where} --accelerator-type=v4-32 --config=configs/imagenet1k.py:s --workdir={WORKDIR}".split(),
        *OVERRIDES, "--dry-run",
    )
    assert rc == 0
    assert train == [ssh_line("all", train_script(TRAIN_ARGS, replace=False))]
    assert not state_dir.exists()  # a dry run writes nothing


def test_queued_spot_create_waits_for_active_and_delete_forces(capsys, state_dir):
    flags = f"--name=q1 --zone={ZONE} --project=my-proj --dry-run".split()
    rc, lines, _ = launch(capsys, "create", *flags, "--accelerator-type=v5litepod-16", "--queued", "--spot")
    assert rc == 0
    assert lines == [
        f"gcloud compute tpus queued-resources create q1 --node-id=q1 --zone={ZONE} --project=my-proj "
        "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --spot",
        f"gcloud compute tpus queued-resources describe q1 --zone={ZONE} --project=my-proj "
        "'--format=value(state.state)'",
    ]
    rc, lines, _ = launch(capsys, "delete", *flags, "--queued")
    assert (rc, lines) == (0, [f"gcloud compute tpus queued-resources delete q1 --zone={ZONE} --project=my-proj "
                               "--force --quiet"])
    rc, lines, _ = launch(capsys, "delete", *flags)
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
        ["compute", "tpus", "tpu-vm", "create"], ["compute", "tpus", "tpu-vm", "scp"],
        ["compute", "tpus", "tpu-vm", "ssh"], ["compute", "tpus", "tpu-vm", "ssh"],
    ]
    assert fake_gcloud()[1] == ["compute", "tpus", "tpu-vm", "scp", str(tarball), "effnet:efficientnetv2_jax.tar.gz",
                                f"--zone={ZONE}", "--worker=all"]
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert {"setup.py", "launch/tpu.py", "configs/imagenet1k.py"} <= names
    assert not any(n.startswith((".venv/", ".git/")) or "__pycache__" in n for n in names)

    rc, lines, err = launch(capsys, "restart", "--name=effnet", "--dry-run")
    assert rc == 0 and "effnet: PREEMPTED" in err
    assert lines == [
        f"gcloud compute tpus tpu-vm describe effnet --zone={ZONE} '--format=value(state)'",
        f"gcloud compute tpus tpu-vm delete effnet --zone={ZONE} --quiet",
        f"gcloud compute tpus tpu-vm create effnet --zone={ZONE} --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base --spot",
        f"gcloud compute tpus tpu-vm scp {tarball} effnet:efficientnetv2_jax.tar.gz --zone={ZONE} --worker=all",
        ssh_line("all", INSTALL),
        ssh_line("all", train_script(TRAIN_ARGS, replace=True)),
    ]


@pytest.mark.parametrize("vm_state, recovery", [
    ("READY", []),
    ("STOPPED", [["compute", "tpus", "tpu-vm", "start", "effnet", f"--zone={ZONE}"]]),
    ("TERMINATED", [["compute", "tpus", "tpu-vm", "delete", "effnet", f"--zone={ZONE}", "--quiet"],
                    ["compute", "tpus", "tpu-vm", "create", "effnet", f"--zone={ZONE}", "--accelerator-type=v4-8",
                     "--version=tpu-ubuntu2204-base"]]),
])
def test_restart_recovers_according_to_the_vm_state(capsys, state_dir, fake_gcloud, monkeypatch, vm_state, recovery):
    launch(capsys, *f"create --name=effnet --zone={ZONE} --accelerator-type=v4-8".split())
    launch(capsys, "install", "--name=effnet")
    launch(capsys, "train", "--name=effnet", "--config=configs/imagenet1k.py:s", "--workdir=runs/local")
    before = len(fake_gcloud())
    monkeypatch.setenv("FAKE_STATE", vm_state)
    assert launch(capsys, "restart", "--name=effnet")[0] == 0
    calls = fake_gcloud()[before:]
    assert calls[0][3] == "describe"
    assert calls[1:-3] == recovery
    assert [c[3] for c in calls[-3:]] == ["scp", "ssh", "ssh"]
    assert calls[-1][-1] == "--command=" + train_script("--config=configs/imagenet1k.py:s --workdir=runs/local", True)


def test_logs_and_status_target_workers(capsys, state_dir):
    rc, lines, _ = launch(capsys, "logs", "--name=effnet", f"--zone={ZONE}", "--worker=3", "--lines=20", "--dry-run")
    assert (rc, lines) == (0, [ssh_line("3", 'tail -n 20 -F "$HOME/efficientnetv2_jax_logs/train.log"')])
    rc, lines, _ = launch(capsys, "status", "--name=effnet", f"--zone={ZONE}", "--dry-run")
    assert rc == 0
    assert lines[0] == f"gcloud compute tpus tpu-vm describe effnet --zone={ZONE} '--format=value(state)'"
    assert lines[1] == ssh_line("all", (
        f'if {ALIVE}; then echo "$(hostname): training (pid $p)"; else echo "$(hostname): not training"; fi; '
        'tail -n 3 "$HOME/efficientnetv2_jax_logs/train.log" 2>/dev/null || true'))


def test_single_host_slice_accepts_a_local_workdir(capsys, state_dir):
    rc, lines, _ = launch(capsys, "train", "--name=one", f"--zone={ZONE}", "--accelerator-type=v6e-8",
                          "--config=configs/imagenet1k.py:s", "--workdir=runs/x", "--dry-run")
    assert rc == 0
    assert lines == [ssh_line("all", train_script("--config=configs/imagenet1k.py:s --workdir=runs/x", False), "one")]


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
     "workdir 'runs/effnet' is not a gs:// path: v4-32 has 4 hosts, which must share one GCS workdir for "
     "checkpoints and metrics"),
    ([*TRAIN[:-1], "--config=configs/nope.py:s", f"--workdir={WORKDIR}"],
     f"config file 'configs/nope.py' not found in {tpu.REPO_ROOT} (e.g. configs/imagenet1k.py:s)"),
    ([*TRAIN, f"--workdir={WORKDIR}", "--config.lr.base", "0.1"],
     "unrecognized argument '--config.lr.base'; trainer overrides look like --config.FIELD=VALUE"),
    (["train", "--name=effnet", f"--zone={ZONE}", "--config=configs/imagenet1k.py:s", f"--workdir={WORKDIR}"],
     "accelerator type unknown for effnet: pass --accelerator-type (e.g. v4-32)"),
    (["install", "--name=effnet"], "zone unknown for effnet: pass --zone (nothing saved in {state})"),
    (["restart", "--name=effnet", f"--zone={ZONE}"],
     "nothing to restart for effnet in {state} (missing accelerator_type, runtime_version, config, workdir): "
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


def test_worker_scripts_run_detached_refuse_a_second_trainer_and_replace_it(tmp_path):
    """Execute the real train/status scripts with a fake $HOME and a fake venv python that waits for SIGTERM."""
    python = tmp_path / "efficientnetv2_jax_venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    (tmp_path / "efficientnetv2_jax").mkdir()
    python.write_text("#!/bin/bash\ntrap 'echo stopped; exit 0' TERM\necho \"args: $*\"\n"
                      "while true; do sleep 0.1; done\n")
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
    pid = int((tmp_path / "efficientnetv2_jax_logs" / "train.pid").read_text())
    os.kill(pid, 15)
    subprocess.run(["timeout", "10", "tail", f"--pid={pid}", "-f", "/dev/null"], check=True)
    log = log_path.read_text()
    assert log.count("start\n") == 2 and log.count("stopped") == 2
    assert "args: -m efficientnetv2_jax.main --workdir=gs://b/w --config.name=a b\n" in log
    assert "args: -m efficientnetv2_jax.main --second\n" in log
    assert "not training" in worker(remote.status_script()).stdout


def test_install_script_unpacks_the_checkout_into_a_venv(tmp_path):
    """Run the real install script with a fake `uv` (recording its calls) instead of the network."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "setup.py").write_text("# setup\n")
    with tarfile.open(tmp_path / "efficientnetv2_jax.tar.gz", "w:gz") as tar:
        tar.add(source / "setup.py", arcname="setup.py")
    uv = tmp_path / ".local" / "bin" / "uv"
    uv.parent.mkdir(parents=True)
    uv.write_text('#!/bin/bash\necho "uv $* in $PWD" >> "$HOME/uv.log"\n'
                  'if [ "$1" = venv ]; then mkdir -p "$4/bin"; touch "$4/bin/python"; chmod +x "$4/bin/python"; fi\n')
    uv.chmod(0o755)
    env = {**os.environ, "HOME": str(tmp_path)}
    for _ in range(2):  # the second install reuses the venv
        done = subprocess.run(["bash", "-c", remote.install_script()], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "efficientnetv2_jax" / "setup.py").read_text() == "# setup\n"
    venv, checkout = tmp_path / "efficientnetv2_jax_venv", tmp_path / "efficientnetv2_jax"
    assert (tmp_path / "uv.log").read_text().splitlines() == [
        f"uv venv --python 3.11 {venv} in {tmp_path}",
        f"uv pip install --python {venv}/bin/python -e .[tpu] in {checkout}",
        f"uv pip install --python {venv}/bin/python -e .[tpu] in {checkout}",
    ]


def test_every_subcommand_has_help(capsys):
    for command in ("create", "install", "train", "logs", "status", "restart", "delete"):
        with pytest.raises(SystemExit) as exit_info:
            tpu.main([command, "--help"])
        assert exit_info.value.code == 0
        assert "--dry-run" in capsys.readouterr().out
    assert "python -m launch.tpu create" in pathlib.Path(tpu.__file__).read_text()
