"""The embedded default dataset: scikit-learn's handwritten digits as an offline TFDS dataset.

1,797 real 8x8 grayscale images of the digits 0-9 ship inside scikit-learn, so the quickstart trains
without a network. Pixel values 0..16 become uint8 0..255 on 3 channels, stored as PNG in ArrayRecord
files (random access) with a fixed, stratified, seeded split of 1,437 train / 360 test images.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from efficientnetv2_jax.data.registry import DIGITS_TFDS_NAME

NUM_TEST_EXAMPLES = 360
SPLIT_SEED = 0


def digits_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Loads the digits as uint8 [N,8,8,3] images and int labels, split stratified into train and test."""
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(images[..., None], 3, axis=-1)
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=NUM_TEST_EXAMPLES, stratify=digits.target, random_state=SPLIT_SEED
    )
    return {"train": (train_x, train_y), "test": (test_x, test_y)}


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """TFDS builder for scikit-learn's bundled 8x8 handwritten digits (no download)."""

    name = DIGITS_TFDS_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "sklearn load_digits, PNG 8x8x3, stratified 1437/360 split (seed 0)."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        """No checksums file: nothing is downloaded (also avoids TFDS's optional importlib_resources lookup)."""
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(*arrays) for split, arrays in digits_split().items()}

    def _generate_examples(self, images, labels):
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image, "label": int(label)}


def digits_builder(data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """Returns the digits builder, preparing the ArrayRecord files under ``data_dir`` on first use."""
    builder = SklearnDigits(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        builder.download_and_prepare(file_format="array_record")
    return builder
