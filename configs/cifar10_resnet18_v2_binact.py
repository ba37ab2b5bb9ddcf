"""ResNet-18 v2 MPT-1/1 (binary activations) on CIFAR-10 (the reference's
resnet18_v2-affine-BinAct-kn-unsigned.yaml).

    python -m mpt_jax.main --config=configs/cifar10_resnet18_v2_binact.py --workdir=runs/cifar10_resnet18_v2_binact

cResNet18_BinAct_v2: sign activations, the second BatchNorm of every BasicBlock moved after
the residual add (models/resnet_v2.py). Reference file: Adam 0.1 (the reference's Adam has no
weight decay), batch 256, cosine, 100 epochs, keep_fraction 0.3, Kaiming normal + scale_fan,
AffineBatchNorm (gamma/beta exist but stay at 1/0 unless --config.learn_batchnorm=True,
as the reference).
No reported number for this model; the closest reported CIFAR-10 ResNet-18 result is the
v1 MPT-1/32 (ReLU) 94.66 % (paper, configs/cifar10_resnet18.py).
Held-out split (45,000 train / 5,000 held-out, the shared archive has no test split), the
baselines (--config.mode=dense | edgepopup | binary_trained) and "+BN"
(--config.learn_batchnorm=True): configs/common.py and docs/data.md#cifar-10-in-this-project.
"""
from configs import common


def get_config():
    config = common.cifar10_adam_config("resnet18_cifar_v2_binact", learning_rate=0.1)
    config.keep_fraction = 0.3
    config.bn_affine = True
    config.batch_size = 256
    return config
