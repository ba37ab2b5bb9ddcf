"""Conv-6 MPT-1/1 (binary activations) on CIFAR-10 (SPEC 5.2, 6.8; conv6_BinAct_kn_unsigned.yml).

    python -m mpt_jax.main --config=configs/cifar10_conv6_binact.py --workdir=runs/cifar10_conv6_binact

Sweep keep_fraction over 0.8, 0.6, 0.5, 0.4, 0.2, 0.1 (--config.keep_fraction=...).
Paper: figure curves only. Adam 0.1 (the reference's Adam has no weight decay), batch 128,
cosine, 100 epochs, Kaiming normal + scale_fan, non-affine BN.
Eval split: 500 images per class held out of the shared training archive (45,000 train /
5,000 held-out; the CIFAR-10 test split is not available here), so numbers are
comparable to, not identical with, the paper's test-set numbers.
Baselines: --config.mode=dense | edgepopup | binary_trained (their SPEC 6.8
hyperparameters are applied unless overridden); "+BN": --config.learn_batchnorm=True.
"""
from mpt_jax import config_utils


def get_config():
    config = config_utils.cifar10_adam_config("conv6_binact", learning_rate=0.1)
    config.keep_fraction = 0.5
    config.model_options.width_mult = 1.0
    return config
