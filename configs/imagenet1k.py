"""ILSVRC2012 from scratch with the official hyper-parameters and 4-stage progressive learning.

    python -m efficientnetv2_jax.main --config=configs/imagenet1k.py:s --workdir=gs://BUCKET/effnetv2-s-1k \
        --config.dataset.data_dir=gs://BUCKET/tensorflow_datasets

Argument: the variant, b0 b1 b2 b3 s m l xl (default s). The official `ImageNet` config (google/automl
efficientnetv2 hparams.py + datasets.py): TF1 RMSProp (decay .9, momentum .9, eps 1e-3), lr 0.016 x batch/256
(0.256 at batch 4096), 5 warm-up epochs then x0.97 every 2.4 epochs, 350 epochs at batch 4096 on the
1,256,144-image train split (TFDS train[:98%]; 306.68 steps/epoch, 107,336 steps, final lr ~0.0031), label
smoothing 0.1, L2 1e-5 on kernels, EMA 0.9999 over params and BN statistics, stochastic depth 0.2, the variant's
dropout, 4 progressive stages: S 171/214/257/300 px with RandAugment 5->10; M/L/XL 192/256/320/384 px with
RandAugment 5->15/20/20 and mixup = cutmix 0->0.2/0.5/0.5; B0-B3 (AutoAugment) 144..192 / 148..208 / 156..240 px.
Eval on the 50,000 validation images at the eval size (S 384, M/L 480, XL 512, B0-B3 224/240/260/300) with the
EMA weights, every 1000 steps (at each checkpoint, as the official eval job), inputs (x-128)/128 for S/M/L/XL and
ImageNet mean/std for B0-B3 (config.dataset.normalization). Expected top-1 (official README): B0 78.7, B1 79.8,
B2 80.5, B3 82.1, S 83.9, M 85.2, L 85.7.
`--config.progressive.recipe=paper` uses the paper's Table 6 ranges (S/M/L; dropout scheduled too).
"""

from configs.common import base_config, parse_arg


def get_config(arg: str | None = None):
    model, _ = parse_arg(arg, "s")
    return base_config(model, "imagenet2012")
