"""The one place the launcher calls `gcloud`: run it, or with --dry-run print the exact command line instead."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from typing import TextIO

from launch.accelerators import LaunchError


class Gcloud:
    """Runs (or, dry, prints one shell-quoted line per) `gcloud` command; queries answer a stated assumption."""

    def __init__(self, dry_run: bool, out: TextIO | None = None, required: bool = True):
        if required and not dry_run and shutil.which("gcloud") is None:
            raise LaunchError(
                "gcloud not found on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) "
                "or pass --dry-run to only print the commands"
            )
        self.dry_run = dry_run
        self.out = out or sys.stdout

    def __call__(self, args: list[str], *, query: bool = False, dry_run_answer: str = "") -> str:
        """Run `gcloud ARGS`; streamed to the terminal, or with query=True captured and returned ("" if not found)."""
        command = ["gcloud", *args]
        if self.dry_run:
            print(shlex.join(command), file=self.out, flush=True)
            return dry_run_answer
        if not query:
            subprocess.run(command, check=True)
            return ""
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
        if "NOT_FOUND" in done.stderr or "not found: 404" in done.stderr:  # compute / storage wording
            return ""
        raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
