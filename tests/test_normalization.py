"""Input normalisation follows the dataset recipe with the official values (datasets.py / preprocessing.py)."""

import importlib
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from efficientnetv2_jax.models.normalization import config_normalization, normalize_images
from efficientnetv2_jax.train import steps



def load_config(spec: str):
    """`get_config(arg)` of configs/<file>.py:<arg>, as the trainer receives it."""
    name, _, arg = Path(spec).name.partition(":")
    return importlib.import_module(f"configs.{name[:-3]}").get_config(arg)
PIXELS = np.array([0, 64, 127, 128, 200, 255], np.float32)
# The official formulas, written out: preprocessing.preprocess_image, preprocess_for_finetune, preprocess_legacy.
OFFICIAL = {
    "v2": lambda x: (x - 128.0) / 128.0,
    "finetune": lambda x: (x / 255.0 - 0.5) / 0.5,
    "imagenet": lambda x: ((x[..., None] - np.array([0.485, 0.456, 0.406]) * 255)
                           / (np.array([0.229, 0.224, 0.225]) * 255)),
}


@pytest.mark.parametrize("config_file,variant,official", [
    ("imagenet21k.py:{}", "b0", "v2"), ("imagenet21k.py:{}", "s", "v2"),  # ImageNet21k: augname=None
    ("finetune.py:{},imagenet2012", "b0", "finetune"), ("finetune.py:{},imagenet2012", "s", "finetune"),  # 'ft'
    ("finetune.py:{},cifar10", "b0", "finetune"),  # Cifar10Ft copies ImagenetFt
    ("imagenet1k.py:{}", "b0", "imagenet"), ("imagenet1k.py:{}", "s", "v2"),  # the variant's own augname
])
def test_recipes_normalise_with_the_official_values(config_file, variant, official):
    config = load_config(config_file.format(variant))
    assert config.dataset.normalization == official
    images = jnp.asarray(np.broadcast_to(PIXELS[:, None], (6, 3))[None, None])  # [1, 1, 6, 3]
    got = np.asarray(normalize_images(images, config.model.name, normalization=config_normalization(variant, config)))
    expected = OFFICIAL[official](PIXELS)
    expected = expected if expected.ndim == 2 else np.broadcast_to(expected[:, None], (6, 3))
    np.testing.assert_allclose(got[0, 0], expected, rtol=1e-6, atol=1e-6)


def test_configs_without_the_field_use_the_variants_imagenet1k_recipe():
    assert config_normalization("b0", None) == "imagenet" and config_normalization("s", None) == "v2"
    with pytest.raises(ValueError, match="finetune"):
        normalize_images(jnp.zeros((1, 2, 2, 3)), "s", normalization="x-128")


class _InputRecorder:
    """Stands in for the network: records the images it is given and returns zero logits."""

    model_name, dtype, num_classes = "efficientnetv2-b0", jnp.float32, 3

    def __init__(self):
        self.seen = None

    def apply(self, variables, images, train):
        del variables, train
        self.seen = images
        return jnp.zeros((images.shape[0], self.num_classes))


def test_the_eval_step_feeds_the_recipes_normalisation():
    config = load_config("finetune.py:b0,cifar10")
    recorder = _InputRecorder()
    state = type("State", (), {"ema_params": {}, "ema_batch_stats": {}})()
    batch = {"image": jnp.full((2, 1, 1, 3), 255, jnp.uint8), "mask": jnp.ones(2),
             "label_indices": jnp.zeros((2, 1), jnp.int32), "label_count": jnp.ones(2, jnp.int32)}
    steps.make_eval_step(recorder, config, multi_label=False)(state, batch)
    np.testing.assert_allclose(recorder.seen, 1.0)  # (255/255 - 0.5) / 0.5; the B0 1k recipe would give 2.64
