"""The train and eval step functions (pure, jit-able): what one device program computes per batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from efficientnetv2_jax.data.mixing import apply_mixing
from efficientnetv2_jax.models import normalize_images
from efficientnetv2_jax.models.normalization import config_normalization
from efficientnetv2_jax.train import losses
from efficientnetv2_jax.train.state import TrainState


def make_train_step(model, tx, schedule, config: ml_collections.ConfigDict, mixing_group: int | None = None):
    """One update: mix, forward in train mode, loss, gradients, optimizer, EMA; returns metrics too.

    `mixing_group`: mixup/cutmix partners stay within groups of this many consecutive examples (the trainer
    passes the per-device batch: the official per-core pairing, with no gather across devices).
    """
    dtype = model.dtype
    normalization = config_normalization(model.model_name, config)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), state.step)
        images = normalize_images(batch["image"], model.model_name, dtype, normalization)
        labels = losses.dense_labels(batch, model.num_classes, normalize=config.loss != "sigmoid")
        images, labels = apply_mixing(images, labels, batch, mixing_group)  # Unchanged when mixing is off.

        def loss_fn(params):
            logits, new_model_state = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, images, train=True,
                mutable=["batch_stats"], rngs={"dropout": rng})
            loss = losses.classification_loss(logits, labels, batch["mask"], config.label_smoothing,
                                              config.loss)
            return loss, (logits, new_model_state["batch_stats"])

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats, tx=tx,
                                          ema_decay=config.ema_decay)
        metrics = {"loss": loss, "lr": schedule(state.step), "grad_norm": optax.global_norm(grads),
                   "train_top1": losses.top1_accuracy(logits, labels, batch["mask"]),
                   "num_corrupt": jnp.sum(batch["mask"] == 0)}  # Undecodable images, replaced by masked blanks.
        return new_state, metrics

    return train_step


def make_eval_step(model, config: ml_collections.ConfigDict, multi_label: bool):
    """Summed eval statistics of one padded batch (mask=0 rows are ignored), with EMA weights by default."""
    normalization = config_normalization(model.model_name, config)

    def eval_step(state: TrainState, batch: dict) -> dict:
        if config.eval_with_ema:
            variables = {"params": state.ema_params, "batch_stats": state.ema_batch_stats}
        else:
            variables = {"params": state.params, "batch_stats": state.batch_stats}
        images = normalize_images(batch["image"], model.model_name, model.dtype, normalization)
        labels = losses.dense_labels(batch, model.num_classes, normalize=config.loss != "sigmoid")
        logits = model.apply(variables, images, train=False)
        return losses.eval_counts(logits, labels, batch["mask"], multi_label)

    return eval_step
