"""Shared config builder: every field of every experiment, documented once here, with the official defaults.

Experiment files (`configs/<family>.py:<arg>`) call `base_config` and change what differs. Override any field with
`--config.<field>=<value>`; the config is locked, so a field that does not exist is an error.

  model.name              variant efficientnetv2-{b0,b1,b2,b3,s,m,l,xl} (short forms b0..xl accepted)
  model.dtype             compute dtype: 'auto' (official mixed precision: bfloat16 on TPU/GPU, float32 on CPU),
                          'float32' or 'bfloat16'; parameters, BN statistics, EMA, loss, logits and checkpoints
                          stay float32
  model.remat             recompute each block in the backward pass (less activation memory at large sizes)
  model.conv_impl         convolution formulation: 'auto' (per backend), 'xla' or 'cpu'
  model.bn_replica_group  BN statistics over groups of this many TPU cores' examples, min(N x per-core batch,
                          global batch): official 8 (1,024 examples at batch 4,096 on 32 v3 cores or a v4-32);
                          the whole batch with <= 8 devices (the CPU quickstart); 0 = the whole global batch
  model.drop_connect_rate stochastic depth: 1 - survival probability of the last block (official 0.2)
  model.dropout_rate      dropout before the classifier; -1 = the variant's (the paper recipe schedules it)
  model.width, model.depth  compound-scaling overrides; 0 = the variant's (set both to shrink a model)
  dataset.name            a registered dataset: digits, imagenet2012, imagenet21k, cifar10, cifar100,
                          oxford_flowers102, cars196, tf_flowers, any TFDS name, or folder:<path>
  dataset.data_dir        TFDS data dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets); gs:// works
  dataset.train_split, dataset.eval_split   split aliases 'train' / 'eval' (/'minival'/'trainval'), which the
                          dataset registry maps to the official splits (imagenet2012 train = train[:98%])
  dataset.augment         'randaug' (S/M/L/XL), 'autoaug' (B0-B3), 'none' (crop + flip: 21k), 'finetune'
  dataset.crop_area_range min/max area fraction of the random crop (V2 0.05-1, V1 0.08-1)
  dataset.random_flip     the official random horizontal flip (off where mirroring changes the class)
  dataset.eval_crop_rule  'v2' (centre crop s/(s+32) only below 320 px), 'v1' (B0-B3 crop), 'full' (resize)
  dataset.jpeg_downscale  False (official): decode JPEGs at full resolution. True: decode a crop window at least
                          2x/4x/8x the output on both sides at libjpeg's 1/2, 1/4, 1/8 DCT scale; measured on
                          ~500x375 photos (benchmarks/input_pipeline.py): 0.97-1.01x the speed, and it decodes 38%
                          of 128-px train crops so that half their pixels move by more than 1 grey level
  dataset.normalization   input normalisation of the recipe (official datasets.py): 'v2' (x-128)/128 (1k S/M/L/XL,
                          21k all variants), 'imagenet' mean/std (1k B0-B3), 'finetune' (x/255-0.5)/0.5 (ImagenetFt)
  dataset.download        let a run download and prepare a TFDS dataset that is not prepared yet (default: fail
                          at once, naming the data_dir and the `tfds build` command)
  batch_size              global train batch (divisible by the device count); the LR scales with it
  eval_batch_size         global eval batch (divisible by the device count)
  total_epochs            training length in epochs of the train split
  total_steps             training length in steps; overrides total_epochs when > 0
  min_steps               at least this many steps (official fine-tuning: 10,000)
  seed                    seeds parameters, data order, augmentation and dropout
  optimizer.name          'rmsprop' (TF1 RMSProp, official), 'momentum', 'sgd' or 'adamw'
  optimizer.decay, optimizer.momentum, optimizer.eps   RMSProp rho .9, momentum .9, epsilon 1e-3 (in the sqrt)
  lr.base                 LR per 256 examples, scaled by batch_size/256 (0.016 -> 0.256 at batch 4096)
  lr.schedule             'exponential' (staircase), 'cosine', 'linear' or 'constant'
  lr.warmup_epochs        linear warm-up from 0 over int(warmup_epochs * steps_per_epoch) steps
  lr.decay_epochs, lr.decay_factor   exponential: x decay_factor every decay_epochs, counted from step 0
  lr.min                  LR floor per 256 examples (scaled like lr.base); 0 = none
  weight_decay            coupled L2 wd*sum(w^2)/2 on kernels only (official 1e-5); decoupled for adamw
  grad_clip               0 = off; else clip each gradient by its norm, then all by their global norm
  label_smoothing         TF1 smoothing y*(1-ls) + ls/K (official 0.1)
  loss                    'softmax' (multi-hot labels normalised to sum 1) or 'sigmoid' (21k option)
  ema_decay               TF EMA of params and BN statistics, decay min(ema_decay, (1+t)/(10+t)); 0 = off
  eval_with_ema           evaluate (and pick the best checkpoint) with the EMA weights, as the official code
  eval_image_size         eval resolution; 0 = the variant's official eval size (fixed across stages)
  progressive.num_stages  M stages of Algorithm 1 (official 4; 1 = no progressive learning)
  progressive.recipe      'official' (automl code) or 'paper' (Table 6 ranges, also schedules dropout)
  progressive.base_image_size   official `ibase`: size ramps from it (128; 0 = train size / 2)
  progressive.train_image_size  final train size; 0 = the variant's official train size
  progressive.randaug_magnitude, progressive.mixup_alpha, progressive.cutmix_alpha   final values reached by
                          the ramps; -1 = the variant's (cutmix alpha = mixup alpha, as in the official code)
  shard_state             'replicated' (official) or 'data': optimizer slots, EMA and BN statistics split over the
                          devices (ZeRO-1; train/sharding.py); checkpoints restore across both and device counts
  checkpoint_every_steps  asynchronous checkpoint interval (also at each stage end, on SIGTERM and at the end)
  keep_checkpoints        how many of the latest checkpoints to keep
  keep_best_checkpoints   how many best-by-eval-top-1 checkpoints to keep in addition
  eval_every_steps        eval interval at the eval size (official: every checkpoint, 1000); 0 = only at the end
  log_every_steps         metric-writer / progress-line interval
  init_from               a checkpoint dir (a training workdir or a converter output) to start from; the
                          classifier is re-initialised when its class count differs
  compilation_cache_dir   persistent XLA compilation cache ('' = <workdir>/../jax_compilation_cache)
  xla_cpu_scheduler       on the CPU backend: 'memory_optimized' (ours: one op at a time on all threads, an S
                          step 1.2-1.35x faster on 2 vCPUs) or 'xla_default' (XLA's concurrency-optimised order, or
                          what XLA_FLAGS says); no effect on TPU/GPU and never on the numerics
"""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, default_model: str, *, with_dataset: bool = False) -> tuple[str, str | None]:
    """The config-file argument: 's' -> ('s', None); with_dataset: 's,cifar10' -> ('s', 'cifar10')."""
    parts = [p.strip() for p in (arg or default_model).split(",")]
    expected = "'<model>' or '<model>,<dataset>'" if with_dataset else "'<model>'"
    if len(parts) > (2 if with_dataset else 1) or not all(parts):
        raise ValueError(f"Config argument {arg!r} should be {expected}, e.g. 's'.")
    return parts[0], (parts[1] if len(parts) == 2 else None)


def base_config(model: str, dataset: str) -> ml_collections.ConfigDict:
    """The official ImageNet-1k from-scratch recipe for `model` (google/automl hparams + ImageNet config)."""
    from efficientnetv2_jax.models import get_variant  # Unknown variants fail here with the valid names.

    variant = get_variant(model)
    v1_style = variant.augment == "autoaug"
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(dict(
        name=variant.name, dtype="auto", remat=False, conv_impl="auto", bn_replica_group=8,
        drop_connect_rate=0.2, dropout_rate=-1.0, width=0.0, depth=0.0))
    c.dataset = ml_collections.ConfigDict(dict(
        name=dataset, data_dir="", train_split="train", eval_split="eval", augment=variant.augment,
        crop_area_range=(0.08, 1.0) if v1_style else (0.05, 1.0), random_flip=True,
        eval_crop_rule="v1" if v1_style else "v2", jpeg_downscale=False, normalization=variant.normalization,
        download=False))
    c.batch_size = 4096
    c.eval_batch_size = 1024
    c.total_epochs = 350.0
    c.total_steps = 0
    c.min_steps = 0
    c.seed = 0
    c.optimizer = ml_collections.ConfigDict(dict(name="rmsprop", decay=0.9, momentum=0.9, eps=1e-3))
    c.lr = ml_collections.ConfigDict(dict(base=0.016, schedule="exponential", warmup_epochs=5.0, decay_epochs=2.4,
                                          decay_factor=0.97, min=0.0))
    c.weight_decay = 1e-5
    c.grad_clip = 0.0
    c.label_smoothing = 0.1
    c.loss = "softmax"
    c.ema_decay = 0.9999
    c.eval_with_ema = True
    c.eval_image_size = 0
    c.progressive = ml_collections.ConfigDict(dict(
        num_stages=4, recipe="official", base_image_size=128, train_image_size=0, randaug_magnitude=-1.0,
        mixup_alpha=-1.0, cutmix_alpha=-1.0))
    c.shard_state = "replicated"
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.keep_best_checkpoints = 1
    c.eval_every_steps = 1000  # The official recipe evaluates every checkpoint (saved every 1000 steps).
    c.log_every_steps = 100
    c.init_from = ""
    c.compilation_cache_dir = ""
    c.xla_cpu_scheduler = "memory_optimized"
    return c
