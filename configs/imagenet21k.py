"""ImageNet-21k pretraining (the official `ImageNet21k` dataset config).

    python -m efficientnetv2_jax.data.prepare_imagenet21k --input 'gs://BUCKET/imagenet21k/imagenet21k*' \
        --output gs://BUCKET/tensorflow_datasets/imagenet21k
    python -m efficientnetv2_jax.main --config=configs/imagenet21k.py:l --workdir=gs://BUCKET/effnetv2-l-21k \
        --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets

Argument: the variant (default s). 60 epochs at batch 4096 on 12,720,275 images (186,332 steps), cosine,
lr 0.008 x batch/256 (0.128), 1 warm-up epoch (3,105 steps), RMSProp, L2 1e-5, EMA 0.9999, no label
smoothing, no stochastic depth, dropout 1e-6, crop + flip only (no RandAugment, mixup or cutmix), 224 px, no
progressive stages, inputs (x-128)/128 for every variant (B0-B3 included, as the official config's augname=None
gives), eval every 1000 steps (the official eval job reads every checkpoint), 21,843 classes with multi-hot labels
(up to 32 class ids per image on the wire, densified on the device) normalised to sum 1 under softmax
(`--config.loss=sigmoid` for the later sigmoid-loss checkpoints). Eval on the 100,357-image eval split at 224 px
reports top-1/top-5 on the argmax label and precision@1 (the top prediction is one of the positive labels).
Then fine-tune with configs/finetune.py:<variant>,imagenet2012 (expected 21k-ft1k top-1: S 84.9, M 86.2,
L 86.9, XL 87.2).
"""

from configs.common import base_config, parse_arg


def get_config(arg: str | None = None):
    model, _ = parse_arg(arg, "s")
    c = base_config(model, "imagenet21k")
    c.total_epochs = 60.0
    c.lr.base = 0.008
    c.lr.schedule = "cosine"
    c.lr.warmup_epochs = 1.0
    c.label_smoothing = 0.0
    c.model.drop_connect_rate = 0.0
    c.model.dropout_rate = 1e-6
    c.dataset.augment = "none"
    c.dataset.crop_area_range = (0.05, 1.0)
    c.dataset.eval_crop_rule = "v2"
    c.dataset.normalization = "v2"  # Official ImageNet21k: augname=None, so (x-128)/128 for B0-B3 too.
    c.progressive.num_stages = 1
    c.progressive.train_image_size = 224
    c.progressive.mixup_alpha = 0.0
    c.progressive.cutmix_alpha = 0.0
    c.eval_image_size = 224
    return c
