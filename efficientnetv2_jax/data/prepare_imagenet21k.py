"""One-time conversion of the official ImageNet-21k TFRecords to ArrayRecord (random access by index).

    python -m efficientnetv2_jax.data.prepare_imagenet21k --input 'DIR/imagenet21k*' \
        --output ~/tensorflow_datasets/imagenet21k

The serialized tf.train.Examples (features ``image`` bytes, ``labels`` int64 list) are copied
unchanged, one ArrayRecord file per TFRecord file. As in the official code the sorted files are
split into ``eval`` (files [0:16]), ``minival`` ([16:20]) and ``train`` (the rest), written to
``<output>/<split>/``; the iterators read ``<data_dir>/imagenet21k/<split>/*.array_record``.

Input and output may be gs:// (or any ``tf.io.gfile`` scheme): every file operation goes through gfile.
Each ArrayRecord file is written to a local temporary file first and then copied into place, so a
destination file appears only complete, whatever the storage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Sequence

import tensorflow as tf

OFFICIAL_EVAL_FILES = 16
OFFICIAL_MINIVAL_FILES = 4
REQUIRED_FEATURES = ("image", "labels")


def split_files(files: Sequence[str], eval_files: int, minival_files: int) -> dict[str, list[str]]:
    """Assigns the sorted input files to eval, minival and train by position (official rule)."""
    files = sorted(files)
    if len(files) <= eval_files + minival_files:
        raise ValueError(f"Need more than {eval_files + minival_files} input files to leave some for train, "
                         f"got {len(files)}; lower --eval_files/--minival_files for a partial copy.")
    return {
        "eval": files[:eval_files],
        "minival": files[eval_files : eval_files + minival_files],
        "train": files[eval_files + minival_files :],
    }


def _check_features(serialized: bytes, path: str) -> None:
    features = tf.train.Example.FromString(serialized).features.feature
    missing = [k for k in REQUIRED_FEATURES if k not in features]
    if missing:
        raise ValueError(f"{path} is not in the official ImageNet-21k layout: missing features {missing}.")


def convert_file(tfrecord_path: str, array_record_path: str) -> int:
    """Copies one TFRecord file's records into an ArrayRecord file; returns the record count."""
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

    with tempfile.TemporaryDirectory(prefix="prepare_imagenet21k_") as staging:
        local_path = os.path.join(staging, "records.array_record")
        writer = array_record_module.ArrayRecordWriter(local_path, "group_size:1")
        count = 0
        for serialized in tf.data.TFRecordDataset(tfrecord_path).as_numpy_iterator():
            if count == 0:
                _check_features(serialized, tfrecord_path)
            writer.write(serialized)
            count += 1
        writer.close()
        tf.io.gfile.copy(local_path, array_record_path, overwrite=True)
    return count


def convert(input_pattern: str, output_dir: str, eval_files: int = OFFICIAL_EVAL_FILES,
            minival_files: int = OFFICIAL_MINIVAL_FILES) -> dict[str, int]:
    """Converts every file matching ``input_pattern``; returns the number of examples per split."""
    files = tf.io.gfile.glob(os.path.expanduser(input_pattern))
    if not files:
        raise FileNotFoundError(f"No TFRecord files match {input_pattern!r}.")
    output_dir = os.path.expanduser(output_dir)
    counts = {}
    for split, split_inputs in split_files(files, eval_files, minival_files).items():
        split_dir = os.path.join(output_dir, split)
        tf.io.gfile.makedirs(split_dir)
        counts[split] = sum(
            convert_file(path, os.path.join(split_dir, os.path.basename(path) + ".array_record"))
            for path in split_inputs
        )
    with tf.io.gfile.GFile(os.path.join(output_dir, "splits.json"), "w") as f:
        f.write(json.dumps(counts, indent=2))
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="glob of the official TFRecord files, e.g. 'DIR/imagenet21k*'")
    parser.add_argument("--output", required=True, help="output folder, normally <data_dir>/imagenet21k")
    parser.add_argument("--eval_files", type=int, default=OFFICIAL_EVAL_FILES)
    parser.add_argument("--minival_files", type=int, default=OFFICIAL_MINIVAL_FILES)
    args = parser.parse_args(argv)
    tf.config.set_visible_devices([], "GPU")
    try:
        counts = convert(args.input, args.output, args.eval_files, args.minival_files)
    except (FileNotFoundError, ValueError) as error:  # Bad input: one line, no traceback.
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
