"""The model zoo: exact official sizes (abstract shapes only), API errors, formulations, endpoints, options."""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from efficientnetv2_jax.models import compiler_options, create_model, get_variant, list_models, normalize_images
from efficientnetv2_jax.models.complexity import count_macs
from efficientnetv2_jax.models.layers import BatchNorm, Conv, dense_kernel_init
from efficientnetv2_jax.models.summary import main as summary_main
from efficientnetv2_jax.models.summary import variable_counts

# Trainable parameters with a 1000-class head (official README / timm) and totals with BN statistics
# (automl effnetv2_model_test.py, Keras count_params).
OFFICIAL = {
    "efficientnetv2-b0": (7_139_704, 7_200_312),
    "efficientnetv2-b1": (8_141_052, 8_212_124),
    "efficientnetv2-b2": (10_096_086, 10_178_374),
    "efficientnetv2-b3": (14_358_406, 14_467_622),
    "efficientnetv2-s": (21_458_488, 21_612_360),
    "efficientnetv2-m": (54_139_356, 54_431_388),
    "efficientnetv2-l": (118_515_272, 119_027_848),
    "efficientnetv2-xl": (208_119_808, 208_896_832),
}
# GMACs at the eval size from the official README.
OFFICIAL_GMACS = {"b0": (224, 0.72), "b1": (240, 1.2), "b2": (260, 1.7), "b3": (300, 3.0), "s": (384, 8.4),
                  "m": (480, 24.7), "l": (480, 56.3)}

TINY = dict(width=0.25, depth=0.25)


def test_list_models_is_the_eight_official_variants():
    assert list_models() == list(OFFICIAL)


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_parameter_and_statistic_counts_are_official(name):
    params, stats = variable_counts(name)
    assert (params, params + stats) == OFFICIAL[name]


@pytest.mark.parametrize("short", list(OFFICIAL_GMACS))
def test_gmacs_within_one_percent_of_official(short):
    size, gmacs = OFFICIAL_GMACS[short]
    assert get_variant(short).eval_size == size
    assert count_macs(short, size) / 1e9 == pytest.approx(gmacs, rel=0.01)


def test_variant_defaults_follow_official_configs():
    s, m, b3 = get_variant("s"), get_variant("m"), get_variant("b3")
    assert (s.train_size, s.eval_size, s.dropout_rate, s.randaug_magnitude, s.mixup_alpha) == (300, 384, 0.2, 10, 0)
    assert (m.train_size, m.eval_size, m.dropout_rate, m.randaug_magnitude, m.mixup_alpha) == (384, 480, 0.3, 15, 0.2)
    assert (b3.augment, b3.normalization, b3.resize_method) == ("autoaug", "imagenet", "bicubic")
    assert (s.augment, s.normalization, s.resize_method) == ("randaug", "v2", "bilinear")


def test_bad_inputs_raise_value_errors_naming_choices():
    with pytest.raises(ValueError, match="efficientnetv2-s"):
        create_model("efficientnetv2-q")
    with pytest.raises(ValueError, match="dropout_rate"):
        create_model("s", dropuot_rate=0.1)
    with pytest.raises(ValueError, match="xla"):
        create_model("s", conv_impl="fast")
    with pytest.raises(ValueError, match="bfloat16"):
        create_model("s", dtype="float16")
    model = create_model("b0", num_classes=10, **TINY)
    with pytest.raises(ValueError, match="3 channels"):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1))))
    with pytest.raises(ValueError, match="NHWC"):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((32, 32, 3))))


def test_normalize_images_official_recipes():
    x = jnp.array([[[[0, 128, 255]]]], jnp.uint8)
    np.testing.assert_allclose(normalize_images(x, "s")[0, 0, 0], [-1.0, 0.0, 127 / 128], rtol=1e-6)
    expected = (np.array([0, 128, 255]) / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(normalize_images(x, "b0")[0, 0, 0], expected, rtol=1e-5)


def test_initialisers_are_official():
    x = jnp.zeros((1, 8, 8, 192))
    dw = Conv(192, 3, depthwise=True).init(jax.random.PRNGKey(0), x)["params"]["kernel"]
    assert dw.shape == (3, 3, 1, 192)  # TF stores (3, 3, 192, 1); the official fan_out is 9, not 9 * 192.
    assert float(jnp.std(dw)) == pytest.approx(np.sqrt(2 / 9), rel=0.05)
    pw = Conv(1280, 1).init(jax.random.PRNGKey(0), x)["params"]["kernel"]
    assert float(jnp.mean(pw)) == pytest.approx(0, abs=1e-3)
    assert float(jnp.std(pw)) == pytest.approx(np.sqrt(2 / 1280), rel=0.02)
    dense = dense_kernel_init(jax.random.PRNGKey(0), (1280, 1000))
    assert float(jnp.max(jnp.abs(dense))) <= 1 / np.sqrt(1000)
    assert float(jnp.std(dense)) == pytest.approx(1 / np.sqrt(3000), rel=0.02)
    # SE convs have biases and a width from the block *input*; fused e=1 blocks have no separate projection.
    model = create_model("b0", num_classes=1000)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"]
    assert set(params["blocks_5"]["se"]["reduce"]) == {"kernel", "bias"}
    assert params["blocks_5"]["se"]["reduce"]["kernel"].shape == (1, 1, 192, 12)
    assert set(params["blocks_0"]) == {"project_conv", "project_bn"}
    assert set(params["stem"]["conv"]) == {"kernel"}
    assert set(params["classifier"]) == {"kernel", "bias"}


def init(model, x):
    """Jitted init: eager Flax init dispatches op by op and takes ~20 s even for the tiny network."""
    return jax.jit(lambda x: model.init(jax.random.PRNGKey(0), x, train=False))(x)


def apply(model, variables, x, **kwargs):
    return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


def assert_trees_close(tree, ref, rel=1e-5):
    """Leafwise closeness relative to the largest magnitude in `ref` (gradients of some BN biases are ~0)."""
    scale = max(float(jnp.max(jnp.abs(r))) for r in jax.tree.leaves(ref))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(ref)):
        assert float(jnp.max(jnp.abs(a - b))) <= rel * scale, jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def tiny():
    """(model, variables, x): the tiny B0 (conv_impl 'auto', the CPU formulation here), its variables and a 33 px
    batch. Compiled once for the module: the variables depend on neither the conv formulation, the dropout rate,
    remat nor the input size, so tests clone the model with their option and reuse them."""
    model = create_model("b0", num_classes=7, **TINY)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 33, 33, 3))
    return model, init(model, x), x


def _loss_and_grads(model, variables, x):
    def loss(params):
        logits, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(3)})
        return jnp.sum(jnp.sin(logits))
    return jax.value_and_grad(loss)(variables["params"])


@pytest.fixture(scope="module")
def tiny_gradients(tiny):
    """Loss and gradients of the tiny model, compiled with JAX's default options: the reference of the remat and
    compiler-option tests."""
    return jax.jit(_loss_and_grads, static_argnums=0)(*tiny)


def test_conv_formulations_agree_on_outputs_and_gradients(tiny):
    model, variables, x = tiny
    results = {}
    for impl in ("xla", "cpu"):
        impl_model = model.clone(conv_impl=impl)
        eval_and_grad = jax.jit(lambda v, x: (impl_model.apply(v, x), _loss_and_grads(impl_model, v, x)))
        results[impl] = eval_and_grad(variables, x)
    (ref_logits, (ref_loss, ref_grads)), (logits, (loss, grads)) = results["xla"], results["cpu"]
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert_trees_close(grads, ref_grads)


def test_cpu_scheduler_option_is_per_backend_and_keeps_the_numerics(tiny, tiny_gradients):
    assert compiler_options(backend="cpu") == {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
    assert compiler_options("xla_default", backend="cpu") == {}
    assert compiler_options(backend="tpu") == compiler_options(backend="gpu") == {}
    with pytest.raises(ValueError, match="valid choices: memory_optimized, xla_default"):
        compiler_options("fastest")
    model, variables, x = tiny
    step = lambda v, x: _loss_and_grads(model, v, x)  # noqa: E731
    tuned = jax.jit(step, compiler_options=compiler_options(backend="cpu"))(variables, x)
    np.testing.assert_allclose(tuned[0], tiny_gradients[0], rtol=1e-6)
    assert_trees_close(tuned[1], tiny_gradients[1])


def _layer_outputs_and_gradients(layers, params, xs):
    """Each layer's output and the gradient of sum(cos(output)) by its parameters and input."""
    def apply_and_grad(layer, p, x):
        f = lambda p, x: jnp.sum(jnp.cos(layer.apply(p, x)))  # noqa: E731
        return layer.apply(p, x), jax.grad(f, argnums=(0, 1))(p, x)
    return [apply_and_grad(layer, p, x) for layer, p, x in zip(layers, params, xs)]


@pytest.mark.parametrize("size,stride,kernel", [(9, 1, 3), (9, 2, 3), (8, 2, 5), (7, 2, 3)])
def test_depthwise_pointwise_and_dense_formulations_match_lax_conv(size, stride, kernel):
    # Dense kxk: 3 input channels (the stem's im2col), 12 kept (XLA's convolutions) and 12 widened 4x (the
    # matrix-product input gradient). All layers of one formulation compile as one program (one compilation
    # instead of one per layer and function); both formulations get the same parameters and inputs.
    cases = ((True, kernel, 6, 6), (False, 1, 6, 6), (False, kernel, 3, 24), (False, kernel, 12, 12),
             (False, kernel, 12, 48))
    xs = [jax.random.normal(jax.random.PRNGKey(0), (2, size, size + 1, in_ch)) for _, _, in_ch, _ in cases]
    layers = {impl: [Conv(features, k, stride, depthwise=depthwise, conv_impl=impl)
                     for depthwise, k, _, features in cases] for impl in ("xla", "cpu")}
    params = jax.jit(lambda xs: [layer.init(jax.random.PRNGKey(1), x) for layer, x in zip(layers["xla"], xs)])(xs)
    outs = {impl: jax.jit(functools.partial(_layer_outputs_and_gradients, layers[impl]))(params, xs)
            for impl in layers}
    for case, (cpu, xla) in zip(cases, zip(outs["cpu"], outs["xla"])):
        np.testing.assert_allclose(cpu[0], xla[0], rtol=1e-5, atol=1e-5, err_msg=str(case))
        for a, b in zip(jax.tree.leaves(cpu[1]), jax.tree.leaves(xla[1])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=str(case))


def test_train_mode_updates_batch_stats_and_uses_dropout_rng(tiny):
    model, variables, x = tiny
    model = model.clone(dropout_rate=0.5)
    train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}))
    out1, upd = train(variables, x, jax.random.PRNGKey(0))
    out2, _ = train(variables, x, jax.random.PRNGKey(1))
    assert not jnp.allclose(out1, out2)
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), upd["batch_stats"], variables["batch_stats"])
    assert all(jax.tree.leaves(moved))
    evaluate = jax.jit(lambda v, x: model.apply(v, x))
    np.testing.assert_array_equal(evaluate(variables, x), evaluate(variables, x))


def test_endpoints_have_official_strides(tiny):
    model, variables, _ = tiny
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 64, 64, 3))
    ends = apply(model, variables, x, return_endpoints=True)
    assert ends["stem"].shape[1] == 32
    assert [ends[f"reduction_{i}"].shape[1] for i in range(1, 6)] == [32, 16, 8, 4, 2]
    assert ends["pooled_features"].shape == (4, ends["features"].shape[-1])
    assert ends["logits"].shape == (4, 7)
    headless = create_model("b0", num_classes=0, **TINY)
    headless_shapes = jax.eval_shape(lambda: headless.init(jax.random.PRNGKey(0), x, train=False))
    headless_vars = {"params": {k: v for k, v in variables["params"].items() if k != "classifier"},
                     "batch_stats": variables["batch_stats"]}
    assert "classifier" not in headless_shapes["params"]
    assert jax.tree.structure(headless_shapes) == jax.tree.structure(headless_vars)
    np.testing.assert_allclose(apply(headless, headless_vars, x), ends["pooled_features"], rtol=1e-5, atol=1e-5)


def _equations(jaxpr):
    """Every equation of a jaxpr, inner jaxprs (jit, remat, custom_vjp bodies) included."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for inner in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(inner, jax.extend.core.ClosedJaxpr):
                    yield from _equations(inner.jaxpr)
                elif isinstance(inner, jax.extend.core.Jaxpr):
                    yield from _equations(inner)


def test_bfloat16_convolves_in_bfloat16_with_float32_params_and_logits_close_to_float32(tiny):
    _, variables, _ = tiny
    model32 = create_model("b0", num_classes=7, conv_impl="xla", **TINY)
    model16 = create_model("b0", num_classes=7, conv_impl="xla", dtype="bfloat16", **TINY)
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 32, 32, 3))
    created = jax.eval_shape(lambda: model16.init(jax.random.PRNGKey(0), x, train=False))
    assert {leaf.dtype for leaf in jax.tree.leaves(created)} == {jnp.dtype(jnp.float32)}
    convs = [eqn for eqn in _equations(jax.make_jaxpr(lambda v: model16.apply(v, x))(variables).jaxpr)
             if eqn.primitive.name == "conv_general_dilated"]
    assert len(convs) > 10 and all(v.aval.dtype == jnp.bfloat16 for eqn in convs for v in eqn.invars)
    logits16, logits32 = apply(model16, variables, x), apply(model32, variables, x)
    assert logits16.dtype == jnp.float32
    gap = float(jnp.max(jnp.abs(logits16 - logits32)))
    assert 0 < gap < 0.05 * float(jnp.max(jnp.abs(logits32)))  # bf16 keeps ~3 significant digits.
    _, upd = apply(model16, variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(0)})
    assert {leaf.dtype for leaf in jax.tree.leaves(upd)} == {jnp.dtype(jnp.float32)}


def test_remat_recomputes_blocks_and_gives_the_same_gradients(tiny, tiny_gradients):
    model, variables, x = tiny
    remat_model = create_model("b0", num_classes=7, remat=True, **TINY)
    primitives = lambda m: {eqn.primitive.name for eqn in _equations(  # noqa: E731
        jax.make_jaxpr(lambda v: _loss_and_grads(m, v, x))(variables).jaxpr)}
    remat_primitives = {"checkpoint", "remat2"}  # jax.checkpoint's primitive; remat2 once differentiated.
    assert primitives(remat_model) & remat_primitives and not primitives(model) & remat_primitives
    loss, grads = tiny_gradients
    loss_r, grads_r = jax.jit(_loss_and_grads, static_argnums=0)(remat_model, variables, x)
    np.testing.assert_allclose(loss, loss_r, rtol=1e-5)
    assert_trees_close(grads_r, grads)


def test_grouped_batch_norm_normalises_each_group_separately():
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 3, 3, 4)) * jnp.arange(1, 9.0)[:, None, None, None]
    bn = BatchNorm(group_size=4)
    variables = bn.init(jax.random.PRNGKey(0), x, train=False)  # A single layer: eager is fast enough.
    y, upd = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    for half in (slice(0, 4), slice(4, 8)):
        single, _ = BatchNorm().apply(variables, x[half], train=True, mutable=["batch_stats"])
        np.testing.assert_allclose(y[half], single, rtol=1e-4, atol=1e-5)
    group_means = x.reshape(2, -1, 4).mean(1).mean(0)
    np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * group_means, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        BatchNorm(group_size=3).apply(variables, x, train=True, mutable=["batch_stats"])


def test_summary_cli_prints_a_row_per_variant(capsys):
    summary_main(["--model", "s"])
    out = capsys.readouterr().out
    assert "efficientnetv2-s" in out and "21,458,488" in out and "8.37" in out
