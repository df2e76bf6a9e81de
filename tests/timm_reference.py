"""Run as a subprocess (torch crashes beside TensorFlow): a randomised timm tf_efficientnetv2 model in eval mode.

    python tests/timm_reference.py MODEL OUTDIR     # e.g. b0 /tmp/case

Writes OUTDIR/weights.safetensors, OUTDIR/images.npy (NHWC, two batches) and OUTDIR/logits.npy. BN statistics
are set by one training-mode pass (momentum 1) on the images, gamma/beta and biases are random, so the logits
depend clearly on the input.
"""

import sys

import numpy as np
import timm
import torch
from safetensors.torch import save_file

NUM_CLASSES = 10


def main(short: str, outdir: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(f"tf_efficientnetv2_{short}", num_classes=NUM_CLASSES)
    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (2, 4, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.momentum = 1.0
            elif getattr(module, "bias", None) is not None:
                module.bias.normal_(0, 0.2)
        model.train()
        model(torch.from_numpy(images.reshape(-1, 64, 64, 3)).permute(0, 3, 1, 2))
        model.eval()
        logits = np.stack([model(torch.from_numpy(batch).permute(0, 3, 1, 2)).numpy() for batch in images])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{outdir}/weights.safetensors")
    np.save(f"{outdir}/images.npy", images)
    np.save(f"{outdir}/logits.npy", logits)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
