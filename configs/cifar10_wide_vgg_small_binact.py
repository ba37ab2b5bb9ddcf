"""VGG-Small 1.25x MPT-1/1 (Wide_VGG_Small, width_mult 10) on CIFAR-10.

    python -m mpt_jax.main --config=configs/cifar10_wide_vgg_small_binact.py --workdir=runs/cifar10_wide_vgg_small_binact

Reference wide10_vgg_small_BinAct_kn_unsigned.yml: Adam 0.1, batch 128, cosine, 100 epochs,
keep_fraction 0.25 (75 % pruned), Kaiming normal + scale_fan, non-affine BN.
Expected: 89.11 % (README) / 88.49 % (paper). "+BN" (--config.learn_batchnorm=True) switches to
the affine file's Adam 2e-4: expected 91.9 %.
Held-out split (45,000 train / 5,000 held-out, the shared archive has no test split), the
baselines (--config.mode=dense | edgepopup | binary_trained) and "+BN"
(--config.learn_batchnorm=True): configs/common.py and docs/data.md#cifar-10-in-this-project.
"""
from configs import common


def get_config():
    config = common.cifar10_adam_config("wide_vgg_small_binact", learning_rate=0.1)
    config.keep_fraction = 0.25
    config.model_options.width_mult = 10.0
    config.learn_batchnorm_hparams.learning_rate = 2e-4
    return config
