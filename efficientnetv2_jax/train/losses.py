"""Dense targets from compact labels, losses with the official label smoothing, exact (masked) eval counts."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from efficientnetv2_jax.data.registry import label_width

LOSSES = ("softmax", "sigmoid")


def compact_label_shapes(batch_size: int, multi_label: bool, sharding: Any = None) -> dict:
    """Abstract shapes of a batch's compact labels (what the iterators send), for ahead-of-time compilation."""
    width = label_width(multi_label)
    return {"label_indices": jax.ShapeDtypeStruct((batch_size, width), jnp.int32, sharding=sharding),
            "label_count": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding)}


def dense_labels(batch: Mapping[str, jax.Array], num_classes: int, normalize: bool) -> jax.Array:
    """float32 [B, K] targets from the batch's compact labels, computed on the device inside the step.

    ``label_indices`` int32 [B, W] holds class ids of which the first ``label_count`` [B] are real: one-hot for
    W = 1, multi-hot (1 per distinct class) otherwise, divided by its sum when ``normalize`` (the softmax loss of
    the official multi-label recipe). Each class is compared with the W ids: elementwise, so it shards over the
    batch like the images and never gathers the global batch.
    """
    indices, count = batch["label_indices"], batch["label_count"]
    real = jnp.arange(indices.shape[-1]) < count[:, None]
    indices = jnp.where(real, indices, -1)
    dense = jnp.any(indices[:, :, None] == jnp.arange(num_classes), axis=1).astype(jnp.float32)
    if normalize:
        dense = dense / jnp.maximum(dense.sum(-1, keepdims=True), 1.0)
    return dense


def classification_loss(logits: jax.Array, labels: jax.Array, mask: jax.Array, label_smoothing: float,
                        kind: str = "softmax") -> jax.Array:
    """Mean over unmasked examples of the TF1 losses.

    softmax: cross-entropy on y*(1-ls) + ls/K (labels already one-hot or multi-hot normalised to sum 1);
    sigmoid: per-class binary cross-entropy on y*(1-ls) + ls/2, averaged over classes (the 21k option).
    """
    if kind not in LOSSES:
        raise ValueError(f"Unknown loss {kind!r}; valid choices: {', '.join(LOSSES)}.")
    logits = logits.astype(jnp.float32)
    num_classes = logits.shape[-1]
    if kind == "softmax":
        targets = labels * (1 - label_smoothing) + label_smoothing / num_classes
        per_example = optax.softmax_cross_entropy(logits, targets)
    else:
        targets = labels * (1 - label_smoothing) + 0.5 * label_smoothing
        per_example = optax.sigmoid_binary_cross_entropy(logits, targets).mean(-1)
    return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def top1_accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Fraction of unmasked examples whose top prediction is the (argmax) label; for soft labels too."""
    hits = jnp.argmax(logits, -1) == jnp.argmax(labels, -1)
    return jnp.sum(hits * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def eval_counts(logits: jax.Array, labels: jax.Array, mask: jax.Array, multi_label: bool) -> dict:
    """Summed statistics of one batch: top-1/top-5 on the argmax label, loss, count (and precision@1 for 21k)."""
    logits = logits.astype(jnp.float32)
    target = jnp.argmax(labels, -1)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    counts = {
        "top1": jnp.sum((top5[:, 0] == target) * mask),
        "top5": jnp.sum(jnp.any(top5 == target[:, None], axis=-1) * mask),
        "loss": jnp.sum(optax.softmax_cross_entropy(logits, labels / jnp.maximum(labels.sum(-1, keepdims=True),
                                                                                   1e-9)) * mask),
        "count": jnp.sum(mask),
    }
    if multi_label:  # The top prediction is any of the example's positive labels.
        counts["precision_at_1"] = jnp.sum((jnp.take_along_axis(labels, top5[:, :1], -1)[:, 0] > 0) * mask)
    return counts


def summarize_eval_counts(counts: dict) -> dict:
    """Turns summed counts into eval_* fractions (and the number of examples)."""
    n = float(np.maximum(counts["count"], 1.0))
    return {f"eval_{k}": float(v) / n for k, v in counts.items() if k != "count"} | {"eval_examples": int(counts["count"])}
