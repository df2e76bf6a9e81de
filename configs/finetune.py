"""Fine-tuning a 21k-pretrained model: ImageNet-1k (official `ImagenetFt`) and transfer datasets.

    python -m efficientnetv2_jax.main --config=configs/finetune.py:s,imagenet2012 \
        --workdir=gs://BUCKET/effnetv2-s-21k-ft1k --config.init_from=gs://BUCKET/effnetv2-s-21k
    python -m efficientnetv2_jax.main --config=configs/finetune.py:s,cifar10 --workdir=runs/s-cifar10 \
        --config.init_from=runs/s-21k

Argument: '<variant>,<dataset>' (default 's,imagenet2012'); datasets imagenet2012, cifar10, cifar100,
oxford_flowers102, cars196, tf_flowers or any other registered one, with the official splits (the registry maps
'train'/'eval'; flowers: train+validation / test). Official `ImagenetFt` (and `Cifar10Ft`, ... which copy it):
batch 512, 15 epochs but at least 10,000 steps (ImageNet 36,801 steps; CIFAR-10 10,000 = ~102 epochs), RMSProp,
constant lr 0.0005 x batch/256 = 0.001 after 1 warm-up epoch, EMA 0.9996, L2 1e-5, label smoothing 0.1, dropout
1e-6, stochastic depth 0.2, no progressive stages, no RandAugment/mixup/cutmix, the 'finetune' preprocessing
(full-image resize, flip, cutout) with inputs (x/255-0.5)/0.5 for every variant, train at the eval size rounded
down to a multiple of 16 (official isize=1.0: S 384, M/L 480, XL 512, B0 224, B1 240, B2 256, B3 288) and eval at
the unrounded eval size (B2 260, B3 300; the others are already multiples of 16), eval every 1000 steps (every
checkpoint, as the official eval job). `init_from` loads the EMA weights of a checkpoint; the classifier is
re-initialised when the class count differs. Expected ImageNet top-1 (official 21k-ft1k): S 84.9, M 86.2, L 86.9,
XL 87.2; transfer accuracies: the paper's Table 8.
"""

from configs.common import base_config, parse_arg


def get_config(arg: str | None = None):
    from efficientnetv2_jax.models import get_variant

    model, dataset = parse_arg(arg, "s", with_dataset=True)
    c = base_config(model, dataset or "imagenet2012")
    variant = get_variant(model)
    train_size = variant.eval_size // 16 * 16
    c.batch_size = 512
    c.eval_batch_size = 512
    c.total_epochs = 15.0
    c.min_steps = 10_000
    c.lr.base = 0.0005
    c.lr.schedule = "constant"
    c.lr.warmup_epochs = 1.0
    c.ema_decay = 0.9996
    c.model.dropout_rate = 1e-6
    c.dataset.augment = "finetune"
    c.dataset.eval_crop_rule = "full"
    c.dataset.normalization = "finetune"
    c.progressive.num_stages = 1
    c.progressive.train_image_size = train_size
    c.progressive.randaug_magnitude = 0.0
    c.progressive.mixup_alpha = 0.0
    c.progressive.cutmix_alpha = 0.0
    c.eval_image_size = variant.eval_size
    return c
