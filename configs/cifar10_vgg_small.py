"""VGG-Small MPT-1/32, 95 % pruned, on CIFAR-10 (the reference's vgg_small_kn_unsigned.yml).

    python -m mpt_jax.main --config=configs/cifar10_vgg_small.py --workdir=runs/cifar10_vgg_small

Paper / README: 91.48 % (CIFAR-10 test). Adam 0.1 as in the file (no weight decay), batch
128, cosine, 100 epochs, keep_fraction 0.05, Kaiming normal + scale_fan, non-affine BN.
Held-out split (45,000 train / 5,000 held-out, the shared archive has no test split), the
baselines (--config.mode=dense | edgepopup | binary_trained) and "+BN"
(--config.learn_batchnorm=True): configs/common.py and docs/data.md#cifar-10-in-this-project.
"""
from configs import common


def get_config():
    config = common.cifar10_adam_config("vgg_small", learning_rate=0.1)
    config.keep_fraction = 0.05
    return config
