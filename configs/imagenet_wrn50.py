"""WRN-50-2 MPT-1/32, 80 % pruned, on ImageNet (wideresnet50-usc-unsigned.yaml).

    python -m mpt_jax.main --config=configs/imagenet_wrn50.py --workdir=runs/imagenet_wrn50 \
        --config.data_dir=/path/to/tensorflow_datasets

Expected 72.67 % top-1 (ImageNet val); "+BN" (--config.learn_batchnorm=True,
wideresnet50-affine-usc-unsigned.yaml): 74.03 %. SGD 0.256, momentum 0.875, wd 2^-15, batch 256,
cosine with 5 warmup epochs, label smoothing 0.1, 100 epochs (the paper's Table 7 says 120:
--config.num_epochs=120), keep_fraction 0.2, signed-constant init without fan scaling,
non-affine BN. Data: tfds imagenet2012 with the manual download in data_dir.
Baselines: --config.mode=dense | edgepopup | binary_trained.
"""
from configs import common


def get_config():
    config = common.imagenet_config("wrn50_2")
    config.keep_fraction = 0.2
    config.weight_init = "signed_constant"
    config.scale_fan = "none"
    return config
