"""Input-pipeline throughput: our tf.data train/eval pipeline vs timm's RandAugment transform, same files and cores.

Makes ~500x375 JPEGs (q90) from the real photos scikit-learn ships (china.jpg, flower.jpg) with random
crops, flips, resizes and colour jitter, in class sub-folders read by the ``folder:<path>`` dataset. Then
times (after a warm-up) our train pipeline at each size and RandAugment magnitude, our eval pipeline at
384 px, and, when torch/torchvision/timm import, timm's ``create_transform(S, is_training=True,
auto_augment='rand-m10-n2')`` through a DataLoader with one worker per core. The process is pinned to
``--cores`` CPUs (children inherit it), so img/s/core compares like with like.

  python benchmarks/input_pipeline.py --cores 1 --images 500 --sizes 128,192,300
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

BATCH_SIZE = 128
MAGNITUDES = (5.0, 10.0, 15.0)
EVAL_SIZE = 384
NUM_CLASSES = 4


def make_jpegs(root: str, num_images: int, seed: int = 0) -> None:
    """Write ImageNet-like JPEGs (long side ~500, 4:3-ish, q90) into root/{train,eval}/class_k/."""
    from PIL import Image, ImageEnhance
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(photo) for photo in load_sample_images().images]
    for index in range(num_images):
        photo = photos[index % len(photos)]
        width, height = photo.size
        crop_w = int(width * rng.uniform(0.5, 1.0))
        crop_h = int(min(height, crop_w * rng.choice([0.75, 0.667, 1.0, 0.8])))
        left, top = rng.integers(0, width - crop_w + 1), rng.integers(0, height - crop_h + 1)
        image = photo.crop((left, top, left + crop_w, top + crop_h))
        long_side = int(rng.choice([500, 500, 500, rng.integers(300, 500), rng.integers(600, 800)]))
        scale = long_side / max(image.size)
        image = image.resize((max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))),
                             Image.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        if rng.random() < 0.25:
            image = image.transpose(Image.ROTATE_90)  # portrait
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))
        for split in ("train", "eval"):
            folder = os.path.join(root, split, f"class_{index % NUM_CLASSES}")
            os.makedirs(folder, exist_ok=True)
            image.save(os.path.join(folder, f"img_{index:05d}.jpg"), quality=90)


def images_per_second(batches, num_images: int, warmup_batches: int) -> float:
    """Pull warm-up batches, then time pulling ``num_images`` images."""
    iterator = iter(batches)
    for _ in range(warmup_batches):
        next(iterator)
    pulled, start = 0, time.perf_counter()
    while pulled < num_images:
        batch = next(iterator)
        pulled += len(batch["image"] if isinstance(batch, dict) else batch[0])
    return pulled / (time.perf_counter() - start)


def ours_train(root: str, size: int, magnitude: float, cores: int, num_images: int) -> float:
    from efficientnetv2_jax.data.input_pipeline import train_host_batches

    batches = train_host_batches(dataset=f"folder:{root}", split="train", image_size=size,
                                 randaug_magnitude=magnitude, mixup_alpha=0.0, cutmix_alpha=0.0,
                                 global_batch_size=BATCH_SIZE, seed=0, augment="randaug", process_index=0,
                                 process_count=1, num_threads=cores)
    return images_per_second(batches, num_images, warmup_batches=3)


def ours_eval(root: str, size: int, cores: int, num_images: int) -> float:
    from efficientnetv2_jax.data.input_pipeline import eval_host_batches

    def endless():
        while True:
            yield from eval_host_batches(dataset=f"folder:{root}", split="eval", image_size=size,
                                         global_batch_size=BATCH_SIZE, process_index=0, process_count=1,
                                         num_threads=cores)

    return images_per_second(endless(), num_images, warmup_batches=2)


def timm_available() -> bool:
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


def timm_train(root: str, size: int, cores: int, num_images: int) -> float:
    import torch
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(os.path.join(root, "train"),
                          transform=create_transform(size, is_training=True, auto_augment="rand-m10-n2"))
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=10**8)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, sampler=sampler, num_workers=cores,
                                         persistent_workers=True, multiprocessing_context="spawn")
    return images_per_second(loader, num_images, warmup_batches=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=1, help="CPUs to pin to (tf.data threads / timm workers)")
    parser.add_argument("--images", type=int, default=500, help="JPEGs to generate")
    parser.add_argument("--timed-images", type=int, default=1024, help="images timed per configuration")
    parser.add_argument("--sizes", default="128,192,300", help="comma-separated train sizes")
    parser.add_argument("--magnitudes", default=",".join(str(m) for m in MAGNITUDES))
    parser.add_argument("--no-timm", action="store_true", help="skip timm even if it is installed")
    args = parser.parse_args()
    available = sorted(os.sched_getaffinity(0))
    if not 1 <= args.cores <= len(available):
        raise ValueError(f"--cores must be in [1, {len(available)}], got {args.cores}")
    os.sched_setaffinity(0, available[:args.cores])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sizes = [int(s) for s in args.sizes.split(",")]
    magnitudes = [float(m) for m in args.magnitudes.split(",")]
    with_timm = timm_available() and not args.no_timm

    rows = []
    with tempfile.TemporaryDirectory() as root:
        make_jpegs(root, args.images)
        for size in sizes:
            timm_rate = timm_train(root, size, args.cores, args.timed_images) if with_timm else None
            for magnitude in magnitudes:
                rate = ours_train(root, size, magnitude, args.cores, args.timed_images)
                rows.append(("train RandAugment", size, f"m{magnitude:g} n2", rate, timm_rate))
        rows.append(("eval (full resize)", EVAL_SIZE, "-", ours_eval(root, EVAL_SIZE, args.cores, args.timed_images),
                     None))

    print(f"\n{args.images} JPEGs (~500x375, q90) from sklearn sample photos; batch {BATCH_SIZE}; "
          f"{args.cores} core(s); timm = create_transform(S, is_training=True, auto_augment='rand-m10-n2')")
    header = f"{'pipeline':<20} {'size':>5} {'RA':>9} {'img/s':>8} {'img/s/core':>11} {'timm/core':>10} {'ours/timm':>10}"
    print(header)
    print("-" * len(header))
    for name, size, ra, rate, timm_rate in rows:
        timm_cell = f"{timm_rate / args.cores:10.1f}" if timm_rate else f"{'-':>10}"
        ratio_cell = f"{rate / timm_rate:10.2f}" if timm_rate else f"{'-':>10}"
        print(f"{name:<20} {size:>5} {ra:>9} {rate:8.1f} {rate / args.cores:11.1f} {timm_cell} {ratio_cell}")


if __name__ == "__main__":
    main()
