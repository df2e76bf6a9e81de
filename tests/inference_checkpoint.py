"""Test helper: a tiny digits checkpoint written like the trainer's (config recorded), without training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from configs.digits import get_config
from efficientnetv2_jax.checkpoint import Checkpointer
from efficientnetv2_jax.train.program import build_model
from efficientnetv2_jax.train.state import TrainState

NUM_CLASSES = 10


def tiny_config(eval_image_size: int = 32, crop_rule: str = "v2") -> ml_collections.ConfigDict:
    """The digits config with a B0 at width/depth 0.25 and the given eval size and crop rule."""
    config = get_config()
    config.model.width = 0.25
    config.model.depth = 0.25
    config.eval_image_size = eval_image_size
    config.dataset.eval_crop_rule = crop_rule
    return config


def write_tiny_checkpoint(workdir: str, config: ml_collections.ConfigDict, seed: int = 0) -> None:
    """Random weights with non-trivial BN statistics and EMA weights that differ from them, saved as step 1."""
    model = build_model(config, NUM_CLASSES)
    variables = jax.jit(lambda rng: model.init(rng, jnp.zeros((1, 32, 32, 3)), train=False))(jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    stats = jax.tree_util.tree_map_with_path(
        lambda path, x: (rng.uniform(0.5, 1.5, x.shape) if path[-1].key == "var" else rng.normal(0, 0.1, x.shape))
        .astype(np.float32), variables["batch_stats"])
    state = TrainState.create(params=variables["params"], batch_stats=stats, tx=optax.identity())
    state = state.replace(ema_params=jax.tree.map(lambda x: x * 1.1, state.params),
                          ema_batch_stats=jax.tree.map(lambda x: x * 0.9, state.batch_stats))
    with Checkpointer(workdir, model_name=model.model_name, num_classes=NUM_CLASSES, config=config, keep_best=0,
                      async_save=False) as checkpointer:
        checkpointer.save(1, state, force=True)
