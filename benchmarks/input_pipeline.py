"""Input-pipeline throughput: our tf.data train/eval pipeline vs timm's RandAugment transform, same files and cores.

Makes ~500x375 JPEGs (q90) from the real photos scikit-learn ships (china.jpg, flower.jpg) with random
crops, flips, resizes and colour jitter, in class sub-folders read by the ``folder:<path>`` dataset. Then
times (after a warm-up) our train pipeline at each size and RandAugment magnitude and our eval pipeline at
384 px, each with the official full-resolution JPEG decode and with the opt-in ``jpeg_downscale``, and, when
torch/torchvision/timm import in ``--timm-python`` (default: this interpreter), timm's
``create_transform(S, is_training=True, auto_augment='rand-m10-n2')`` through a DataLoader with one worker per
core, in a child process. The process is pinned to ``--cores`` CPUs (children inherit it), so img/s/core
compares like with like. It also prints what the opt-in changes: the share of train crops decoded at a reduced
DCT scale and the share of their pixels within 1 grey level of the full-resolution result.

  python benchmarks/input_pipeline.py --cores 1 --images 500 --sizes 128,192,300 --timm-python /tmp/timm/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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


def ours_train(root: str, size: int, magnitude: float, cores: int, num_images: int, jpeg_downscale: bool) -> float:
    from efficientnetv2_jax.data.input_pipeline import train_host_batches

    batches = train_host_batches(dataset=f"folder:{root}", split="train", image_size=size,
                                 randaug_magnitude=magnitude, mixup_alpha=0.0, cutmix_alpha=0.0,
                                 global_batch_size=BATCH_SIZE, seed=0, augment="randaug", process_index=0,
                                 process_count=1, num_threads=cores, jpeg_downscale=jpeg_downscale)
    return images_per_second(batches, num_images, warmup_batches=3)


def ours_eval(root: str, size: int, cores: int, num_images: int, jpeg_downscale: bool) -> float:
    from efficientnetv2_jax.data.input_pipeline import eval_host_batches

    def endless():
        while True:
            yield from eval_host_batches(dataset=f"folder:{root}", split="eval", image_size=size,
                                         global_batch_size=BATCH_SIZE, process_index=0, process_count=1,
                                         num_threads=cores, jpeg_downscale=jpeg_downscale)

    return images_per_second(endless(), num_images, warmup_batches=2)


def timm_train(root: str, size: int, cores: int, num_images: int) -> float:
    """timm's RandAugment train transform through a DataLoader (run in the --timm-python child)."""
    import torch
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(os.path.join(root, "train"),
                          transform=create_transform(size, is_training=True, auto_augment="rand-m10-n2"))
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=10**8)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, sampler=sampler, num_workers=cores,
                                         persistent_workers=True, multiprocessing_context="spawn")
    return images_per_second(loader, num_images, warmup_batches=3)


def timm_in_child(python: str, root: str, size: int, cores: int, num_images: int) -> float | None:
    """timm's img/s measured by ``python`` running this script as a worker; None when timm does not import."""
    command = [python, os.path.abspath(__file__), "--timm-worker", root, "--sizes", str(size), "--cores", str(cores),
               "--timed-images", str(num_images)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"timm not measured at {size} px ({python}): {done.stderr.strip().splitlines()[-1:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["img_s"]


def downscale_effect(root: str, sizes: list[int], num_images: int) -> list[tuple[int, float, float]]:
    """Per size: (share of V2 train crops the opt-in decodes at a reduced scale, share of those crops' pixels
    within 1 grey level of the full-resolution result), over ``num_images`` train JPEGs, one crop each."""
    import tensorflow as tf

    from efficientnetv2_jax.data import preprocessing

    paths = sorted(os.path.join(folder, name) for folder, _, names in os.walk(os.path.join(root, "train"))
                   for name in names)[:num_images]
    rows = []
    for size in sizes:
        reduced, within, total = 0, 0, 0
        for index, path in enumerate(paths):
            encoded = tf.io.read_file(path)
            seed = tf.constant([index, size], tf.int64)
            images = [preprocessing.train_image(encoded, seed, image_size=size, augment="none", randaug_magnitude=0.0,
                                                random_flip=False, jpeg_downscale=flag).numpy().astype(int)
                      for flag in (False, True)]
            if not (images[0] == images[1]).all():
                reduced += 1
                within += int((abs(images[0] - images[1]) <= 1).sum())
                total += images[0].size
        rows.append((size, reduced / len(paths), within / total if total else 1.0))
    return rows


def median_rates(measure, repeats: int) -> tuple[float, float]:
    """Median img/s of ``measure(jpeg_downscale)`` for (official, opt-in), the two alternating, ``repeats`` each."""
    runs = [[measure(flag) for flag in ((False, True) if repeat % 2 == 0 else (True, False))]
            for repeat in range(repeats)]
    official = [run[0] if repeat % 2 == 0 else run[1] for repeat, run in enumerate(runs)]
    opt_in = [run[1] if repeat % 2 == 0 else run[0] for repeat, run in enumerate(runs)]
    return float(np.median(official)), float(np.median(opt_in))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cores", type=int, default=1, help="CPUs to pin to (tf.data threads / timm workers)")
    parser.add_argument("--images", type=int, default=500, help="JPEGs to generate")
    parser.add_argument("--timed-images", type=int, default=1024, help="images timed per configuration")
    parser.add_argument("--sizes", default="128,192,300", help="comma-separated train sizes")
    parser.add_argument("--magnitudes", default=",".join(str(m) for m in MAGNITUDES))
    parser.add_argument("--timm-python", default=sys.executable,
                        help="interpreter with torch, torchvision and timm (a separate venv is fine)")
    parser.add_argument("--no-timm", action="store_true", help="skip timm")
    parser.add_argument("--pixel-images", type=int, default=200, help="JPEGs for the opt-in's pixel difference")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time each configuration this many times, settings alternating; report the median")
    parser.add_argument("--timm-worker", metavar="ROOT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    available = sorted(os.sched_getaffinity(0))
    if not 1 <= args.cores <= len(available):
        print(f"error: --cores must be in [1, {len(available)}], got {args.cores}", file=sys.stderr)
        sys.exit(2)
    os.sched_setaffinity(0, available[:args.cores])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sizes = [int(s) for s in args.sizes.split(",")]
    magnitudes = [float(m) for m in args.magnitudes.split(",")]
    if args.timm_worker:
        print(json.dumps({"img_s": timm_train(args.timm_worker, sizes[0], args.cores, args.timed_images)}))
        return

    rows = []
    with tempfile.TemporaryDirectory() as root:
        make_jpegs(root, args.images)
        for size in sizes:
            timm_rate = None if args.no_timm else timm_in_child(args.timm_python, root, size, args.cores,
                                                                args.timed_images)
            for magnitude in magnitudes:
                rates = median_rates(lambda flag: ours_train(root, size, magnitude, args.cores, args.timed_images, flag),
                                     args.repeats)
                rows.append(("train RandAugment", size, f"m{magnitude:g} n2", *rates, timm_rate))
        rates = median_rates(lambda flag: ours_eval(root, EVAL_SIZE, args.cores, args.timed_images, flag), args.repeats)
        rows.append(("eval (full resize)", EVAL_SIZE, "-", *rates, None))
        effect = downscale_effect(root, sizes, args.pixel_images)

    print(f"\n{args.images} JPEGs (~500x375, q90) from sklearn sample photos; batch {BATCH_SIZE}; "
          f"{args.cores} core(s); median of {args.repeats} run(s); timm = create_transform(S, is_training=True, auto_augment='rand-m10-n2')")
    print("official = full-resolution JPEG decode (default); opt-in = config.dataset.jpeg_downscale=True; "
          "figures in img/s/core")
    header = (f"{'pipeline':<20} {'size':>5} {'RA':>9} {'official':>9} {'opt-in':>8} {'gain':>6} {'timm':>8} "
              f"{'official/timm':>14} {'opt-in/timm':>12}")
    print(header)
    print("-" * len(header))
    for name, size, ra, official, opt_in, timm_rate in rows:
        official, opt_in = official / args.cores, opt_in / args.cores
        timm_cells = (f"{timm_rate / args.cores:8.1f} {official / (timm_rate / args.cores):14.2f} "
                      f"{opt_in / (timm_rate / args.cores):12.2f}") if timm_rate else f"{'-':>8} {'-':>14} {'-':>12}"
        print(f"{name:<20} {size:>5} {ra:>9} {official:9.1f} {opt_in:8.1f} {opt_in / official:6.2f} {timm_cells}")
    print(f"\nopt-in pixels vs official, V2 train crops of {args.pixel_images} JPEGs (crop + resize only):")
    for size, reduced, within in effect:
        print(f"  {size:>4} px: {reduced:6.1%} of crops decoded at 1/2-1/8 scale; in those, {within:6.1%} of "
              f"pixels within 1 grey level of the official decode")


if __name__ == "__main__":
    main()
