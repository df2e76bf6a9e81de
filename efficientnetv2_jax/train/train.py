"""The training loop: sharded progressive learning with RMSProp + EMA, resumable at any step.

Read top to bottom, in phases: setup -> data -> mesh, model, optimizer and shardings (the one builder in
train/program.py, which the pod planner compiles too) -> sharded init or restore -> compiled steps -> loop over
progressive stages -> final evaluation and summary.json.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metric_writers
from etils import epath
from jax.experimental import multihost_utils

from efficientnetv2_jax import allocator
from efficientnetv2_jax import checkpoint as ckpt_lib
from efficientnetv2_jax import data as data_lib
from efficientnetv2_jax.models import get_variant
from efficientnetv2_jax.train import losses, plots, progressive
from efficientnetv2_jax.train.compilation_cache import default_cache_dir, enable_compilation_cache
from efficientnetv2_jax.train.preemption import PreemptionWatcher
from efficientnetv2_jax.train.program import build_program
from efficientnetv2_jax.train.progress import ProgressReporter
from efficientnetv2_jax.train.state import TrainState

logger = logging.getLogger(__name__)


def _no_device_sync():
    """Where the loop only dispatches (the step, the data, the preemption check), any device-to-host transfer
    raises on TPU/GPU: the host stays ahead of the devices. The CPU backend never raises (its arrays are host
    memory), so tests/test_host_sync.py counts the transfers instead: a new per-step sync fails it."""
    return jax.transfer_guard_device_to_host("disallow")


def to_host(tree: Any) -> Any:
    """Fetches replicated device values on every process (no cross-host transfer needed)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def evaluate(eval_fn, state: TrainState, config: ml_collections.ConfigDict, mesh, image_size: int) -> dict:
    """Exact metrics over the whole eval split (padding masked out)."""
    iterator = data_lib.make_eval_iterator(
        dataset=config.dataset.name, split=config.dataset.eval_split, image_size=image_size,
        global_batch_size=config.eval_batch_size, mesh=mesh, data_dir=config.dataset.data_dir or None,
        resize_method="bicubic" if config.dataset.augment == "autoaug" else "bilinear",  # As in training.
        crop_rule=config.dataset.eval_crop_rule, jpeg_downscale=config.dataset.jpeg_downscale)
    totals = None
    try:
        for batch in iterator:
            counts = eval_fn(state, batch)
            totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
    finally:
        iterator.close()
    return losses.summarize_eval_counts(to_host(totals)) | {"eval_num_corrupt": _sum_over_processes(
        iterator.num_corrupt)}


def _sum_over_processes(count: int) -> int:
    """A per-host count summed over all processes (an all-gather, so a host sync: once per evaluation)."""
    if jax.process_count() == 1:
        return count
    return int(np.sum(multihost_utils.process_allgather(np.asarray(count, np.int64))))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) the whole progressive training described by `config`; returns the summary."""
    # ------------------------------------------------------------------ setup
    wall_start = time.time()
    if "://" not in workdir:  # Orbax needs absolute local paths; gs:// and other URLs pass through.
        workdir = os.path.abspath(workdir)
    workdir_path = epath.Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    enable_compilation_cache(config.compilation_cache_dir or default_cache_dir(workdir))
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0,
                                                  asynchronous=True)
    variant = get_variant(config.model.name)  # Unknown model names fail here, before any data is read.

    # ------------------------------------------------------------------ data
    info = data_lib.get_dataset_info(config.dataset.name, config.dataset.data_dir or None,
                                     download=config.dataset.download)
    steps_per_epoch, total_steps = progressive.run_length(config, info.split_sizes[config.dataset.train_split])
    stages = progressive.make_stages(config, total_steps)
    eval_size = config.eval_image_size or variant.eval_size

    # ------------------------------------------------------------------ mesh, model, optimizer, shardings
    program = build_program(config, num_classes=info.num_classes, steps_per_epoch=steps_per_epoch,
                            multi_label=info.multi_label)
    mesh = program.mesh

    # ------------------------------------------------------------------ sharded init or restore
    init_rng = jax.random.PRNGKey(config.seed)
    checkpointer = ckpt_lib.Checkpointer(
        workdir, model_name=variant.name, num_classes=info.num_classes, config=config,
        save_every_steps=config.checkpoint_every_steps, keep_last=config.keep_checkpoints,
        keep_best=config.keep_best_checkpoints, best_metric="eval_top1")
    restored = checkpointer.restore_latest(program.abstract_state, shardings=program.state_shardings)
    if restored is not None:
        state = restored.state
        logger.info("Resumed from step %d in %s.", int(to_host(state.step)), workdir)
    else:
        state = program.init_state(init_rng)
        if config.init_from:
            variables = ckpt_lib.load_init_from(
                config.init_from, {"params": state.params, "batch_stats": state.batch_stats},
                model_name=variant.name)
            state = program.state_from_variables(variables)
            logger.info("Initialised from %s.", config.init_from)
    start_step = int(to_host(state.step))

    # ------------------------------------------------------------------ compiled steps
    eval_fn = program.eval_step()

    # ------------------------------------------------------------------ loop over progressive stages
    history = plots.MetricHistory(workdir)
    stage_records = []
    eval_metrics: dict = {}
    step = start_step
    trained_images = 0
    num_corrupt = 0  # Train images replaced by masked blanks in the steps this run trained (summed on the device).
    train_seconds_total = 0.0
    preempted = False
    reporter = None
    with PreemptionWatcher() as watcher:
        for stage in stages:
            record = dataclasses.asdict(stage) | {"train_seconds": 0.0, "compile_seconds": 0.0}
            stage_records.append(record)
            if step >= stage.end_step:
                continue
            compiled, record["compile_seconds"] = program.compile_train_step(stage)
            logger.info("Stage %d/%d: %d px, RandAugment %.2f, mixup %.2f, cutmix %.2f, dropout %.2f, "
                        "steps %d-%d (compiled in %.1f s).", stage.index + 1, len(stages), stage.image_size,
                        stage.randaug_magnitude, stage.mixup_alpha, stage.cutmix_alpha, stage.dropout_rate,
                        step, stage.end_step, record["compile_seconds"])
            iterator = data_lib.make_train_iterator(
                dataset=config.dataset.name, split=config.dataset.train_split, image_size=stage.image_size,
                randaug_magnitude=stage.randaug_magnitude, mixup_alpha=stage.mixup_alpha,
                cutmix_alpha=stage.cutmix_alpha, global_batch_size=config.batch_size, seed=config.seed,
                start_step=step, mesh=mesh, augment=config.dataset.augment, data_dir=config.dataset.data_dir or None,
                area_range=tuple(config.dataset.crop_area_range), random_flip=config.dataset.random_flip,
                jpeg_downscale=config.dataset.jpeg_downscale)
            # The previous stage's input pipeline is garbage now (reference cycles around its tf.data iterator);
            # left to Python's automatic collection, its teardown stalled the loop mid-stage for 9-35 s
            # (benchmarks/step_stalls.py). Collect here, at the stage switch, where the loop pauses anyway.
            gc.collect()
            reporter = ProgressReporter(total_steps=total_steps, start_step=step, batch_size=config.batch_size,
                                        stage=stage, stages=stages, writer=writer, history=history,
                                        compile_seconds=[r["compile_seconds"] for r in stage_records],
                                        log_every_steps=config.log_every_steps, previous=reporter)
            stage_started = time.perf_counter()
            try:
                while step < stage.end_step:
                    with _no_device_sync():
                        batch = next(iterator)
                        state, metrics = compiled(state, batch)
                    step += 1
                    trained_images += config.batch_size
                    num_corrupt = num_corrupt + metrics["num_corrupt"]
                    reporter.step_done(step, metrics)  # Fetches and checks the previous log step.
                    is_eval = config.eval_every_steps > 0 and step % config.eval_every_steps == 0
                    if is_eval and step < total_steps:
                        eval_metrics = evaluate(eval_fn, state, config, mesh, eval_size)
                        reporter.eval_done(step, eval_metrics)
                    with _no_device_sync():
                        stop = watcher.should_stop(step)
                    if stop:
                        reporter.check_finite(metrics, step)
                        checkpointer.save(step, state, eval_metrics if is_eval else None, force=True,
                                          stage_index=stage.index)
                        logger.warning(watcher.stop_message(step))
                        preempted = True
                        break
                    if step % max(config.checkpoint_every_steps, 1) == 0 and config.checkpoint_every_steps > 0:
                        reporter.check_finite(metrics, step)  # Never checkpoint a diverged state.
                        checkpointer.save(step, state, eval_metrics if is_eval else None, stage_index=stage.index)
            finally:
                iterator.close()
                record["train_seconds"] = time.perf_counter() - stage_started
                train_seconds_total += record["train_seconds"]
                reporter.close()
            if preempted:
                break
            reporter.check_finite(metrics, step)
            checkpointer.save(step, state, force=True, stage_index=stage.index)

    # ------------------------------------------------------------------ final evaluation and summary
    if preempted:
        checkpointer.wait_until_finished()
        checkpointer.close()
        writer.close()
        return {"preempted_at_step": step}
    eval_metrics = evaluate(eval_fn, state, config, mesh, eval_size)
    history.write({"step": step, **eval_metrics})
    writer.write_scalars(step, eval_metrics)
    checkpointer.save(step, state, eval_metrics, force=True)
    checkpointer.wait_until_finished()
    checkpointer.close()
    summary = {
        **eval_metrics,
        "steps": step, "total_steps": total_steps, "model": variant.name, "dataset": config.dataset.name,
        "eval_image_size": eval_size, "wall_time_s": time.time() - wall_start,
        "images_per_sec": trained_images / train_seconds_total if train_seconds_total else 0.0,
        "allocator": allocator.active_allocator(), "resumed_from_step": start_step, "stages": stage_records,
        "num_corrupt": int(to_host(num_corrupt)) if isinstance(num_corrupt, jax.Array) else 0,
    }
    if jax.process_index() == 0:
        (workdir_path / "summary.json").write_text(json.dumps(summary, indent=2))
        plots.plot_training_curves(workdir, stage_records, eval_size)
    writer.flush()
    writer.close()
    logger.info("Done: eval top-1 %.4f after %d steps; summary in %s.", summary.get("eval_top1", float("nan")),
                step, workdir_path / "summary.json")
    return summary

