"""Conv-6 MPT-1/1 (binary activations) on CIFAR-10 (configs/cifar10_conv.py:depth=6,binact).

    python -m mpt_jax.main --config=configs/cifar10_conv6_binact.py --workdir=runs/cifar10_conv6_binact
    python -m mpt_jax.main --config=configs/cifar10_conv.py:depth=6,binact     # the same config

The reference's conv6_BinAct_kn_unsigned.yml: Adam 0.1 (no weight decay), batch 128,
cosine, 100 epochs, keep_fraction 0.5 (sweep --config.keep_fraction over 0.8, 0.6, 0.5, 0.4,
0.2, 0.1). Paper: figure curves only (accuracy against the fraction pruned), no single
number. 2,261,184 scores. The family's parameters and recipe: configs/cifar10_conv.py.
"""
from configs import cifar10_conv


def get_config():
    return cifar10_conv.get_config("depth=6,binact")
