"""The one builder of the compiled program: mesh, model, optimizer, abstract state, shardings, batch shapes and
the jitted train/eval steps.

The trainer loop, the pod planner (`efficientnetv2_jax.plan`, which compiles for a TPU slice that is not here),
evaluate and the tests all call `build_program`, so what is planned is what runs. `devices` defaults to this
process's view of every device; the planner passes the abstract devices of a TPU topology instead.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from efficientnetv2_jax.models import compiler_options, create_model, resolve_dtype
from efficientnetv2_jax.models.layers import resolve_conv_impl
from efficientnetv2_jax.train import losses, optimizer, progressive
from efficientnetv2_jax.train.sharding import state_shardings
from efficientnetv2_jax.train.state import TrainState
from efficientnetv2_jax.train.steps import make_eval_step, make_train_step

# Device kinds of chips with two TensorCores that JAX drives as one device (megacore).
_TWO_CORE_MEGACORE_KINDS = ("TPU v4", "TPU v5", "TPU v5p")


def make_mesh(batch_size: int, devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
    """A 1-D 'data' mesh over `devices` (default: all); the global batch must split evenly across it."""
    devices = list(devices if devices is not None else jax.devices())
    if batch_size % len(devices):
        raise ValueError(f"Global batch size {batch_size} is not divisible by the {len(devices)} devices; "
                         f"use a multiple of {len(devices)}.")
    return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def tensorcores_per_device(devices: Sequence[Any]) -> int:
    """TensorCores behind one JAX device: 2 on v4/v5p in megacore mode (one device per chip, how their VMs run),
    else 1 (v2/v3 show one device per core; v5e/v6e chips have one core; CPU and GPU devices count as one)."""
    first = devices[0]
    if first.platform != "tpu" or first.device_kind not in _TWO_CORE_MEGACORE_KINDS:
        return 1
    chips = {(getattr(d, "slice_index", 0), *d.coords) for d in devices}
    return 2 * len(chips) // len(devices)


def bn_group_size(config: ml_collections.ConfigDict, devices: Sequence[Any]) -> int | None:
    """Examples per BN statistics group: the official TPU rule in examples, None for the whole global batch.

    The official TpuBatchNormalization averages over groups of `model.bn_replica_group` (8) TPU cores, i.e.
    min(8 x per-core batch, global batch) examples: 1,024 at batch 4,096 on 32 v3 cores, and the same on a v4-32
    (16 megacore devices of 2 cores each). With 8 or fewer devices (a CPU) that is the whole batch.
    `bn_replica_group=0` asks for the whole global batch on any slice.
    """
    group_cores = config.model.bn_replica_group
    if group_cores < 0:
        raise ValueError(f"model.bn_replica_group must be >= 0 (0 = the whole batch), got {group_cores}.")
    per_core = config.batch_size / (len(devices) * tensorcores_per_device(devices))
    group = int(min(group_cores * per_core, config.batch_size))
    if group_cores == 0 or group >= config.batch_size:
        return None
    if group < 1 or config.batch_size % group:
        raise ValueError(f"BN groups of {group_cores} cores ({group} examples) do not split the batch "
                         f"{config.batch_size}; set model.bn_replica_group to a power of two or 0.")
    return group


def build_model(config: ml_collections.ConfigDict, num_classes: int, dropout_rate: float | None = None,
                devices: Sequence[Any] | None = None):
    """The network with the config's numerics on `devices` (default: all of this runtime's), whose platform
    picks the 'auto' dtype and convolution formulation; `dropout_rate` lets the paper recipe change it per stage."""
    mc = config.model
    devices = list(devices if devices is not None else jax.devices())
    platform = devices[0].platform
    overrides = dict(dtype=resolve_dtype(mc.dtype, platform), remat=mc.remat,
                     conv_impl=resolve_conv_impl(mc.conv_impl, platform), bn_group_size=bn_group_size(config, devices),
                     drop_connect_rate=mc.drop_connect_rate)
    if mc.width > 0:
        overrides.update(width=mc.width, depth=mc.depth)
    rate = dropout_rate if dropout_rate is not None else (mc.dropout_rate if mc.dropout_rate >= 0 else None)
    return create_model(mc.name, num_classes=num_classes, dropout_rate=rate, **overrides)


@dataclasses.dataclass(frozen=True)
class Program:
    """Everything needed to initialise, restore, compile and run the train and eval steps on one mesh."""

    config: ml_collections.ConfigDict
    num_classes: int
    multi_label: bool
    devices: tuple
    mesh: jax.sharding.Mesh
    model: Any
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    abstract_state: TrainState  # ShapeDtypeStructs carrying `state_shardings`.
    state_shardings: Any
    jit_options: dict

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def data_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P("data"))

    def init_state(self, rng: jax.Array) -> TrainState:
        """Fresh parameters and optimizer state, created directly with their shardings."""
        return jax.jit(self._init_fn, out_shardings=self.state_shardings)(rng)

    def state_from_variables(self, variables: dict) -> TrainState:
        """Step-0 state around given {'params', 'batch_stats'} (init_from a pretrained checkpoint)."""
        create = lambda v: TrainState.create(params=v["params"], batch_stats=v["batch_stats"], tx=self.tx)  # noqa: E731
        return jax.jit(create, out_shardings=self.state_shardings)(variables)

    def _init_fn(self, rng: jax.Array) -> TrainState:
        variables = self.model.init(rng, jnp.zeros((1, 64, 64, 3), self.model.dtype), train=False)
        return TrainState.create(params=variables["params"], batch_stats=variables["batch_stats"], tx=self.tx)

    def train_batch_shapes(self, stage: progressive.Stage) -> dict:
        """Abstract shapes of one global train batch of `stage`, as the train iterator delivers it."""
        b, s, sharding = self.config.batch_size, stage.image_size, self.data_sharding
        shapes = {
            "image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.uint8, sharding=sharding),
            **losses.compact_label_shapes(b, self.multi_label, sharding),
            "mask": jax.ShapeDtypeStruct((b,), jnp.float32, sharding=sharding),
        }
        if stage.mixup_alpha > 0:
            shapes["mixup_lambda"] = jax.ShapeDtypeStruct((b,), jnp.float32, sharding=sharding)
        if stage.cutmix_alpha > 0:
            shapes["cutmix_box"] = jax.ShapeDtypeStruct((b, 4), jnp.int32, sharding=sharding)
        return shapes

    def eval_batch_shapes(self, image_size: int) -> dict:
        """Abstract shapes of one global eval batch at `image_size`."""
        b, sharding = self.config.eval_batch_size, self.data_sharding
        return {"image": jax.ShapeDtypeStruct((b, image_size, image_size, 3), jnp.uint8, sharding=sharding),
                **losses.compact_label_shapes(b, self.multi_label, sharding),
                "mask": jax.ShapeDtypeStruct((b,), jnp.float32, sharding=sharding)}

    def train_step(self, stage: progressive.Stage):
        """The jitted train step of `stage` (its dropout), state donated, outputs with the state's shardings."""
        stage_model = build_model(self.config, self.num_classes, stage.dropout_rate, self.devices)
        per_device_batch = self.config.batch_size // len(self.devices)
        return jax.jit(make_train_step(stage_model, self.tx, self.schedule, self.config, per_device_batch),
                       donate_argnums=0,
                       out_shardings=(self.state_shardings, self.replicated), compiler_options=self.jit_options)

    def compile_train_step(self, stage: progressive.Stage) -> tuple[Any, float]:
        """(compiled train step of `stage`, compile seconds), compiled ahead of time from abstract shapes."""
        started = time.perf_counter()
        compiled = self.train_step(stage).lower(self.abstract_state, self.train_batch_shapes(stage)).compile()
        return compiled, time.perf_counter() - started

    def eval_step(self):
        """The jitted eval step; its counts come back replicated."""
        return jax.jit(make_eval_step(self.model, self.config, self.multi_label), out_shardings=self.replicated,
                       compiler_options=self.jit_options)

    def compile_eval_step(self, image_size: int) -> tuple[Any, float]:
        """(compiled eval step at `image_size`, compile seconds)."""
        started = time.perf_counter()
        compiled = self.eval_step().lower(self.abstract_state, self.eval_batch_shapes(image_size)).compile()
        return compiled, time.perf_counter() - started


def build_program(config: ml_collections.ConfigDict, *, num_classes: int, steps_per_epoch: float,
                  multi_label: bool = False, devices: Sequence[Any] | None = None) -> Program:
    """The program `config` runs on `devices` (default: every device of this process's runtime)."""
    devices = tuple(devices if devices is not None else jax.devices())
    mesh = make_mesh(config.batch_size, devices)
    if config.eval_batch_size % len(devices):
        raise ValueError(f"eval_batch_size {config.eval_batch_size} is not divisible by the "
                         f"{len(devices)} devices.")
    model = build_model(config, num_classes, devices=devices)
    tx = optimizer.make_optimizer(config, steps_per_epoch)
    schedule = optimizer.make_lr_schedule(config, steps_per_epoch)
    jit_options = compiler_options(config.xla_cpu_scheduler, backend=devices[0].platform)
    program = Program(config=config, num_classes=num_classes, multi_label=multi_label, devices=devices, mesh=mesh,
                      model=model, tx=tx, schedule=schedule, abstract_state=None, state_shardings=None,
                      jit_options=jit_options)
    shapes = jax.eval_shape(program._init_fn, jax.random.PRNGKey(0))
    shardings = state_shardings(shapes, mesh, config.shard_state)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
    return dataclasses.replace(program, abstract_state=abstract, state_shardings=shardings)
