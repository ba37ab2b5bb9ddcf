"""Conv-6 MPT-1/32 on CIFAR-10 (configs/cifar10_conv.py:depth=6).

    python -m mpt_jax.main --config=configs/cifar10_conv6.py --workdir=runs/cifar10_conv6
    python -m mpt_jax.main --config=configs/cifar10_conv.py:depth=6     # the same config

The reference's conv6_kn_unsigned.yml: SGD 0.1, momentum 0.9, weight decay 1e-4, batch 128,
cosine, 100 epochs, keep_fraction 0.5 (sweep --config.keep_fraction over 0.8, 0.6, 0.5, 0.4,
0.2, 0.1). Paper: figure curves only (accuracy against the fraction pruned), no single
number. 2,261,184 scores. The family's parameters and recipe: configs/cifar10_conv.py.
"""
from configs import cifar10_conv


def get_config():
    return cifar10_conv.get_config("depth=6")
