"""The trainer's optimizer, LR schedules, EMA and losses against TensorFlow and the official formulas.

TensorFlow (tf.compat.v1 graph mode, as the official google/automl trainer) is the reference for RMSProp + coupled
L2 on kernels + gradient clipping + `ExponentialMovingAverage(num_updates=global_step)` applied after the train op.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from configs import imagenet1k, imagenet21k, finetune
from configs.common import base_config
from efficientnetv2_jax.models import create_model
from efficientnetv2_jax.train import losses
from efficientnetv2_jax.train.optimizer import kernel_mask, make_lr_schedule, make_optimizer
from efficientnetv2_jax.train.state import TrainState

IMAGENET_TRAIN_IMAGES = 1_256_144
IMAGENET21K_TRAIN_IMAGES = 12_720_275
SHAPES = {"conv": {"kernel": (3, 3, 2, 4)}, "bn": {"scale": (4,), "bias": (4,)},
          "dense": {"kernel": (4, 3), "bias": (3,)}}
STAT_SHAPES = {"bn": {"mean": (4,), "var": (4,)}}
NUM_STEPS = 8


def official_lr(step: int, *, schedule: str, base: float, batch_size: int, steps_per_epoch: float,
                warmup_epochs: float, total_steps: float = 0.0, decay_epochs: float = 2.4,
                decay_factor: float = 0.97) -> float:
    """google/automl `WarmupLearningRateSchedule` (official.md §2.3), written out independently in float64."""
    scaled = base * batch_size / 256
    if schedule == "exponential":
        lr = scaled * decay_factor ** math.floor(step / (steps_per_epoch * decay_epochs))
    elif schedule == "cosine":
        lr = 0.5 * scaled * (1 + math.cos(math.pi * step / total_steps))
    else:
        lr = scaled
    warmup_steps = int(warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        lr = scaled * step / warmup_steps
    return lr


# ---------------------------------------------------------------------------------------------------- LR schedules


def test_imagenet1k_schedule_matches_official_formula():
    config = imagenet1k.get_config("s")
    spe = IMAGENET_TRAIN_IMAGES / config.batch_size
    schedule = make_lr_schedule(config, spe)
    assert int(5 * spe) == 1533 and round(spe * 2.4, 2) == 736.02
    steps = [0, 1, 766, 1532, 1533, 1534, 2000, 2208, 2209, 50_000, 80_502, 107_335, 107_336]
    ours = np.array([float(schedule(s)) for s in steps])
    expected = np.array([official_lr(s, schedule="exponential", base=0.016, batch_size=4096, steps_per_epoch=spe,
                                     warmup_epochs=5) for s in steps])
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-9)
    assert float(schedule(0)) == 0.0
    assert float(schedule(1532)) == pytest.approx(0.256 * 1532 / 1533, rel=1e-6)  # Still warming up.
    assert float(schedule(1533)) == pytest.approx(0.256 * 0.97 ** 2, rel=1e-6)  # Exponent counts from step 0.
    assert float(schedule(107_336)) == pytest.approx(0.256 * 0.97 ** 145, rel=1e-5)
    assert float(schedule(107_336)) == pytest.approx(0.00309, abs=5e-6)


def test_imagenet21k_cosine_schedule_matches_official_formula():
    config = imagenet21k.get_config("l")
    spe = IMAGENET21K_TRAIN_IMAGES / config.batch_size
    total = config.total_epochs * spe  # Official `train_steps`: not rounded.
    schedule = make_lr_schedule(config, spe)
    steps = [0, 1000, 3104, 3105, 3106, 50_000, 93_166, 150_000, 186_331]
    ours = np.array([float(schedule(s)) for s in steps])
    expected = np.array([official_lr(s, schedule="cosine", base=0.008, batch_size=4096, steps_per_epoch=spe,
                                     warmup_epochs=1, total_steps=total) for s in steps])
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-8)
    assert int(spe) == 3105 and float(schedule(3104)) == pytest.approx(0.128 * 3104 / 3105, rel=1e-6)
    assert float(schedule(186_331)) < 1e-8  # Cosine reaches 0 at the end of the run.


def test_finetune_constant_schedule_matches_official_formula():
    config = finetune.get_config("s,imagenet2012")
    spe = IMAGENET_TRAIN_IMAGES / config.batch_size
    schedule = make_lr_schedule(config, spe)
    steps = [0, 1, 1000, 2452, 2453, 2454, 20_000, 36_801]
    ours = np.array([float(schedule(s)) for s in steps])
    expected = np.array([official_lr(s, schedule="constant", base=0.0005, batch_size=512, steps_per_epoch=spe,
                                     warmup_epochs=1) for s in steps])
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-10)
    assert float(schedule(36_801)) == pytest.approx(0.001, rel=1e-6)


def test_unknown_schedule_and_optimizer_are_clear_errors():
    config = base_config("s", "digits")
    config.lr.schedule = "step"
    with pytest.raises(ValueError, match="exponential"):
        make_lr_schedule(config, 10.0)
    config = base_config("s", "digits")
    config.optimizer.name = "lamb"
    with pytest.raises(ValueError, match="rmsprop"):
        make_optimizer(config, 10.0)


# ------------------------------------------------------------------------------------------ weight-decay mask


def test_kernel_mask_selects_exactly_the_official_l2_variables_of_a_real_model():
    model = create_model("b0", num_classes=10, width=0.25, depth=0.25)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    params = variables["params"]
    mask = kernel_mask(params)
    flax_to_tf = {"scale": "gamma", "bias": "beta"}  # Flax BN names -> the names the official regex sees.
    checked = 0
    for (path, leaf), (_, selected) in zip(jax.tree_util.tree_leaves_with_path(params),
                                           jax.tree_util.tree_leaves_with_path(mask)):
        names = [k.key for k in path]
        tf_leaf = "bias" if names[-1] == "bias" and "bn" not in names[-2] else flax_to_tf.get(names[-1], names[-1])
        tf_name = "/".join(names[:-1] + [tf_leaf]) + ":0"
        assert selected == (re.match(".*(bias|gamma|beta).*", tf_name) is None), tf_name
        assert selected == (names[-1] == "kernel"), names
        checked += 1
    kernels = [p for p, s in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree_util.tree_leaves(mask)) if s]
    assert checked == len(jax.tree_util.tree_leaves(params))
    assert any(leaf.ndim == 2 for _, leaf in kernels) and any(leaf.ndim == 4 for _, leaf in kernels)
    assert len(kernels) < checked  # BN scales/biases and biases are excluded.


# ---------------------------------------------------------------------------- RMSProp + L2 + clip + EMA vs TF


def _problem(seed: int = 0):
    """Fixed random initial params, BN statistics per step, inputs and labels of a tiny conv net."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rng.normal(0, 0.5, s).astype(np.float32), SHAPES,
                          is_leaf=lambda x: isinstance(x, tuple))
    stats = [jax.tree.map(lambda s: rng.normal(0, 1, s).astype(np.float32), STAT_SHAPES,
                          is_leaf=lambda x: isinstance(x, tuple)) for _ in range(NUM_STEPS + 1)]
    images = rng.normal(0, 1, (4, 6, 6, 2)).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 4)]
    return params, stats, images, labels


def _jax_loss(params, images, labels):
    h = jax.lax.conv_general_dilated(images, params["conv"]["kernel"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jnp.tanh(h * params["bn"]["scale"] + params["bn"]["bias"]).mean(axis=(1, 2))
    logits = h @ params["dense"]["kernel"] + params["dense"]["bias"]
    return jnp.mean(-jnp.sum(labels * jax.nn.log_softmax(logits), -1))


def _tf_loss(v, images, labels):
    h = tf.nn.conv2d(images, v["conv/kernel"], strides=1, padding="SAME")
    h = tf.reduce_mean(tf.tanh(h * v["bn/scale"] + v["bn/bias"]), axis=[1, 2])
    logits = tf.matmul(h, v["dense/kernel"]) + v["dense/bias"]
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def _flat(tree):
    return {jax.tree_util.keystr(p, simple=True, separator="/"): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _tf_reference(config, steps_per_epoch, params, stats, images, labels):
    """The official graph: loss + wd*sum(l2_loss(kernels)) -> [clip] -> RMSProp(global_step++) -> EMA apply."""
    flat_params, flat_stats = _flat(params), _flat(stats[0])
    graph = tf.Graph()
    with graph.as_default():
        v = {k: tf.compat.v1.get_variable(k, initializer=x) for k, x in flat_params.items()}
        s = {k: tf.compat.v1.get_variable(k, initializer=x, trainable=False) for k, x in flat_stats.items()}
        global_step = tf.compat.v1.train.get_or_create_global_step()
        lr = tf.compat.v1.placeholder(tf.float32, [])
        new_stats = {k: tf.compat.v1.placeholder(tf.float32, x.shape) for k, x in flat_stats.items()}
        loss = _tf_loss(v, tf.constant(images), tf.constant(labels))
        loss += config.weight_decay * tf.add_n([tf.nn.l2_loss(x) for k, x in v.items()
                                                 if not re.match(".*(bias|gamma|beta|scale).*", k)])
        opt = tf.compat.v1.train.RMSPropOptimizer(lr, decay=0.9, momentum=0.9, epsilon=1e-3)
        grads_and_vars = opt.compute_gradients(loss, list(v.values()))
        if config.grad_clip:
            grads = [tf.clip_by_norm(g, config.grad_clip) for g, _ in grads_and_vars]
            grads, _ = tf.clip_by_global_norm(grads, config.grad_clip)
            grads_and_vars = list(zip(grads, v.values()))
        update_stats = [tf.compat.v1.assign(s[k], new_stats[k]) for k in s]  # The BN forward pass's UPDATE_OPS.
        with tf.control_dependencies(update_stats):
            train_op = opt.apply_gradients(grads_and_vars, global_step)
        ema = tf.compat.v1.train.ExponentialMovingAverage(config.ema_decay, num_updates=global_step)
        with tf.control_dependencies([train_op]):
            ema_op = ema.apply(list(v.values()) + list(s.values()))
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for step in range(NUM_STEPS):
                feed = {lr: official_lr(step, schedule="exponential", base=config.lr.base,
                                        batch_size=config.batch_size, steps_per_epoch=steps_per_epoch,
                                        warmup_epochs=config.lr.warmup_epochs, decay_epochs=config.lr.decay_epochs,
                                        decay_factor=config.lr.decay_factor)}
                feed.update({new_stats[k]: _flat(stats[step + 1])[k] for k in s})
                sess.run(ema_op, feed)
            return (sess.run(v), sess.run({k: ema.average(x) for k, x in v.items()}),
                    sess.run({k: ema.average(x) for k, x in s.items()}), sess.run(global_step))


def _ours(config, steps_per_epoch, params, stats, images, labels):
    tx = make_optimizer(config, steps_per_epoch)
    state = TrainState.create(params=jax.tree.map(jnp.asarray, params), batch_stats=jax.tree.map(jnp.asarray, stats[0]),
                              tx=tx)
    grad_fn = jax.jit(jax.grad(_jax_loss))
    for step in range(NUM_STEPS):
        state = state.apply_gradients(grads=grad_fn(state.params, images, labels), batch_stats=stats[step + 1], tx=tx,
                                      ema_decay=config.ema_decay)
    return _flat(state.params), _flat(state.ema_params), _flat(state.ema_batch_stats), int(state.step)


def _tiny_config(grad_clip: float, weight_decay: float):
    """Official optimizer with a short warm-up and a visible staircase: steps_per_epoch 2 -> warm-up 2, period 2.4."""
    config = base_config("s", "digits")
    config.batch_size = 256
    config.lr.base = 0.05
    config.lr.warmup_epochs = 1.0
    config.lr.decay_epochs = 1.2
    config.lr.decay_factor = 0.5
    config.weight_decay = weight_decay
    config.grad_clip = grad_clip
    config.ema_decay = 0.9
    return config


@pytest.mark.parametrize("grad_clip,weight_decay", [(0.0, 1e-5), (0.0, 0.05), (0.05, 0.05)],
                         ids=["official", "strong-l2", "clipped"])
def test_optimizer_l2_clip_and_ema_match_tensorflow(grad_clip, weight_decay):
    config = _tiny_config(grad_clip, weight_decay)
    problem = _problem()
    ref_params, ref_ema, ref_ema_stats, ref_step = _tf_reference(config, 2.0, *problem)
    params, ema, ema_stats, step = _ours(config, 2.0, *problem)
    assert step == ref_step == NUM_STEPS
    initial = _flat(problem[0])
    for name in ref_params:
        assert not np.allclose(params[name], initial[name], rtol=1e-3), f"{name} did not train"
        np.testing.assert_allclose(params[name], ref_params[name], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(ema[name], ref_ema[name], rtol=1e-5, atol=1e-6, err_msg=f"EMA {name}")
    for name in ref_ema_stats:
        np.testing.assert_allclose(ema_stats[name], ref_ema_stats[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_clipping_and_weight_decay_change_the_result():
    """The TF comparison above is sensitive: each option moves the parameters by more than its tolerance."""
    problem = _problem()
    plain = _ours(_tiny_config(0.0, 0.0), 2.0, *problem)[0]
    for config in (_tiny_config(0.05, 0.0), _tiny_config(0.0, 0.05)):
        changed = _ours(config, 2.0, *problem)[0]
        assert not all(np.allclose(changed[k], plain[k], rtol=1e-4, atol=1e-5) for k in plain)


# ----------------------------------------------------------------------------------------------------- losses


def test_softmax_loss_matches_tf1_label_smoothing_and_masks():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (6, 5)).astype(np.float32)
    labels = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 6)]
    mask = np.array([1, 1, 0, 1, 0, 1], np.float32)
    for smoothing in (0.0, 0.1):
        with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
            per_example = sess.run(tf.compat.v1.losses.softmax_cross_entropy(
                labels, logits, label_smoothing=smoothing, reduction=tf.compat.v1.losses.Reduction.NONE))
            full = sess.run(tf.compat.v1.losses.softmax_cross_entropy(labels, logits, label_smoothing=smoothing))
        ours_full = losses.classification_loss(logits, labels, np.ones(6, np.float32), smoothing)
        ours_masked = losses.classification_loss(logits, labels, mask, smoothing)
        np.testing.assert_allclose(ours_full, full, rtol=1e-6)
        np.testing.assert_allclose(ours_masked, per_example[mask > 0].mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="softmax"):
        losses.classification_loss(logits, labels, mask, 0.1, kind="hinge")


def test_sigmoid_loss_matches_tf1_sigmoid_cross_entropy():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (4, 7)).astype(np.float32)
    labels = (rng.random((4, 7)) < 0.3).astype(np.float32)
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        expected = sess.run(tf.compat.v1.losses.sigmoid_cross_entropy(labels, logits, label_smoothing=0.1))
    ours = losses.classification_loss(logits, labels, np.ones(4, np.float32), 0.1, kind="sigmoid")
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_eval_counts_on_hand_made_logits():
    logits = np.array([
        [9, 1, 2, 3, 4, 5, 0],  # label 0: top-1 hit.
        [1, 9, 8, 7, 6, 5, 0],  # label 5: 5th best -> top-5 only.
        [1, 9, 8, 7, 6, 5, 0],  # label 6: worst -> neither.
        [0, 1, 2, 3, 4, 5, 9],  # label 6 but masked out.
    ], np.float32)
    labels = np.eye(7, dtype=np.float32)[[0, 5, 6, 6]]
    mask = np.array([1, 1, 1, 0], np.float32)
    counts = losses.eval_counts(logits, labels, mask, multi_label=False)
    assert (float(counts["top1"]), float(counts["top5"]), float(counts["count"])) == (1.0, 2.0, 3.0)
    assert "precision_at_1" not in counts
    summary = losses.summarize_eval_counts(jax.device_get(counts))
    assert summary["eval_top1"] == pytest.approx(1 / 3) and summary["eval_top5"] == pytest.approx(2 / 3)
    assert summary["eval_examples"] == 3


def test_eval_counts_precision_at_1_on_multi_hot_labels():
    logits = np.array([[5, 1, 0, 0], [5, 1, 0, 0], [0, 0, 0, 5]], np.float32)
    labels = np.array([[0, 1, 1, 0],    # argmax label 1; top prediction 0 is not a positive -> miss.
                       [1, 0, 0, 1],    # top prediction 0 is a positive; argmax label 0 -> top-1 hit.
                       [0, 1, 0, 1]],   # top prediction 3 is a positive (argmax label 1: top-1 miss).
                      np.float32)
    counts = losses.eval_counts(logits, labels, np.ones(3, np.float32), multi_label=True)
    assert float(counts["precision_at_1"]) == 2.0
    assert float(counts["top1"]) == 1.0
