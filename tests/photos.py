"""Real photos at ImageNet-like sizes as JPEG test data: the sample photos scikit-learn and scikit-image ship.

Plain synthetic images (one colour, smooth ramps, 8x8 digits) hide wrong crops, scales and decodes; these are
textured, real content at the sizes a pipeline meets:

  name        size (w x h)  content                                        channels
  landscape   500 x 375     scikit-learn china.jpg                         3
  portrait    375 x 500     scikit-learn flower.jpg (centre, portrait)     3
  small       120 x 90      scikit-image coffee                            3
  large       1400 x 1050   2x2 mosaic: china, flower, coffee, rocket      3
  grey        500 x 375     scikit-image camera                            1 (a greyscale JPEG)

API: `photo_arrays()` the uint8 pixels before encoding ([h, w, 3], or [h, w, 1] for grey), `photo_bytes()` the
JPEG encodings (quality 90, 4:2:0, PIL), `photo_jpegs(directory)` writes them as `<name>.jpg`. Encodings are
made once per process. tests/conftest.py offers them as the session fixture `photo_jpegs`.
"""

from __future__ import annotations

import functools
import io
import pathlib

import numpy as np

JPEG_QUALITY = 90
SIZES = {"landscape": (500, 375), "portrait": (375, 500), "small": (120, 90), "large": (1400, 1050),
         "grey": (500, 375)}


def _fit(photo: np.ndarray, width: int, height: int) -> np.ndarray:
    """The largest centred crop of aspect width:height, resized (Lanczos) to width x height."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    rows, cols = photo.shape[:2]
    crop_w, crop_h = min(cols, rows * width // height), min(rows, cols * height // width)
    top, left = (rows - crop_h) // 2, (cols - crop_w) // 2
    image = Image.fromarray(photo[top:top + crop_h, left:left + crop_w])
    return np.asarray(image.resize((width, height), Image.LANCZOS))


@functools.cache
def photo_arrays() -> dict[str, np.ndarray]:
    """{name: uint8 pixels} at the sizes of the module docstring (computed once)."""
    import skimage.data  # pylint: disable=import-outside-toplevel
    from sklearn.datasets import load_sample_images  # pylint: disable=import-outside-toplevel

    china, flower = load_sample_images().images
    coffee, rocket = skimage.data.coffee(), skimage.data.rocket()
    quarter = [_fit(photo, 700, 525) for photo in (china, flower, coffee, rocket)]
    return {
        "landscape": _fit(china, *SIZES["landscape"]),
        "portrait": _fit(flower, *SIZES["portrait"]),
        "small": _fit(coffee, *SIZES["small"]),
        "large": np.concatenate([np.concatenate(quarter[:2], 1), np.concatenate(quarter[2:], 1)], 0),
        "grey": _fit(skimage.data.camera(), *SIZES["grey"])[..., None],
    }


@functools.cache
def photo_bytes() -> dict[str, bytes]:
    """{name: JPEG bytes} (quality 90, 4:2:0 chroma subsampling; 'grey' is a one-channel JPEG)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    encoded = {}
    for name, pixels in photo_arrays().items():
        buffer = io.BytesIO()
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(
            buffer, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0")
        encoded[name] = buffer.getvalue()
    return encoded


def photo_jpegs(directory: str | pathlib.Path) -> dict[str, pathlib.Path]:
    """Writes every photo as `<directory>/<name>.jpg`; returns {name: path}."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in photo_bytes().items():
        paths[name] = directory / f"{name}.jpg"
        paths[name].write_bytes(data)
    return paths
