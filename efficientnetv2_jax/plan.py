"""Plan a TPU pod run from any machine: compile the trainer's own steps for a Cloud TPU slice that is not here.

    python -m efficientnetv2_jax.plan --config=configs/imagenet1k.py:s --accelerator-type=v3-32 \
        [--config.field=value ...] [--stages=4] [--json plan.json]

The TPU compiler ships in the libtpu wheel (`pip install 'efficientnetv2_jax[tpu]'`); with it, JAX compiles for
an abstract slice on a CPU. The planner builds the program exactly as the trainer would on that slice (the one
builder, `train.program.build_program`: mesh, precision, BN groups, state shardings, every progressive stage's
batch shapes and mixing inputs) and compiles the train step of each stage and the eval step. It reports, per
device: HBM (state = params, optimizer slots, EMA, BN statistics; batch; temporaries) against the chip's
capacity, FLOPs, the bytes each kind of collective moves per step (from the optimised HLO), and the compiler's
cost-model step time (`cost_analysis()['optimal_seconds']`). Times are ESTIMATES of the compiler, not
measurements. A stage that does not fit is reported (with what would help), exit code 0; bad input exits 2.

`--stages=4` (1-based, comma-separated) compiles only those stages: an S stage takes 2-4 minutes and ~12 GB of
memory here; totals then cover the planned stages only, and say so. Datasets that are not on this machine:
ImageNet-1k and -21k use their official split sizes; others are read from their TFDS metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import time
import numpy as np

from efficientnetv2_jax import cli

GIB = 2**30
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# (classes, train split, eval split) of datasets too big to keep here, as the official splits define them.
OFFICIAL_SPLITS = {"imagenet2012": (1000, 1_256_144, 50_000), "imagenet21k": (21843, 12_720_275, 100_357)}
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# How the TPU compiler refuses a program that needs more HBM than the chip has (both forms seen with libtpu 0.0.42).
_OOM_USED = re.compile(r"Used ([\d.]+)([KMGT]) of [\d.]+[KMGT] hbm")
_OOM_TEMPORARIES = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclasses.dataclass(frozen=True)
class DatasetSizes:
    num_classes: int
    multi_label: bool
    train_examples: int
    eval_examples: int


def shape_bytes(shape_text: str) -> int:
    """Bytes of an HLO shape such as `f32[8,128]{1,0:T(8,128)}` or a tuple of them."""
    without_layouts = re.sub(r"\{[^}]*\}", "", shape_text)
    total = 0
    for dtype, dims in re.findall(r"([a-z]+\d*)\[([\d,]*)\]", without_layouts):
        total += _DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
    return total


def collective_sizes(hlo_text: str) -> dict[str, list[int]]:
    """{op: [bytes of each instance]} of the collectives in optimised HLO text (async pairs counted once, by the
    result of their `-done`)."""
    found: dict[str, list[int]] = {}
    pattern = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(-start|-done)?\(")
    for line in hlo_text.splitlines():
        match = pattern.search(line)
        if match and match.group(3) != "-start":
            found.setdefault(match.group(2), []).append(shape_bytes(match.group(1)))
    return found


def dataset_sizes(config) -> DatasetSizes:
    """Classes and split sizes of the config's dataset, without reading the data when it is a known one."""
    from efficientnetv2_jax.data import registry  # pylint: disable=import-outside-toplevel

    spec = registry.get_dataset_spec(config.dataset.name)
    if config.dataset.name in OFFICIAL_SPLITS:
        classes, train, evaluation = OFFICIAL_SPLITS[config.dataset.name]
        return DatasetSizes(classes, spec.multi_label, train, evaluation)
    from efficientnetv2_jax import data as data_lib  # pylint: disable=import-outside-toplevel

    info = data_lib.get_dataset_info(config.dataset.name, config.dataset.data_dir or None)
    return DatasetSizes(info.num_classes, info.multi_label, info.split_sizes[config.dataset.train_split],
                        info.split_sizes[config.dataset.eval_split])


def bytes_per_device(tree) -> int:
    """Bytes of one device's shards of a pytree of ShapeDtypeStructs with shardings (no layout padding)."""
    import jax  # pylint: disable=import-outside-toplevel

    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _analyse(compiled, *, batch_bytes: int, capacity_gib: float, per_device_batch: int, devices_per_chip: int,
             compile_seconds: float) -> dict:
    """The per-device figures of one compiled step: HBM in use = arguments + outputs - aliased + temporaries;
    the arguments are the batch and the state the step reads (for eval, only the weights it evaluates)."""
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    arguments, outputs = memory.argument_size_in_bytes, memory.output_size_in_bytes
    total = arguments + outputs - memory.alias_size_in_bytes + memory.temp_size_in_bytes
    collectives = collective_sizes(compiled.as_text())
    compiler_seconds = float(cost.get("optimal_seconds", float("nan")))
    # libtpu 0.0.42's cost model answers a negative time for the train steps it costs on v4 (megacore): no estimate.
    step_seconds = compiler_seconds if compiler_seconds > 0 else None
    return {
        "per_device_batch": per_device_batch,
        "hbm_gib": {"state": (arguments - batch_bytes) / GIB, "temporaries": (total - arguments) / GIB,
                    "batch": batch_bytes / GIB, "total": total / GIB},
        "fits": total <= capacity_gib * GIB,
        "flops_per_device": float(cost.get("flops", 0.0)),
        "collective_bytes": {op: int(sum(sizes)) for op, sizes in sorted(collectives.items())},
        "largest_collective_bytes": max((max(sizes) for sizes in collectives.values()), default=0),
        "estimated_step_seconds": step_seconds,
        "estimated_images_per_sec_per_chip": None if step_seconds is None
        else per_device_batch * devices_per_chip / step_seconds,
        "compiler_optimal_seconds": compiler_seconds,
        "compile_seconds": compile_seconds,
    }


def _not_compiled(error: Exception, *, state_bytes: int, batch_bytes: int, per_device_batch: int) -> dict:
    """A step the TPU compiler refused for lack of HBM, with the figures its message gives (`fits` False): the
    HBM it would use, or its temporaries, to which the state and the batch are then added (a lower bound)."""
    used, temporaries = _OOM_USED.search(str(error)), _OOM_TEMPORARIES.search(str(error))
    if not used and not temporaries:
        raise error
    if used:
        total, temps = float(used.group(1)) * _UNITS[used.group(2)], None
    else:
        temps = float(temporaries.group(1)) * _UNITS[temporaries.group(2)]
        total = temps + state_bytes + batch_bytes
    return {"per_device_batch": per_device_batch,
            "hbm_gib": {"state": state_bytes / GIB, "temporaries": None if temps is None else temps / GIB,
                        "batch": batch_bytes / GIB, "total": total / GIB},
            "fits": False, "flops_per_device": None, "collective_bytes": {}, "largest_collective_bytes": None,
            "estimated_step_seconds": None, "estimated_images_per_sec_per_chip": None, "compile_seconds": None,
            "compiler_message": cli.one_line(error)}


def plan(config, tpu_slice, stage_numbers: list[int] | None = None, quiet: bool = True) -> dict:
    """Compiles `config`'s train steps (each selected 1-based stage) and eval step for `tpu_slice`."""
    from efficientnetv2_jax.models import get_variant  # pylint: disable=import-outside-toplevel
    from efficientnetv2_jax.train import progressive, program  # pylint: disable=import-outside-toplevel

    sizes = dataset_sizes(config)
    steps_per_epoch, total_steps = progressive.run_length(config, sizes.train_examples)
    stages = progressive.make_stages(config, total_steps)
    chosen = stage_numbers or list(range(1, len(stages) + 1))
    if any(not 1 <= n <= len(stages) for n in chosen):
        raise cli.UsageError(f"--stages {','.join(map(str, chosen))}: the config has stages 1-{len(stages)}")
    with _quiet_stderr(quiet):
        devices = tpu_slice.topology_devices()
    built = program.build_program(config, num_classes=sizes.num_classes, steps_per_epoch=steps_per_epoch,
                                  multi_label=sizes.multi_label, devices=devices)
    state_bytes = bytes_per_device(built.abstract_state)

    def compile_and_analyse(compile_step, batch_shapes: dict, global_batch: int) -> dict:
        per_device, batch_bytes = global_batch // len(devices), bytes_per_device(batch_shapes)
        try:
            with _quiet_stderr(quiet):
                compiled, seconds = compile_step()
        except Exception as error:  # pylint: disable=broad-except  # Only an HBM refusal is kept (else re-raised).
            return _not_compiled(error, state_bytes=state_bytes, batch_bytes=batch_bytes, per_device_batch=per_device)
        return _analyse(compiled, per_device_batch=per_device, compile_seconds=seconds, batch_bytes=batch_bytes,
                        capacity_gib=tpu_slice.hbm_gib_per_device, devices_per_chip=tpu_slice.devices_per_chip)

    entries = []
    for number in chosen:
        stage = stages[number - 1]
        entry = compile_and_analyse(lambda: built.compile_train_step(stage),  # noqa: B023  # Called at once.
                                    built.train_batch_shapes(stage), config.batch_size)
        steps = stage.end_step - stage.start_step
        step_seconds = entry["estimated_step_seconds"]
        entries.append({"stage": number, "image_size": stage.image_size, "steps": steps, **entry,
                        "estimated_hours": None if step_seconds is None else steps * step_seconds / 3600})
    eval_size = config.eval_image_size or get_variant(config.model.name).eval_size
    evaluation = compile_and_analyse(lambda: built.compile_eval_step(eval_size), built.eval_batch_shapes(eval_size),
                                     config.eval_batch_size)
    eval_steps = math.ceil(sizes.eval_examples / config.eval_batch_size)
    evaluation = {"image_size": eval_size, **evaluation,
                  "eval_pass_seconds": None if evaluation["estimated_step_seconds"] is None
                  else eval_steps * evaluation["estimated_step_seconds"]}
    known = [e["estimated_hours"] for e in entries if e["estimated_hours"] is not None]
    hours = sum(known) if len(known) == len(entries) else None
    model = built.model
    return {
        "accelerator_type": tpu_slice.name, "topology": tpu_slice.topology_name, "devices": len(devices),
        "chips": tpu_slice.chips, "hbm_capacity_gib": tpu_slice.hbm_gib_per_device,
        "model": config.model.name, "dtype": np.dtype(model.dtype).name,
        "bn_group_examples": model.bn_group_size or config.batch_size,
        "shard_state": config.shard_state,
        "batch_size": config.batch_size, "total_steps": total_steps, "epochs": total_steps / steps_per_epoch,
        "stages_planned": chosen, "stages_total": len(stages),
        "estimated_hours": hours, "estimated_chip_hours": None if hours is None else hours * tpu_slice.chips,
        "compile_seconds": sum(e["compile_seconds"] or 0.0 for e in [*entries, evaluation]),
        "stages": entries, "eval": evaluation,
    }


class _quiet_stderr:  # pylint: disable=invalid-name
    """libtpu logs "could not determine TPU accelerator type" to file descriptor 2 when no TPU is attached."""

    def __init__(self, quiet: bool):
        self._quiet = quiet
        self._saved = None

    def __enter__(self):
        if self._quiet:
            sys.stderr.flush()
            self._saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)

    def __exit__(self, *exc_info):
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._saved = None


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"


def format_table(result: dict) -> str:
    """The per-stage table, the eval row, the totals and a verdict for stages that do not fit."""
    kinds = sorted({op for e in [*result["stages"], result["eval"]] for op in e["collective_bytes"]})
    header = (["step", "px", "batch/dev", "state GiB", "temps GiB", "batch GiB",
               f"total/{result['hbm_capacity_gib']:g} GiB", "fits", "GFLOP/dev"]
              + [f"{op} MB" for op in kinds] + ["largest MB", "est. step ms", "est. img/s/chip", "steps", "est. h"])
    rows = []
    for e in [*result["stages"], result["eval"]]:
        step_ms = None if e["estimated_step_seconds"] is None else e["estimated_step_seconds"] * 1e3
        rows.append([f"stage {e['stage']}" if "stage" in e else "eval", str(e["image_size"]),
                     str(e["per_device_batch"]), _gib(e["hbm_gib"]["state"]), _gib(e["hbm_gib"]["temporaries"]),
                     _gib(e["hbm_gib"]["batch"]), _gib(e["hbm_gib"]["total"]), "yes" if e["fits"] else "NO",
                     "-" if e["flops_per_device"] is None else f"{e['flops_per_device'] / 1e9:.0f}"]
                    + [_mb(e["collective_bytes"].get(op)) for op in kinds]
                    + [_mb(e["largest_collective_bytes"]), "-" if step_ms is None else f"{step_ms:.1f}",
                       "-" if e["estimated_images_per_sec_per_chip"] is None
                       else f"{e['estimated_images_per_sec_per_chip']:.0f}",
                       str(e.get("steps", "-")), "-" if e.get("estimated_hours") is None
                       else f"{e['estimated_hours']:.2f}"])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    r = result
    out = [f"{r['model']} on {r['accelerator_type']} ({r['topology']}: {r['devices']} devices, {r['chips']} chips, "
           f"{r['hbm_capacity_gib']:g} GiB HBM per device); compute {r['dtype']}, BN groups of "
           f"{r['bn_group_examples']} examples, state {r['shard_state']}, global batch {r['batch_size']}",
           line(header), *(line(row) for row in rows)]
    partial = (f" (stages {','.join(map(str, r['stages_planned']))} of {r['stages_total']} only)"
               if len(r["stages_planned"]) < r["stages_total"] else "")
    if r["estimated_hours"] is not None:
        out.append(f"Total, compiler estimate{partial}: {r['estimated_hours']:.2f} h for {r['epochs']:.0f} epochs "
                   f"({r['total_steps']:,} steps), {r['estimated_chip_hours']:.1f} chip-hours; eval pass "
                   f"{_seconds(r['eval']['eval_pass_seconds'])}; compiled in {r['compile_seconds']:.0f} s.")
    out.extend(_no_estimate(r))
    out.extend(_verdict(r))
    return "\n".join(out)


def _no_estimate(result: dict) -> list[str]:
    """A line naming the compiled steps for which the compiler's cost model gave no usable time."""
    missing = [e for e in [*result["stages"], result["eval"]] if e["fits"] and e["estimated_step_seconds"] is None]
    if not missing:
        return []
    names = ", ".join(f"stage {e['stage']}" if "stage" in e else "eval" for e in missing)
    answers = ", ".join(f"{e['compiler_optimal_seconds']:g}" for e in missing)
    return [f"No time estimate for {names}: the TPU compiler's cost model answered {answers} s (not a duration), "
            "so no hours are given."]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


def _verdict(result: dict) -> list[str]:
    """One line per step that does not fit: by how much, and what would help."""
    lines = []
    for e in [*result["stages"], result["eval"]]:
        if e["fits"]:
            continue
        name = f"Stage {e['stage']}" if "stage" in e else "The eval step"
        need = e["hbm_gib"]["total"]
        hints = []
        if result["dtype"] != "bfloat16":
            hints.append("bf16 compute (--config.model.dtype=bfloat16)")
        hints.append("remat (--config.model.remat=true)")
        if result["shard_state"] != "data":
            hints.append(f"state sharding (--config.shard_state=data; state is {e['hbm_gib']['state']:.2f} GiB)")
        hints.append(f"a smaller per-device batch (now {e['per_device_batch']}: a smaller --config.batch_size or "
                     "a bigger slice)")
        lines.append(f"{name} ({e['image_size']} px) does NOT fit: needs {need:.2f} GiB of "
                     f"{result['hbm_capacity_gib']:g} GiB per device ({need - result['hbm_capacity_gib']:.2f} GiB "
                     f"over). What would help: {'; '.join(hints)}.")
    return lines


def libtpu_available() -> bool:
    """Whether the TPU compiler (the libtpu wheel) is installed."""
    return importlib.util.find_spec("libtpu") is not None


def main(argv: list[str]) -> int:
    """The command; overrides are `--config.FIELD=VALUE` as for `efficientnetv2_jax.main`."""
    parser = argparse.ArgumentParser(prog="python -m efficientnetv2_jax.plan", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="config file with its argument, e.g. configs/imagenet1k.py:s")
    parser.add_argument("--accelerator-type", required=True, help="Cloud TPU type, e.g. v3-32, v4-32, v5litepod-64")
    parser.add_argument("--stages", help="1-based stage numbers to compile, comma-separated (default: all)")
    parser.add_argument("--json", help="also write the plan as JSON to this path")
    cli.add_verbose_flag(parser)
    args, overrides = parser.parse_known_args(argv)
    cli.import_quietly("tensorflow", args.verbose)  # The dataset registry imports it; its start-up lines go.
    from launch.accelerators import LaunchError  # pylint: disable=import-outside-toplevel
    from efficientnetv2_jax.tpu_slices import tpu_slice  # pylint: disable=import-outside-toplevel

    try:
        target = tpu_slice(args.accelerator_type)
    except LaunchError as error:
        raise cli.UsageError(str(error)) from error
    try:
        stage_numbers = [int(n) for n in args.stages.split(",")] if args.stages else None
    except ValueError as error:
        raise cli.UsageError(f"--stages {args.stages!r}: expected 1-based numbers such as 4 or 1,4") from error
    if not libtpu_available():
        raise cli.UsageError("the TPU compiler is not installed: pip install 'efficientnetv2_jax[tpu]' "
                             "(or pip install 'jax[tpu]==0.10.2')")
    from efficientnetv2_jax.main import load_config  # pylint: disable=import-outside-toplevel

    config = load_config(args.config, overrides)
    started = time.perf_counter()
    result = plan(config, target, stage_numbers, quiet=not args.verbose)
    print(format_table(result))
    print(f"(planned in {time.perf_counter() - started:.0f} s; step times and hours are the TPU compiler's "
          "cost-model estimates, not measurements)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    os.environ["JAX_PLATFORMS"] = "cpu"  # Compiles for the slice; this machine's own devices are not used.
    cli.run_main(main, usage_errors=(cli.UsageError, ValueError, FileNotFoundError))
