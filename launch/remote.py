"""The shell one-liners every TPU worker runs over `gcloud ... ssh --command`: install, start, inspect, tail.

Each is a single line (commands joined by `;`) so that --dry-run prints one line per gcloud call.
Layout on a worker (paths under $HOME): the checkout in efficientnetv2_jax/ (with .shipped_files, the list of
files the last install unpacked: a reinstall removes those and nothing else, so no folder that could hold runs is
ever deleted), its virtual environment in efficientnetv2_jax_venv/ (Python 3.11 via uv: the TPU images ship 3.10),
and efficientnetv2_jax_logs/train.log plus train.pid for the detached trainer.
"""

from __future__ import annotations

import shlex

TARBALL = "efficientnetv2_jax.tar.gz"  # scp destination, relative to $HOME
CHECKOUT = "$HOME/efficientnetv2_jax"
VENV = "$HOME/efficientnetv2_jax_venv"
MANIFEST = ".shipped_files"  # in the checkout: what the last install unpacked
LOGS = "$HOME/efficientnetv2_jax_logs"
LOG = f"{LOGS}/train.log"
PID = f"{LOGS}/train.pid"
PYTHON_VERSION = "3.11"

_ALIVE = f'p=$(cat "{PID}" 2>/dev/null || true); [ -n "$p" ] && kill -0 "$p" 2>/dev/null'
# SIGTERM lets the trainer write its preemption checkpoint; give it 5 minutes before SIGKILL.
_STOP = f'if {_ALIVE}; then kill "$p"; timeout 300 tail --pid="$p" -f /dev/null || kill -9 "$p"; fi'


def install_script() -> str:
    """Stop any trainer, replace the previously shipped files by the new checkout, `pip install -e .[tpu]` it."""
    return "; ".join([
        "set -e",
        _STOP,
        'export PATH="$HOME/.local/bin:$PATH"',
        "command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh",
        f'mkdir -p "{CHECKOUT}"',
        f'cd "{CHECKOUT}"',
        f"if [ -f {MANIFEST} ]; then xargs -r -d '\\n' rm -f -- < {MANIFEST}; fi",
        f'tar -xzf "$HOME/{TARBALL}"',
        f'tar -tzf "$HOME/{TARBALL}" > {MANIFEST}',
        f'[ -x "{VENV}/bin/python" ] || uv venv --python {PYTHON_VERSION} "{VENV}"',
        f"uv pip install --python \"{VENV}/bin/python\" -e '.[tpu]'",
        'echo "$(hostname): installed"',
    ])


def stop_script() -> str:
    """SIGTERM the trainer (it writes its preemption checkpoint), SIGKILL after 5 minutes; the VM keeps running."""
    return "; ".join([_STOP, 'echo "$(hostname): not training"'])


def bucket_probe_script(bucket: str) -> str:
    """Write, read back and delete one object from this worker, as the VM's service account: proves access."""
    probe = shlex.quote(f"{bucket.rstrip('/')}/.efficientnetv2_jax_probe/") + '"$(hostname)"'
    return "; ".join([
        "set -e",
        f"echo ok | gcloud storage cp - {probe}",
        f'[ "$(gcloud storage cat {probe})" = ok ]',
        f"gcloud storage rm {probe} 2>/dev/null",
        f'echo "$(hostname): can write, read and delete in {bucket}"',
    ])


def train_script(trainer_args: list[str], replace: bool) -> str:
    """Start the trainer detached (nohup, log appended per worker), refusing if one already runs unless replace."""
    trainer = f'"{VENV}/bin/python" ' + shlex.join(["-m", "efficientnetv2_jax.main", *trainer_args])
    steps = ["set -e", f'mkdir -p "{LOGS}"']
    if replace:
        steps.append(_STOP)
    steps += [
        f'if {_ALIVE}; then echo "$(hostname): a trainer is already running (pid $p); use --replace" >&2; exit 1; fi',
        "rm -f /tmp/libtpu_lockfile",  # a crashed run leaves it behind and the next one reports "TPU in use"
        f'cd "{CHECKOUT}"',
        f'echo "=== $(date -u +%FT%TZ) start" >> "{LOG}"',
        f'nohup {trainer} >> "{LOG}" 2>&1 < /dev/null & echo $! > "{PID}"',
        f'echo "$(hostname): trainer started (pid $(cat "{PID}")), log {LOG}"',
    ]
    return "; ".join(steps)


def status_script() -> str:
    """Say per worker whether the trainer runs, then the last lines of its log."""
    return "; ".join([
        f'if {_ALIVE}; then echo "$(hostname): training (pid $p)"; else echo "$(hostname): not training"; fi',
        f'tail -n 3 "{LOG}" 2>/dev/null || true',
    ])


def logs_script(lines: int) -> str:
    """Follow one worker's log (Ctrl-C stops following; the trainer keeps running)."""
    return f'tail -n {lines} -F "{LOG}"'
