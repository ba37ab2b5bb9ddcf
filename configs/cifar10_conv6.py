"""Conv-6 MPT-1/32 on CIFAR-10 (SPEC 5.1, 6.8; reference conv6_kn_unsigned.yml).

    python -m mpt_jax.main --config=configs/cifar10_conv6.py --workdir=runs/cifar10_conv6

Sweep keep_fraction over 0.8, 0.6, 0.5, 0.4, 0.2, 0.1 (--config.keep_fraction=...).
Paper: figure curves only (no single headline number). 2,261,184 scores.
SGD 0.1, momentum 0.9, wd 1e-4, batch 128, cosine, 100 epochs, Kaiming normal + scale_fan.
Eval split: 500 images per class held out of the shared training archive (45,000 train /
5,000 held-out; the CIFAR-10 test split is not available here), so numbers are
comparable to, not identical with, the paper's test-set numbers.
Baselines: --config.mode=dense | edgepopup | binary_trained (their SPEC 6.8
hyperparameters are applied unless overridden); "+BN": --config.learn_batchnorm=True.
"""
from mpt_jax import config_utils


def get_config():
    config = config_utils.cifar10_config("conv6")
    config.keep_fraction = 0.5
    config.model_options.width_mult = 1.0
    return config
