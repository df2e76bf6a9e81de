"""A label stays with its image: photo JPEGs whose class can be read back from the pixels, through the global
order, host slicing, resume, crops and flips, and mixup/cutmix (each source's label mass = its pixel mass)."""

import glob

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from efficientnetv2_jax.data import input_pipeline, sources
from efficientnetv2_jax.data.mixing import apply_mixing
from efficientnetv2_jax.train.losses import dense_labels
from photos import photo_arrays

# Class k shows a real photo's grey values in these channels only: any crop, flip or resize keeps the tint.
TINTS = np.array([(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0)], np.float64)
NUM_EXAMPLES, BATCH, SIZE = 30, 8, 32


def class_from_pixels(images: np.ndarray) -> np.ndarray:
    """The tint (class) of each image [N, H, W, 3], from the direction of its mean colour."""
    means = images.reshape(len(images), -1, 3).astype(np.float64).mean(1)
    cosine = (means / np.linalg.norm(means, axis=1, keepdims=True)) @ (TINTS / np.linalg.norm(TINTS, axis=1, keepdims=True)).T
    return cosine.argmax(1)


@pytest.fixture(scope="module")
def tinted_photos(tmp_path_factory):
    """`folder:` dataset of 30 JPEGs (160x120 windows of a 500x375 photo, grey scaled to 60..255), 4 classes."""
    root = tmp_path_factory.mktemp("tinted")
    grey = photo_arrays()["landscape"].astype(np.float64).mean(-1)
    for i in range(NUM_EXAMPLES):
        top, left = 17 * (i % 10), 31 * (i // 3)
        window = 60 + grey[top:top + 120, left:left + 160] * (195 / 255)
        label = i % len(TINTS)
        (root / f"class{label}").mkdir(exist_ok=True)
        pixels = (window[..., None] * TINTS[label]).round().astype(np.uint8)
        Image.fromarray(pixels).save(root / f"class{label}" / f"{i:02d}.jpg", quality=95)
    return f"folder:{root}"


@pytest.fixture(autouse=True)
def _fresh_sources():
    sources.open_source.cache_clear()
    yield
    sources.open_source.cache_clear()


def host_batches(dataset, start_step=0, process_index=0, process_count=1, **overrides):
    kwargs = dict(dataset=dataset, split="all", image_size=SIZE, randaug_magnitude=0.0, mixup_alpha=0.0,
                  cutmix_alpha=0.0, global_batch_size=BATCH, seed=5, augment="none", random_flip=True,
                  area_range=(0.05, 1.0), num_threads=2)
    kwargs.update(overrides)
    return input_pipeline.train_host_batches(**kwargs, start_step=start_step, process_index=process_index,
                                             process_count=process_count)


def test_the_class_is_readable_from_the_pixels(tinted_photos):
    folder = tinted_photos.split(":", 1)[1]
    for label in range(len(TINTS)):
        images = np.stack([np.asarray(Image.open(path)) for path in sorted(glob.glob(f"{folder}/class{label}/*"))])
        assert (class_from_pixels(images) == label).all()


@pytest.mark.parametrize("process_count", [1, 2])
def test_labels_stay_with_their_images_through_order_host_slices_and_resume(tinted_photos, process_count):
    steps = 8  # 64 examples: the 30-example split rolls over into 3 epochs with different orders.
    for host in range(process_count):
        iterator = host_batches(tinted_photos, 0, host, process_count)
        fresh = [next(iterator) for _ in range(steps)]
        resumed = host_batches(tinted_photos, 5, host, process_count)
        for step, batch in list(enumerate(fresh)) + [(5 + k, next(resumed)) for k in range(3)]:
            assert batch["image"].shape[0] == BATCH // process_count
            np.testing.assert_array_equal(class_from_pixels(batch["image"]), batch["label_indices"][:, 0],
                                          err_msg=f"host {host} step {step}")


def source_and_own_mass(mixed: np.ndarray, images: np.ndarray, row: int) -> tuple[int, float]:
    """Reads from the pixels alone which other image was mixed into `row` and the fraction of `row`'s own image
    in it: per pixel, mixed = w * own + (1 - w) * other (w constant for mixup, 0 or 1 for cutmix)."""
    own = images[row]
    best = (np.inf, row, 1.0)
    for other in range(len(images)):
        if other == row:
            continue
        diff = own - images[other]
        norm = (diff**2).sum(-1)
        valid = norm > 100.0  # Pixels where the two sources differ clearly (a distinct tint, or texture).
        weight = np.clip(((mixed[row] - images[other]) * diff).sum(-1) / np.maximum(norm, 1e-9), 0.0, 1.0)
        residual = np.abs(mixed[row] - (weight[..., None] * own + (1 - weight[..., None]) * images[other])).max()
        if residual < best[0]:
            best = (residual, other, float(weight[valid].mean()))
    assert best[0] < 1e-3, f"row {row} is no mix of two images of the batch"
    return best[1], best[2]


def test_mixup_and_cutmix_labels_carry_each_sources_pixel_mass(tinted_photos):
    batch = next(host_batches(tinted_photos, 2, mixup_alpha=0.8, cutmix_alpha=1.0))
    images = batch["image"].astype(np.float32)
    labels = jax.jit(lambda b: dense_labels(b, len(TINTS), normalize=True))(
        {k: jnp.asarray(v) for k, v in batch.items()})
    mixed, mixed_labels = jax.jit(apply_mixing)(jnp.asarray(images), labels, {k: jnp.asarray(v) for k, v in batch.items()})
    mixed, mixed_labels = np.asarray(mixed), np.asarray(mixed_labels)
    classes = class_from_pixels(batch["image"])
    own_masses = []
    for row in range(BATCH):
        other, own_mass = source_and_own_mass(mixed, images, row)
        expected = np.zeros(len(TINTS))
        expected[classes[row]] += own_mass
        expected[classes[other]] += 1 - own_mass
        np.testing.assert_allclose(mixed_labels[row], expected, atol=0.03, err_msg=f"row {row}")
        own_masses.append(own_mass)
    assert min(own_masses) < 0.95  # Both kinds of mixing really happened in this batch.
