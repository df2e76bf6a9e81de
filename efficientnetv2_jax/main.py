"""Trains and evaluates EfficientNetV2: the command-line entry point.

    python -m efficientnetv2_jax.main --config=configs/digits.py --workdir=runs/digits [--config.field=value ...]

Every config field can be overridden with `--config.<field>=<value>`; a field that does not exist is an error.
Multi-host: on Cloud TPU VMs every worker runs the same command and JAX finds its peers by itself; elsewhere pass
`--coordinator_address=host:port --num_processes=N --process_id=i`. The training logic lives in
`efficientnetv2_jax.train.train` so that it stays importable from notebooks and tests.
"""

from __future__ import annotations

import glob
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from efficientnetv2_jax import allocator

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/imagenet1k.py:s.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and summary.json go (local path or gs://).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs off Cloud TPU.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.mark_flags_as_required(["config", "workdir"])


def _on_cloud_tpu_vm() -> bool:
    """TPU VMs expose their chips as /dev/accel* (v2-v4) or /dev/vfio/* (v5+); JAX then finds its peers itself."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
    """Joins the multi-controller runtime when asked to (flags) or when running on a Cloud TPU VM."""
    import jax

    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("--coordinator_address, --num_processes and --process_id must be given together.")
    if all(given):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes need gloo collectives.
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif _on_cloud_tpu_vm():
        jax.distributed.initialize()


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with bad input (e.g. a misspelt --config.field) reported as one line, exit code 2."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as error:
        text = str(error.args[0]) if isinstance(error, (AttributeError, KeyError)) and error.args else str(error)
        message = " ".join(text.replace("\\n", " ").replace("\\'", "").split()).strip("'")
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax and clu log every save/write at INFO.
    logging.getLogger("efficientnetv2_jax").setLevel(logging.INFO)
    try:
        initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        from efficientnetv2_jax.train import train

        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ValueError, FileNotFoundError, FloatingPointError) as error:  # One clear line, no traceback.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    allocator.reexec_with_fast_allocator()
    app.run(main, flags_parser=parse_flags)
