"""Host-to-device label bytes per step for ImageNet-21k: compact class ids + count vs the dense multi-hot matrix.

Writes official-layout 21k TFRecords (tiny PNGs, 1-8 labels among the 21,843 classes), converts them with
``prepare_imagenet21k``, reads one global batch through the real train iterator (``train_host_batches``) and
prints the bytes of its label arrays, i.e. what ``device_put`` ships per step, next to the dense float32
[batch, 21843] multi-hot matrix that hosts sent before (built here from the same batch with
``train.losses.dense_labels``, which now runs on the device), and the batch's uint8 image bytes at 224 px.

  python benchmarks/label_bytes.py --batch 4096
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np


def write_official_tfrecords(folder: str, num_examples: int, seed: int = 0) -> None:
    """One imagenet21k-00000 file of tf.train.Examples: an 8x8 PNG and 1-8 class ids each."""
    import tensorflow as tf

    from efficientnetv2_jax.data.registry import IMAGENET21K_NUM_CLASSES

    rng = np.random.default_rng(seed)
    image = tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)).numpy()
    with tf.io.TFRecordWriter(os.path.join(folder, "imagenet21k-00000")) as writer:
        for _ in range(num_examples):
            labels = sorted(rng.choice(IMAGENET21K_NUM_CLASSES, size=rng.integers(1, 9), replace=False).tolist())
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                       "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=labels))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4096, help="global batch (the official 21k recipe: 4096)")
    args = parser.parse_args()

    import jax

    from efficientnetv2_jax.data import input_pipeline, prepare_imagenet21k
    from efficientnetv2_jax.data.registry import IMAGENET21K_NUM_CLASSES
    from efficientnetv2_jax.train.losses import dense_labels

    with tempfile.TemporaryDirectory() as root:
        raw = os.path.join(root, "raw")
        os.makedirs(raw)
        write_official_tfrecords(raw, args.batch)
        prepare_imagenet21k.convert(os.path.join(raw, "*"), os.path.join(root, "imagenet21k"), eval_files=0,
                                    minival_files=0)
        batch = next(input_pipeline.train_host_batches(
            dataset="imagenet21k", split="train", image_size=8, randaug_magnitude=0.0, mixup_alpha=0.0,
            cutmix_alpha=0.0, global_batch_size=args.batch, seed=0, augment="none", data_dir=root,
            process_index=0, process_count=1))
    compact = {key: batch[key] for key in ("label_indices", "label_count")}
    compact_bytes = sum(value.nbytes for value in compact.values())
    dense = np.asarray(jax.jit(lambda labels: dense_labels(labels, IMAGENET21K_NUM_CLASSES, normalize=True))(compact))
    image_bytes_224 = args.batch * 224 * 224 * 3  # uint8 [batch, 224, 224, 3]: the shape's size, for scale.
    shapes = ", ".join(f"{key} {value.dtype}{list(value.shape)}" for key, value in compact.items())
    print(f"batch {args.batch}, {IMAGENET21K_NUM_CLASSES} classes, labels per example "
          f"{batch['label_count'].min()}-{batch['label_count'].max()}")
    print(f"compact labels sent per step ({shapes}): {compact_bytes:,} bytes = {compact_bytes / 1e6:.3f} MB")
    print(f"dense multi-hot float32{list(dense.shape)} sent before: {dense.nbytes:,} bytes = "
          f"{dense.nbytes / 1e6:.1f} MB ({dense.nbytes / compact_bytes:.0f}x the compact form)")
    print(f"for scale, uint8 images at 224 px: {image_bytes_224 / 1e6:.1f} MB; dense labels were "
          f"{dense.nbytes / image_bytes_224:.0%} of that, compact labels are {compact_bytes / image_bytes_224:.2%}")


if __name__ == "__main__":
    main()
