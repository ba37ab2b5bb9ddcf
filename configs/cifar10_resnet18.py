"""ResNet-18 MPT-1/32, 80 % pruned, on CIFAR-10 (the reference's resnet18-kn-unsigned.yaml).

    python -m mpt_jax.main --config=configs/cifar10_resnet18.py --workdir=runs/cifar10_resnet18

Expected 94.66 % (paper); "+BN" (--config.learn_batchnorm=True, resnet18-affine-kn-unsigned.yaml):
94.8 %. SGD 0.1, momentum 0.9, wd 5e-4, batch 256, cosine, 100 epochs, keep_fraction 0.2,
Kaiming normal + scale_fan. Dense baseline (resnet18-dense.yaml): SGD 0.1, wd 5e-4.
Held-out split (45,000 train / 5,000 held-out, the shared archive has no test split), the
baselines (--config.mode=dense | edgepopup | binary_trained) and "+BN"
(--config.learn_batchnorm=True): configs/common.py and docs/data.md#cifar-10-in-this-project.
"""
from configs import common


def get_config():
    config = common.cifar10_resnet18_config("resnet18_cifar")
    config.keep_fraction = 0.2
    return config
