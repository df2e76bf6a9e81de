"""Two compile-time overheads of a tiny trainer run on 8 CPU devices, both cut for the test suite.

1. Orbax's first save of a replicated train state: the slice programs it compiles with Orbax's default jax.Array
   handler (one per array and replica) vs with `efficientnetv2_jax.checkpoint`'s (replica-parallel copies only
   from `MIN_REPLICA_SLICE_BYTES` per slice).
2. The run's programs (init, one train step per stage, eval) compiled at XLA's default LLVM optimisation level vs
   at -O0, which `tests/processes.TEST_XLA_FLAGS` sets for the suite.

The run is test_resume's (its AUG_RUN flags: configs/digits.py:aug, width and depth 0.25, batch 32, two stages of
16 and 24 px), built as the trainer builds it. Each measurement runs in a fresh process, as XLA_FLAGS must be set
before JAX starts.

  python benchmarks/compile_overheads.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from processes import TEST_XLA_FLAGS  # noqa: E402  (tests/: the suite's compile flags are what is measured)

CHILDREN = {  # name: (extra XLA flags, what the child measures)
    "orbax_default": ("", "save"), "orbax_ours": ("", "save"),
    "compile_default": ("", "compile"), "compile_O0": (TEST_XLA_FLAGS, "compile"),
}


def tiny_program():
    """test_resume's program on this process's devices, and its stages, from the config as train.py reads it."""
    from test_resume import AUG_RUN

    from efficientnetv2_jax import data as data_lib
    from efficientnetv2_jax.main import load_config
    from efficientnetv2_jax.train import progressive
    from efficientnetv2_jax.train.program import build_program

    config = load_config(AUG_RUN[0].removeprefix("--config="), AUG_RUN[1:])
    info = data_lib.get_dataset_info(config.dataset.name, config.dataset.data_dir or None)
    steps_per_epoch, total_steps = progressive.run_length(config, info.split_sizes[config.dataset.train_split])
    program = build_program(config, num_classes=info.num_classes, steps_per_epoch=steps_per_epoch,
                            multi_label=info.multi_label)
    return program, progressive.make_stages(config, total_steps)


def measure_compile() -> dict:
    import jax

    program, stages = tiny_program()
    started = time.perf_counter()
    jax.jit(program._init_fn, out_shardings=program.state_shardings).lower(  # pylint: disable=protected-access
        jax.random.PRNGKey(0)).compile()
    seconds = {"init": time.perf_counter() - started}
    for stage in stages:
        seconds[f"train_{stage.image_size}px"] = program.compile_train_step(stage)[1]
    seconds["eval"] = program.compile_eval_step(program.config.eval_image_size)[1]
    return seconds


def measure_save(orbax_default: bool) -> dict:
    import jax
    import orbax.checkpoint as ocp
    from orbax.checkpoint._src.metadata import array_metadata_store
    from orbax.checkpoint._src.serialization.type_handler_registry import GLOBAL_TYPE_HANDLER_REGISTRY

    from efficientnetv2_jax import checkpoint

    if orbax_default:  # What Orbax registers by itself.
        GLOBAL_TYPE_HANDLER_REGISTRY.add(jax.Array, ocp.type_handlers.ArrayHandler(
            array_metadata_store=array_metadata_store.Store()), override=True, ignore_warnings=True)
    program, _ = tiny_program()
    state = program.init_state(jax.random.PRNGKey(0))
    compiles = []

    class Recorder(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("Finished XLA compilation of jit(slice)"):
                compiles.append(float(message.split(" in ")[1].split()[0]))

    logging.getLogger("jax").addHandler(Recorder())
    logging.getLogger("jax").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as workdir, jax.log_compiles():
        with checkpoint.Checkpointer(workdir, model_name=program.model.model_name,
                                   num_classes=program.num_classes) as saver:
            started = time.perf_counter()
            saver.save(1, state, force=True)
            saver.wait_until_finished()
            seconds = time.perf_counter() - started
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    return {"save_seconds": seconds, "slice_programs": len(compiles), "slice_compile_seconds": sum(compiles),
            "state_mb": state_bytes / 1e6}


def run_child(name: str) -> dict:
    flags, _ = CHILDREN[name]
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {flags}".strip())
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name], cwd=ROOT, env=env,
                         capture_output=True, text=True, check=True, timeout=900).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, ROOT)
        kind = CHILDREN[args.child][1]
        result = measure_compile() if kind == "compile" else measure_save(args.child == "orbax_default")
        print(json.dumps(result))
        return
    results = {name: run_child(name) for name in CHILDREN}
    default, ours = results["orbax_default"], results["orbax_ours"]
    print(f"First save of the {ours['state_mb']:.1f} MB replicated train state on 8 CPU devices:")
    for label, r in (("Orbax's default handler", default), ("efficientnetv2_jax.checkpoint", ours)):
        print(f"  {label:30s} {r['slice_programs']:4d} slice programs, {r['slice_compile_seconds']:5.1f} s compiling "
              f"them, save {r['save_seconds']:5.1f} s")
    base, fast = results["compile_default"], results["compile_O0"]
    print("Compile seconds of the run's programs (default LLVM optimisation vs -O0, the suite's setting):")
    for key in base:
        print(f"  {key:14s} {base[key]:6.1f} {fast[key]:6.1f}")
    total_base, total_fast = sum(base.values()), sum(fast.values())
    print(f"  {'total':14s} {total_base:6.1f} {total_fast:6.1f}  (-O0 takes {total_fast / total_base:.0%} of the time)")


if __name__ == "__main__":
    main()
