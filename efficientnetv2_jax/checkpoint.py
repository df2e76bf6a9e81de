"""All Orbax use lives here: train-state checkpoints, standalone variable files, `init_from` loading.

Layouts on disk (local paths or gs://):
  <workdir>/checkpoints/<step>/{state,metadata}   written by `Checkpointer` during training
  <directory>/{variables,metadata}                 written by `save_variables` (weight converters)
Metadata is a small JSON object (model name, class count, config, stage, data position).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint._src.metadata import array_metadata_store  # Private modules: orbax-checkpoint is pinned.
from orbax.checkpoint._src.serialization.type_handler_registry import GLOBAL_TYPE_HANDLER_REGISTRY

CHECKPOINTS_SUBDIR = "checkpoints"
CORRUPT_SUBDIR = "checkpoints_corrupt"
STATE_ITEM = "state"
VARIABLES_ITEM = "variables"
METADATA_ITEM = "metadata"
HEAD_LEAVES = ("params/classifier/kernel", "params/classifier/bias")
BEST_MODES = ("max", "min")
OFFICIAL_PREFIX = "official:"  # init_from=official:<name> starts from an official checkpoint by name.

# Orbax copies a replicated array to the host in slices, one per replica, each cut by its own jitted program
# (one compilation per array shape and device). Below this many bytes per slice it copies from one replica instead:
# on 8 CPU devices the first save of a tiny model's 2 MB state compiled 304 such programs and took 12.4 s, now 0.6 s
# (benchmarks/compile_overheads.py). Large arrays (big kernels and their optimizer slots on a pod) keep the
# parallel copy.
MIN_REPLICA_SLICE_BYTES = 1 << 20

logger = logging.getLogger(__name__)

GLOBAL_TYPE_HANDLER_REGISTRY.add(jax.Array, ocp.type_handlers.ArrayHandler(
    array_metadata_store=array_metadata_store.Store(), min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES),
    override=True, ignore_warnings=True)  # Orbax's default jax.Array handler, but for the threshold.


@dataclasses.dataclass(frozen=True)
class Restored:
    """A train state restored from `step`, with the metadata saved beside it."""

    step: int
    state: Any
    metadata: dict


def _jsonable(tree: Any) -> Any:
    """Converts numpy/jax scalars and arrays inside `tree` to plain JSON values."""
    def convert(value):
        if isinstance(value, (np.ndarray, np.generic, jax.Array)):
            return np.asarray(value).tolist()
        raise TypeError(f"Cannot store {type(value).__name__} in checkpoint metadata.")
    return json.loads(json.dumps(tree, default=convert))


def _config_to_dict(config: Any) -> dict | None:
    """An ml_collections ConfigDict (or mapping) as a JSON-compatible dict."""
    if config is None:
        return None
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return _jsonable(dict(config))


def _abstract_target(abstract_state: Any, shardings: Any | None) -> Any:
    """ShapeDtypeStructs carrying the current shardings, so Orbax never uses the saved topology."""
    if shardings is not None:
        if isinstance(shardings, jax.sharding.Sharding):
            shardings = jax.tree.map(lambda _: shardings, abstract_state)
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)

    def with_sharding(path, leaf):
        if not hasattr(leaf, "shape"):
            return leaf
        sharding = getattr(leaf, "sharding", None)
        if sharding is None:
            raise ValueError(f"Leaf {jax.tree_util.keystr(path)} has no sharding: pass `shardings` or build the "
                             "target with jax.eval_shape of a jit with out_shardings.")
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
    return jax.tree_util.tree_map_with_path(with_sharding, abstract_state)


class Checkpointer:
    """Asynchronous train-state checkpoints in `<workdir>/checkpoints` with keep-last-k plus keep-best-k retention.

    `save` writes when `step` is a multiple of `save_every_steps` (0: never by itself) or when `force=True`
    (stage ends, preemption, the final step). Every process must call `save` and `restore_latest`.
    """

    def __init__(self, workdir: str, *, model_name: str, num_classes: int, config: Any = None,
                 save_every_steps: int = 0, keep_last: int = 3, keep_best: int = 1,
                 best_metric: str = "eval_top1", best_mode: str = "max", async_save: bool = True):
        if best_mode not in BEST_MODES:
            raise ValueError(f"Unknown best_mode {best_mode!r}; valid choices: {', '.join(BEST_MODES)}.")
        if keep_last < 1 or keep_best < 0 or save_every_steps < 0:
            raise ValueError(f"Need keep_last >= 1, keep_best >= 0, save_every_steps >= 0; got {keep_last}, "
                             f"{keep_best}, {save_every_steps}.")
        self._workdir = epath.Path(workdir)
        self._static_metadata = {"kind": "train_state", "model_name": model_name, "num_classes": num_classes,
                                 "config": _config_to_dict(config)}
        missing = -math.inf if best_mode == "max" else math.inf
        self._metric_fn = (lambda metrics: metrics.get(best_metric, missing)) if keep_best else None
        policies = [ocp.checkpoint_managers.LatestN(keep_last)]
        if keep_best:
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=self._metric_fn, reverse=best_mode == "min", n=keep_best,
                keep_checkpoints_without_metrics=False))
        save_policies = [ocp.checkpoint_managers.PreemptionCheckpointingPolicy()]
        if save_every_steps:
            save_policies.append(ocp.checkpoint_managers.FixedIntervalPolicy(save_every_steps))
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(save_policies),
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            best_fn=self._metric_fn, best_mode=best_mode,  # best_fn makes Orbax write the metrics to disk.
            enable_async_checkpointing=async_save, create=True)
        self._manager = ocp.CheckpointManager(self._workdir / CHECKPOINTS_SUBDIR,
                                              item_names=(STATE_ITEM, METADATA_ITEM), options=options)

    @property
    def directory(self) -> epath.Path:
        """Where the step directories live."""
        return self._manager.directory

    def all_steps(self) -> list[int]:
        """Steps with a committed checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest committed step, or None."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the best `best_metric` (the latest step when keep_best=0), or None."""
        return self._manager.best_step()

    def save(self, step: int, state: Any, metrics: Mapping[str, Any] | None = None, force: bool = False, *,
             stage_index: int | None = None, data_position: Any = None) -> bool:
        """Starts an asynchronous save of `state` at `step`; returns whether a save was started.

        `metrics` (e.g. {'eval_top1': 0.81}) rank the checkpoint for keep-best. A step that already has a
        checkpoint is skipped. The device arrays are copied before this returns, so they may be donated next.
        """
        if step in self._manager.all_steps():
            return False
        metadata = dict(self._static_metadata, step=int(step), stage_index=stage_index,
                        data_position=_jsonable(data_position))
        # Always a dict: {} ranks last for keep-best and survives restarts like any saved metrics.
        scalar_metrics = {k: float(v) for k, v in (metrics or {}).items()}
        return self._manager.save(
            int(step), args=ocp.args.Composite(**{STATE_ITEM: ocp.args.StandardSave(state),
                                                 METADATA_ITEM: ocp.args.JsonSave(metadata)}),
            metrics=scalar_metrics, force=force)

    def restore_latest(self, abstract_state: Any, shardings: Any | None = None) -> Restored | None:
        """Restores the newest readable checkpoint onto the current mesh, or returns None if there is none.

        `abstract_state` is the state's structure (e.g. jax.eval_shape output) whose leaves carry the target
        shardings, or `shardings` gives them (a pytree or one Sharding for all leaves). An unreadable newest
        checkpoint is reported with a warning, the previous one is tried, and once one restores the unreadable
        newer ones are moved to `<workdir>/checkpoints_corrupt` so that later saves of those steps can proceed.
        """
        target = _abstract_target(abstract_state, shardings)
        failed: list[int] = []
        first_error: Exception | None = None
        for step in reversed(self.all_steps()):
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**{
                    STATE_ITEM: ocp.args.StandardRestore(target), METADATA_ITEM: ocp.args.JsonRestore()}))
            except Exception as error:  # pylint: disable=broad-except  # Unreadable takes many forms.
                logger.warning("Checkpoint at step %d in %s is unreadable (%s: %s); trying the previous one.",
                                step, self.directory, type(error).__name__, str(error).splitlines()[0][:300])
                failed.append(step)
                first_error = first_error or error
                continue
            if failed:
                self._quarantine(failed)
            return Restored(step=step, state=restored[STATE_ITEM], metadata=dict(restored[METADATA_ITEM] or {}))
        if first_error is not None:
            raise ValueError(f"No checkpoint in {self.directory} is readable (steps {failed}).") from first_error
        return None

    def _quarantine(self, steps: list[int]) -> None:
        """Moves unreadable step directories aside (process 0 only) and re-reads the step list everywhere."""
        self.wait_until_finished()
        if jax.process_index() == 0:
            corrupt_dir = self._workdir / CORRUPT_SUBDIR
            corrupt_dir.mkdir(parents=True, exist_ok=True)
            for step in steps:
                destination = corrupt_dir / str(step)
                copies = 0
                while destination.exists():
                    copies += 1
                    destination = corrupt_dir / f"{step}-{copies}"
                (self.directory / str(step)).rename(destination)
                logger.warning("Moved unreadable checkpoint %d to %s.", step, destination)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("efficientnetv2_jax.checkpoint.quarantine")
        self._manager.reload()

    def latest_metadata(self) -> dict | None:
        """Metadata of the newest checkpoint (model, classes, config, step, stage, data position), or None."""
        step = self.latest_step()
        if step is None:
            return None
        restored = self._manager.restore(step, args=ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()}))
        return dict(restored[METADATA_ITEM])

    def metrics(self, step: int) -> dict | None:
        """The metrics saved with `step`, if any."""
        return self._manager.metrics(step)

    def wait_until_finished(self) -> None:
        """Blocks until pending asynchronous saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# ---------------------------------------------------------------- variables: reading on any machine, any topology


def _read_manager(directory: epath.Path, item: str) -> ocp.CheckpointManager:
    """A read-only manager over step directories holding `item` and metadata."""
    handlers = {item: ocp.PyTreeCheckpointHandler(), METADATA_ITEM: ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, item_handlers=handlers,
                                 options=ocp.CheckpointManagerOptions(read_only=True, create=False))


def _resolve_checkpoints_dir(directory: epath.Path) -> epath.Path | None:
    """`<workdir>/checkpoints` for a training workdir (or that folder itself); None for a variables directory."""
    if (directory / VARIABLES_ITEM).exists():
        return None
    if (directory / CHECKPOINTS_SUBDIR).exists():
        return directory / CHECKPOINTS_SUBDIR
    if directory.exists() and any(child.name.isdigit() for child in directory.iterdir()):
        return directory
    raise ValueError(f"{directory} holds no checkpoint: expected a training workdir (with {CHECKPOINTS_SUBDIR}/) "
                     f"or a save_variables directory (with {VARIABLES_ITEM}/).")


def _host_restore_args(tree_metadata: Any) -> Any:
    """Restore every leaf as a host numpy array, independent of the saved sharding and device count."""
    return jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree_metadata)


def _restore_subtrees(path: epath.Path, keys: tuple[str, ...]) -> dict:
    """Reads only the top-level `keys` of the pytree checkpoint at `path` as numpy arrays."""
    handler = ocp.PyTreeCheckpointHandler()
    tree = handler.metadata(path).tree
    missing = [key for key in keys if key not in tree]
    if missing:
        raise ValueError(f"Checkpoint {path} has no {missing}; it holds {sorted(tree)}.")
    item = {key: tree[key] for key in keys}
    checkpointer = ocp.Checkpointer(handler)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item=item, restore_args=_host_restore_args(item), partial_restore=True))


def _pick_step(checkpoints_dir: epath.Path, step: int | None) -> int:
    """The requested step (validated) or the newest one."""
    steps = sorted(_read_manager(checkpoints_dir, STATE_ITEM).all_steps())
    if not steps:
        raise ValueError(f"No committed checkpoint in {checkpoints_dir}.")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ValueError(f"No checkpoint for step {step} in {checkpoints_dir}; available: {steps}.")
    return step


def restore_variables(workdir: str, step: int | None = None, ema: bool = True) -> dict:
    """{'params', 'batch_stats'} as numpy arrays from a training workdir (EMA by default) or a variables directory.

    Works on any machine and device count. For a training workdir the newest step is used unless `step` is given;
    `ema` is ignored for a save_variables directory, which holds one set of weights.
    """
    directory = epath.Path(workdir)
    checkpoints_dir = _resolve_checkpoints_dir(directory)
    if checkpoints_dir is None:
        return _restore_subtrees(directory / VARIABLES_ITEM, ("params", "batch_stats"))
    step = _pick_step(checkpoints_dir, step)
    keys = ("ema_params", "ema_batch_stats") if ema else ("params", "batch_stats")
    tree = _restore_subtrees(checkpoints_dir / str(step) / STATE_ITEM, keys)
    return {"params": tree[keys[0]], "batch_stats": tree[keys[1]]}


def restore_metadata(workdir: str, step: int | None = None) -> dict:
    """The JSON metadata of a training workdir's newest (or given) checkpoint, or of a variables directory."""
    directory = epath.Path(workdir)
    checkpoints_dir = _resolve_checkpoints_dir(directory)
    if checkpoints_dir is not None:
        directory = checkpoints_dir / str(_pick_step(checkpoints_dir, step))
    path = directory / METADATA_ITEM
    if not path.exists():
        return {}
    return dict(ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(path, args=ocp.args.JsonRestore()))


def save_variables(directory: str, variables: Mapping[str, Any], *, model_name: str, num_classes: int,
                   overwrite: bool = False) -> None:
    """Writes {'params', 'batch_stats'} plus metadata as a standalone checkpoint (used by the weight converters)."""
    missing = {"params", "batch_stats"} - set(variables)
    if missing:
        raise ValueError(f"variables must hold 'params' and 'batch_stats'; missing {sorted(missing)}.")
    path = epath.Path(directory)
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists; choose a new output directory or pass overwrite=True.")
    metadata = {"kind": "variables", "model_name": model_name, "num_classes": num_classes}
    tree = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(path, args=ocp.args.Composite(**{VARIABLES_ITEM: ocp.args.StandardSave(tree),
                                                           METADATA_ITEM: ocp.args.JsonSave(metadata)}),
                          force=overwrite)


# ---------------------------------------------------------------- init_from: fine-tuning from another checkpoint


def _flat(tree: Mapping[str, Any]) -> dict[str, Any]:
    """{'a/b/kernel': leaf} for a nested dict of arrays."""
    return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _place_like(value: np.ndarray, like: Any) -> Any:
    """`value` with the dtype of `like`, on `like`'s sharding when that is a jax.Array."""
    value = np.asarray(value, dtype=like.dtype)
    return jax.device_put(value, like.sharding) if isinstance(like, jax.Array) else value


def load_init_from(directory: str, target_variables: Mapping[str, Any], *, model_name: str) -> dict:
    """`target_variables` with every leaf loaded from `directory` except a classification head of another shape.

    `directory` is a training workdir (its EMA weights are used, like the official ft_init_ema) or a save_variables
    directory, or `official:<name>` for an official checkpoint (`efficientnetv2_jax.pretrained`: downloaded and
    converted on first use, then cached). A different model, or any other missing or mis-shaped leaf, raises
    ValueError.
    """
    if directory.startswith(OFFICIAL_PREFIX):
        from efficientnetv2_jax import pretrained  # pylint: disable=import-outside-toplevel  # Only when used.

        directory = str(pretrained.fetch(directory[len(OFFICIAL_PREFIX):]))
    metadata = restore_metadata(directory)
    saved_model = metadata.get("model_name")
    if saved_model is not None and saved_model != model_name:
        raise ValueError(f"init_from {directory} holds a '{saved_model}' checkpoint but the model is '{model_name}'.")
    loaded = _flat(restore_variables(directory, ema=True))
    target = {"params": target_variables["params"], "batch_stats": target_variables.get("batch_stats", {})}
    flat_target = _flat(target)
    extra = sorted(set(loaded) - set(flat_target))
    if extra:
        raise ValueError(f"init_from {directory}: leaf {extra[0]} is not in model '{model_name}'.")
    values = {}
    for path, like in flat_target.items():
        if path not in loaded:
            raise ValueError(f"init_from {directory}: leaf {path} of model '{model_name}' is missing.")
        if tuple(loaded[path].shape) == tuple(like.shape):
            values[path] = _place_like(loaded[path], like)
        elif path in HEAD_LEAVES:
            logger.info("init_from: keeping the new %s %s (checkpoint has %s).", path, like.shape, loaded[path].shape)
            values[path] = like
        else:
            raise ValueError(f"init_from {directory}: leaf {path} has shape {tuple(loaded[path].shape)} in the "
                             f"checkpoint but {tuple(like.shape)} in model '{model_name}'.")
    leaves = [values[path] for path in flat_target]
    return jax.tree.unflatten(jax.tree.structure(target), leaves)
