"""Small CIFAR ResNet depth sweep base, MPT-1/32 (the reference's
resnet{20,32,44,56,110}-ukn-unsigned.yaml).

    python -m mpt_jax.main --config=configs/cifar10_resnet20.py --workdir=runs/cifar10_resnet20

Depths 20/32/44/56/110: --config.model=resnet56_cifar (MPT-1/1: resnet56_cifar_binact with
--config.optimizer=adam). Paper: figures only. SGD 0.1, wd 5e-4, batch 256, cosine, 100
epochs, Kaiming normal without fan scaling ("ukn"); global average pooling head.
Held-out split (45,000 train / 5,000 held-out, the shared archive has no test split), the
baselines (--config.mode=dense | edgepopup | binary_trained) and "+BN"
(--config.learn_batchnorm=True): configs/common.py and docs/data.md#cifar-10-in-this-project.
"""
from configs import common


def get_config():
    config = common.cifar10_config("resnet20_cifar")
    config.keep_fraction = 0.5
    config.scale_fan = "none"
    config.weight_decay = 5e-4
    config.batch_size = 256
    return config
