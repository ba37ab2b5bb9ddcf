"""Conv-8 width sweep, MPT-1/32: configs/cifar10_conv.py:depth=8,scale_fan=none by name.

    python -m mpt_jax.main --config=configs/cifar10_conv8_wide.py --workdir=runs/cifar10_conv8_wide
    python -m mpt_jax.main --config=configs/cifar10_conv.py:depth=8,scale_fan=none  # the same

The reference's width-sweep files (conv8wide*_ukn_unsigned.yml): Kaiming normal without fan
scaling. Widths 0.5 / 1 / 1.5 / 2: --config.model_options.width_mult=1.5 (or the parameter
width=1.5 of configs/cifar10_conv.py); MPT-1/1: configs/cifar10_conv.py:depth=8,binact,
scale_fan=none. Paper: figure curves only (accuracy against width), no single number.
"""
from configs import cifar10_conv


def get_config():
    return cifar10_conv.get_config("depth=8,scale_fan=none")
