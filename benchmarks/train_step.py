"""Images/s of one jitted EfficientNetV2 training step, ours vs timm's `tf_efficientnetv2_<v>` in the same run.

    python benchmarks/train_step.py --model s --image-size 128 --batch 32 [--steps 6] [--conv-impl auto]
        [--allocators system,mimalloc] [--cpu-schedulers memory_optimized,xla_default]

Our step: forward, backward, TF1 RMSProp (decay .9, momentum .9, eps 1e-3) with L2 on kernels, BN statistics,
label smoothing 0.1, donated state; timed after warm-up as the median of several steps, plus compile time.
timm's step (when torch and timm are importable): the same shapes in train mode, torch RMSprop with
the same hyper-parameters and label smoothing. Each (runner, allocator) pair runs in a fresh process, under
glibc's malloc ('system') and under mimalloc (what our CLIs use on CPU, efficientnetv2_jax/allocator.py), so the
table shows what the allocator buys each side; `--cpu-schedulers` adds rows of our step compiled with XLA:CPU's
own scheduler (efficientnetv2_jax/models/compile_options.py). Prints every row and the ratios ours/timm.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from efficientnetv2_jax import allocator as allocator_lib
from efficientnetv2_jax.models import CPU_SCHEDULERS, compiler_options, create_model, get_variant, normalize_images


def time_ours(model_name: str, image_size: int, batch: int, steps: int, conv_impl: str, dtype: str,
              cpu_scheduler: str) -> dict:
    model = create_model(model_name, num_classes=1000, conv_impl=conv_impl, dtype=dtype)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8))
    labels = jax.nn.one_hot(jnp.asarray(rng.integers(0, 1000, batch)), 1000)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)), train=False)
    tx = optax.chain(
        optax.add_decayed_weights(1e-5, mask=lambda p: jax.tree_util.tree_map_with_path(
            lambda path, _: path[-1].key == "kernel", p)),
        optax.rmsprop(0.016, decay=0.9, eps=1e-3, initial_scale=1.0, eps_in_sqrt=True, momentum=0.9),
    )
    state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

    def step(state, images, labels, key):
        params, batch_stats, opt_state = state

        def loss_fn(params):
            x = normalize_images(images, model_name)
            logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                          mutable=["batch_stats"], rngs={"dropout": key})
            smoothed = optax.smooth_labels(labels, 0.1)
            return optax.softmax_cross_entropy(logits, smoothed).mean(), updates["batch_stats"]

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_stats, opt_state), loss

    jitted = jax.jit(step, donate_argnums=0, compiler_options=compiler_options(cpu_scheduler))
    t0 = time.perf_counter()
    compiled = jitted.lower(state, images, labels, jax.random.PRNGKey(1)).compile()
    compile_s = time.perf_counter() - t0
    times, cpu_times = [], []
    for i in range(steps + 2):
        t0, c0 = time.perf_counter(), time.process_time()
        state, loss = compiled(state, images, labels, jax.random.PRNGKey(i))
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    step_s = statistics.median(times[2:])
    return {"step_s": step_s, "img_s": batch / step_s, "compile_s": compile_s,
            "cpu_s": statistics.median(cpu_times[2:])}


def time_timm(model_name: str, image_size: int, batch: int, steps: int) -> dict | None:
    try:
        import timm
        import torch
    except ImportError:
        return None
    short = get_variant(model_name).name.split("-")[1]
    model = timm.create_model(f"tf_efficientnetv2_{short}", num_classes=1000, drop_rate=0.2, drop_path_rate=0.2)
    model.train()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.016, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=1e-5)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    images = torch.randn(batch, 3, image_size, image_size)
    labels = torch.randint(0, 1000, (batch,))
    times = []
    for _ in range(steps + 2):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times[2:])
    return {"step_s": step_s, "img_s": batch / step_s, "threads": torch.get_num_threads()}


def _run_worker(args: argparse.Namespace, runner: str, allocator: str, cpu_scheduler: str) -> dict | None:
    """Times `runner` ('ours' or 'timm') in a fresh process under `allocator` ('system' or 'mimalloc')."""
    command = [sys.executable, __file__, "--worker", runner, "--model", args.model, "--image-size",
               str(args.image_size), "--batch", str(args.batch), "--steps", str(args.steps),
               "--conv-impl", args.conv_impl, "--dtype", args.dtype, "--cpu-schedulers", cpu_scheduler]
    env = dict(os.environ, **{allocator_lib.ENV_CHOICE: allocator})
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{runner} under {allocator} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def _worker(args: argparse.Namespace) -> None:
    """Child process: re-executes under the requested allocator, times one runner, prints one JSON line."""
    allocator_lib.reexec_with_fast_allocator()
    name = get_variant(args.model).name
    if args.worker == "ours":
        result = time_ours(name, args.image_size, args.batch, args.steps, args.conv_impl, args.dtype,
                           args.cpu_schedulers)
    else:
        result = time_timm(name, args.image_size, args.batch, args.steps)
    print(json.dumps(dict(result or {}, allocator=allocator_lib.active_allocator(), available=result is not None)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="s")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--conv-impl", default="auto", choices=["auto", "xla", "cpu"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--allocators", default="system,mimalloc",
                        help="Comma-separated allocators to time each runner under (system, mimalloc).")
    parser.add_argument("--cpu-schedulers", default="memory_optimized",
                        help="Comma-separated XLA:CPU schedulers for our step: " + ", ".join(CPU_SCHEDULERS))
    parser.add_argument("--no-timm", action="store_true", help="Skip the timm comparison.")
    parser.add_argument("--worker", choices=["ours", "timm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    name = get_variant(args.model).name
    allocators = args.allocators.split(",")
    schedulers = args.cpu_schedulers.split(",")
    unknown = sorted(set(schedulers) - set(CPU_SCHEDULERS))
    if unknown:
        parser.error(f"unknown --cpu-schedulers {unknown}; valid: {', '.join(CPU_SCHEDULERS)}")
    print(f"{name} {args.image_size}px batch {args.batch}, conv_impl={args.conv_impl}, dtype={args.dtype}; "
          "each row a fresh process, run one after another")
    results = {}
    width = max(len(f"ours[{scheduler}]") for scheduler in schedulers) if len(schedulers) > 1 else 4
    for allocator in allocators:
        runs = [("ours", scheduler) for scheduler in schedulers] + ([] if args.no_timm else [("timm", "")])
        for runner, scheduler in runs:
            result = _run_worker(args, runner, allocator, scheduler or schedulers[0])
            label = f"{runner}{f'[{scheduler}]' if len(schedulers) > 1 and scheduler else ''}"
            if not result["available"]:
                print(f"{label:{width}s} {allocator:8s}: not measured (torch/timm not importable)")
                continue
            results[label, allocator] = result
            extra = (f"compile {result['compile_s']:.1f} s, CPU {result['cpu_s'] * 1e3:.0f} ms/step" if runner == "ours"
                     else f"{result['threads']} torch threads")
            print(f"{label:{width}s} {result['allocator']:8s}: {result['img_s']:7.1f} img/s  "
                  f"({result['step_s'] * 1e3:.0f} ms/step, {extra})")
    for (label, allocator), result in results.items():
        for timm_alloc in allocators:
            if label != "timm" and ("timm", timm_alloc) in results:
                ratio = result["img_s"] / results["timm", timm_alloc]["img_s"]
                print(f"ratio {label}({allocator}) / timm({timm_alloc}): {ratio:.2f}")
    if len(schedulers) > 1:
        for allocator in allocators:
            base = results.get((f"ours[{schedulers[-1]}]", allocator))
            for scheduler in schedulers[:-1]:
                if base and (f"ours[{scheduler}]", allocator) in results:
                    ratio = results[f"ours[{scheduler}]", allocator]["img_s"] / base["img_s"]
                    print(f"ratio ours[{scheduler}] / ours[{schedulers[-1]}] ({allocator}): {ratio:.2f}")


if __name__ == "__main__":
    main()
