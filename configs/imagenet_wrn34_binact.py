"""WRN-34-2 MPT-1/1, 60 % pruned, on ImageNet (the reference's wideresnet34_2-BinAct-*.yaml).

    python -m mpt_jax.main --config=configs/imagenet_wrn34_binact.py \
        --workdir=runs/imagenet_wrn34_binact --config.data_dir=/path/to/tensorflow_datasets

Expected 45.06 % top-1 (ImageNet val); "+BN" (--config.learn_batchnorm=True): 52.07 %.
The paper's values (its Table 7 and appendix A.2; the reference's files differ, see below):
Adam 2.56e-4 (no weight decay), cosine with 5 warmup epochs, 250 epochs, batch 256, label
smoothing 0.1, keep_fraction 0.4, Kaiming normal + the reference's fan scaling, non-affine
BN. The reference's config files' values stay reachable:
--config.learning_rate=0.256 --config.num_epochs=100 (wideresnet34_2-BinAct-kn-unsigned)
or --config.learning_rate=2e-4 --config.schedule=constant --config.warmup_epochs=0
--config.num_epochs=120 (wideresnet34_2-BinAct-Adam).
"""
from configs import common


def get_config():
    config = common.imagenet_config("wrn34_2_binact")
    config.keep_fraction = 0.4
    config.optimizer = "adam"
    config.learning_rate = 2.56e-4
    config.num_epochs = 250
    config.weight_init = "kaiming_normal"
    config.scale_fan = "reference"
    config.model_options.widen_factor = 2.0
    return config
