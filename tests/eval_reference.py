"""An independent reference for the official eval image and eval metrics, in NumPy (test helper).

Written from the official definitions (google/automl efficientnetv2 `preprocessing.py`, `preprocess_legacy.py`),
not from this project's code, so that tests compare the project against something else than itself:
decode the whole image (`decode_image`); V2 eval: below 320 px a centre crop of side int(S/(S+32) * short side)
at offsets ((h-c)//2, (w-c)//2), from 320 px the whole image; V1 eval: always that crop, offsets rounded up;
then `tf.image.resize` bilinear (TF2: half-pixel centres, no antialias) or TF1 `resize_bicubic` (Keys cubic,
a=-0.75, no half-pixel centres, TF's 1024-entry weight table). Results stay float, as in the official code;
`as_uint8` rounds them for a pipeline that ships uint8.
"""

from __future__ import annotations

import io

import numpy as np

CROP_PADDING = 32
BICUBIC_A = -0.75
BICUBIC_TABLE_SIZE = 1024


def decode(data: bytes) -> np.ndarray:
    """uint8 [h, w, 3]: JPEG through TF's decoder (the official `decode_image`), other formats through PIL."""
    if data[:2] == b"\xff\xd8":
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        return tf.io.decode_jpeg(data, channels=3).numpy()
    from PIL import Image  # pylint: disable=import-outside-toplevel

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def eval_window(height: int, width: int, size: int, crop_rule: str) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of the official eval crop; the whole image when there is none."""
    if crop_rule == "full" or (crop_rule == "v2" and size >= 320):
        return 0, 0, height, width
    crop = int(np.float32(size / (size + CROP_PADDING)) * np.float32(min(height, width)))
    extra = 1 if crop_rule == "v1" else 0
    return (height - crop + extra) // 2, (width - crop + extra) // 2, crop, crop


def _bilinear_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    position = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    floor = np.floor(position)
    lower = np.maximum(floor, 0).astype(int)
    upper = np.minimum(np.ceil(position), in_size - 1).astype(int)
    return lower, upper, position - floor


def resize_bilinear(pixels: np.ndarray, size: int) -> np.ndarray:
    """TF2 `tf.image.resize(..., 'bilinear')` of [h, w, c] to [size, size, c], float64."""
    image = pixels.astype(np.float64)
    y_low, y_high, y_frac = _bilinear_axis(image.shape[0], size)
    x_low, x_high, x_frac = _bilinear_axis(image.shape[1], size)
    x_frac = x_frac[None, :, None]
    top = image[y_low][:, x_low] + (image[y_low][:, x_high] - image[y_low][:, x_low]) * x_frac
    bottom = image[y_high][:, x_low] + (image[y_high][:, x_high] - image[y_high][:, x_low]) * x_frac
    return top + (bottom - top) * y_frac[:, None, None]


def _cubic(distance: np.ndarray) -> np.ndarray:
    x, a = np.abs(distance), BICUBIC_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _bicubic_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    position = np.arange(out_size) * (in_size / out_size)
    base = np.floor(position)
    delta = np.rint((position - base) * BICUBIC_TABLE_SIZE) / BICUBIC_TABLE_SIZE
    taps = np.arange(-1, 3)
    indices = np.clip(base[:, None] + taps, 0, in_size - 1).astype(int)
    return indices, _cubic(delta[:, None] - taps)


def resize_bicubic_tf1(pixels: np.ndarray, size: int) -> np.ndarray:
    """TF1 `resize_bicubic(align_corners=False, half_pixel_centers=False)` of [h, w, c], float64."""
    image = pixels.astype(np.float64)
    y_index, y_weight = _bicubic_axis(image.shape[0], size)
    x_index, x_weight = _bicubic_axis(image.shape[1], size)
    rows = np.einsum("ok,okwc->owc", y_weight, image[y_index])
    return np.einsum("pk,opkc->opc", x_weight, rows[:, x_index])


def eval_image(pixels: np.ndarray, size: int, crop_rule: str = "v2", method: str = "bilinear") -> np.ndarray:
    """The official eval image of decoded uint8 `pixels`, float64 [size, size, 3]."""
    top, left, height, width = eval_window(pixels.shape[0], pixels.shape[1], size, crop_rule)
    crop = pixels[top:top + height, left:left + width]
    return resize_bilinear(crop, size) if method == "bilinear" else resize_bicubic_tf1(crop, size)


def as_uint8(image: np.ndarray) -> np.ndarray:
    """Rounded and clipped to uint8, what a pipeline that ships uint8 can hold."""
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    shifted = np.asarray(logits, np.float64) - np.max(logits, axis=-1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)


def eval_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1, top-5 and mean cross-entropy counted by hand from [n, classes] logits and integer labels."""
    logits = np.asarray(logits, np.float64)
    order = np.argsort(-logits, axis=-1, kind="stable")
    peak = logits.max(-1)
    log_normaliser = peak + np.log(np.exp(logits - peak[:, None]).sum(-1))
    return {"eval_top1": float(np.mean(order[:, 0] == labels)),
            "eval_top5": float(np.mean([label in row[:5] for row, label in zip(order, labels)])),
            "eval_loss": float(np.mean(log_normaliser - logits[np.arange(len(labels)), labels])),
            "eval_examples": len(labels)}
