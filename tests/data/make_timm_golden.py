"""Golden timm logits for a randomised tf_efficientnetv2_b0, checked in CI without torch (tests/test_convert_timm.py).

    python tests/data/make_timm_golden.py [OUTDIR]     # needs torch, torchvision and timm; OUTDIR = tests/data

A whole random B0 state dict is 23 MB in float32, too big to keep in the repository, and most of it is random
anyway. So the random part is a pure function of each tensor's name (`generated_tensor`: NumPy's PCG64 bit stream,
whose output is fixed by its algorithm, unlike Generator's distributions, which may change between NumPy
versions), and only what timm itself computed is stored:

  timm_b0_bn_stats.safetensors  every BN layer's running_mean / running_var after one training-mode pass of timm
                                (momentum 1) over calibration images, rounded to float16 before the golden pass,
                                so the 120 KB float16 file holds the exact values timm used;
  timm_b0_images.npy            the inputs, uint8 NHWC, 64x48 (not square, so a swap of H and W shows);
  timm_b0_logits.npy            timm's eval-mode logits (float32) for `to_float(images)`.

Kernels and biases are uniform with std 1/sqrt(fan-in), BN gamma in [0.5, 1.5] and beta in [-0.3, 0.3], so that
swapping same-shaped tensors or transposing a kernel changes the logits far beyond the comparison tolerance.
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
NUM_CLASSES = 10
IMAGE_SHAPE = (64, 48, 3)
BN_STATS = ("running_mean", "running_var")
STATS_FILE, IMAGES_FILE, LOGITS_FILE = "timm_b0_bn_stats.safetensors", "timm_b0_images.npy", "timm_b0_logits.npy"


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """timm's tf_efficientnetv2_b0 state-dict shapes (recorded from timm 1.0.31) with a NUM_CLASSES classifier."""
    shapes = {k: tuple(v) for k, v in json.loads((HERE / "timm_tf_efficientnetv2_b0_shapes.json").read_text()).items()}
    shapes["classifier.weight"] = (NUM_CLASSES, shapes["classifier.weight"][1])
    shapes["classifier.bias"] = (NUM_CLASSES,)
    return shapes


def _unit_uniform(name: str, size: int) -> np.ndarray:
    """`size` floats in [0, 1) from the PCG64 stream seeded by the CRC-32 of `name` (53 random bits each)."""
    bits = np.random.PCG64(zlib.crc32(name.encode())).random_raw(size)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def generated_tensor(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The golden model's value for state-dict entry `name` (float32; BN running statistics are not generated)."""
    unit = _unit_uniform(name, int(np.prod(shape, dtype=np.int64))).reshape(shape)
    if name.endswith("num_batches_tracked"):
        return np.array(1, np.int64)
    if f".{name}".split(".")[-2].startswith("bn") and name.endswith(".weight"):
        return (0.5 + unit).astype(np.float32)
    if name.endswith(".bias"):
        return (0.6 * unit - 0.3).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    return ((2 * unit - 1) * np.sqrt(3.0 / fan_in)).astype(np.float32)


def generated_state_dict(bn_stats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The whole golden state dict: generated tensors plus the stored BN running statistics."""
    state = {}
    for name, shape in state_dict_shapes().items():
        state[name] = bn_stats[name].astype(np.float32) if name.endswith(BN_STATS) else generated_tensor(name, shape)
    return state


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> the float inputs both networks receive ([-1, 1])."""
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def main(outdir: Path) -> None:
    import timm  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    model = timm.create_model("tf_efficientnetv2_b0", num_classes=NUM_CLASSES)
    timm_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert timm_shapes == state_dict_shapes(), "timm's layout differs from the recorded one: re-record the shapes"
    placeholder_stats = {k: np.ones(s, np.float32) for k, s in timm_shapes.items() if k.endswith(BN_STATS)}
    model.load_state_dict({k: torch.from_numpy(v) for k, v in generated_state_dict(placeholder_stats).items()})

    rng = np.random.default_rng(0)  # Any pixels will do: only the stored ones matter.
    calibration = rng.integers(0, 256, (8, *IMAGE_SHAPE), dtype=np.uint8)
    images = rng.integers(0, 256, (4, *IMAGE_SHAPE), dtype=np.uint8)
    nchw = lambda x: torch.from_numpy(to_float(x)).permute(0, 3, 1, 2)  # noqa: E731
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 1.0
        model.train()
        model(nchw(calibration))
        stats = {k: v.numpy().astype(np.float16) for k, v in model.state_dict().items() if k.endswith(BN_STATS)}
        assert all(np.isfinite(v).all() for v in stats.values()), "BN statistics overflow float16"
        model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in stats.items()}, strict=False)
        model.eval()
        logits = model(nchw(images)).numpy()
    save_file(stats, str(outdir / STATS_FILE))
    np.save(outdir / IMAGES_FILE, images)
    np.save(outdir / LOGITS_FILE, logits.astype(np.float32))
    print(f"wrote {outdir}: logits std {logits.std():.3f}, spread across images {np.ptp(logits, axis=0).max():.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
