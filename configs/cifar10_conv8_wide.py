"""Conv-8 width sweep base, MPT-1/32 (SPEC 6.10 "Width sweep"; conv8wide_*_ukn_unsigned.yml).

    python -m mpt_jax.main --config=configs/cifar10_conv8_wide.py --workdir=runs/cifar10_conv8_wide

Widths 0.5 / 1 / 1.5 / 2: --config.model_options.width_mult=1.5; MPT-1/1 form:
--config.model=conv8_binact --config.optimizer=adam. Paper: figures only. Kaiming normal
without fan scaling ("ukn").
Eval split: 500 images per class held out of the shared training archive (45,000 train /
5,000 held-out; the CIFAR-10 test split is not available here), so numbers are
comparable to, not identical with, the paper's test-set numbers.
Baselines: --config.mode=dense | edgepopup | binary_trained (their SPEC 6.8
hyperparameters are applied unless overridden); "+BN": --config.learn_batchnorm=True.
"""
from mpt_jax import config_utils


def get_config():
    config = config_utils.cifar10_config("conv8")
    config.keep_fraction = 0.5
    config.scale_fan = "none"
    config.model_options.width_mult = 1.0
    return config
