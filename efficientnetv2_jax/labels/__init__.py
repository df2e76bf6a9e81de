"""Class names of the official label sets, shipped with the package (see NOTICE: Apache-2.0, google/automl).

`class_names("imagenet2012")` -> 1,000 "<synset> <names>" in class order ("n01440764 tench, Tinca tinca", ...);
`class_names("imagenet21k")` -> 21,843 of them in class order. The official 21k label file lists 21,842 synsets
for the checkpoints' 21,843 outputs, so the last class is shown as "class 21842 (not in the official label file)".
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources

LABEL_FILES = {"imagenet2012": "imagenet1k_labels.txt", "imagenet21k": "imagenet21k_labels.txt.gz"}
NUM_CLASSES = {"imagenet2012": 1000, "imagenet21k": 21843}


@functools.cache
def class_names(label_set: str) -> tuple[str, ...]:
    """The names of `label_set` ('imagenet2012' or 'imagenet21k'), one per class index."""
    if label_set not in LABEL_FILES:
        raise ValueError(f"Unknown label set {label_set!r}; known: {', '.join(LABEL_FILES)}.")
    data = importlib.resources.files(__name__).joinpath(LABEL_FILES[label_set]).read_bytes()
    if LABEL_FILES[label_set].endswith(".gz"):
        data = gzip.decompress(data)
    names = [line.replace("\t", " ", 1) for line in data.decode("utf-8").splitlines() if line]  # "<synset>\t<names>"
    missing = range(len(names), NUM_CLASSES[label_set])
    return tuple(names) + tuple(f"class {index} (not in the official label file)" for index in missing)
