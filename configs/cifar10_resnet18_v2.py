"""ResNet-18 v2 MPT-1/32 on CIFAR-10 (the reference's resnet18_v2-affine-kn-unsigned.yaml).

    python -m mpt_jax.main --config=configs/cifar10_resnet18_v2.py --workdir=runs/cifar10_resnet18_v2

cResNet18_v2: the second BatchNorm of every BasicBlock moved after the residual add
(models/resnet_v2.py). Reference file: SGD 0.1, momentum 0.9, wd 5e-4, batch 256, cosine,
100 epochs, keep_fraction 0.3, Kaiming normal + scale_fan, AffineBatchNorm (gamma/beta exist
but stay at 1/0 unless --config.learn_batchnorm=True, as the reference).
No reported number for the v2 model; for comparison, the v1 ResNet-18 MPT-1/32 reached
94.66 % (paper, keep_fraction 0.2, configs/cifar10_resnet18.py).
Held-out split (45,000 train / 5,000 held-out, the shared archive has no test split), the
baselines (--config.mode=dense | edgepopup | binary_trained) and "+BN"
(--config.learn_batchnorm=True): configs/common.py and docs/data.md#cifar-10-in-this-project.
"""
from configs import common


def get_config():
    config = common.cifar10_resnet18_config("resnet18_cifar_v2")
    config.keep_fraction = 0.3
    config.bn_affine = True
    return config
