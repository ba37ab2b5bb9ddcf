"""Presets the experiment configs of this directory start from.

    from configs import common
    config = common.cifar10_config("resnet18_cifar")   # then change what the experiment needs

Configs that import this module load as ``--config=configs/<name>.py`` from the repository
root (the directory Python puts on its path for ``python -m``); ``default.py`` and ``smoke.py``
start from ``config_utils.base_config()`` instead, so the embedded default loads from anywhere.
Every field, its default and its meaning: ``mpt_jax/config_fields.py`` (or ``--help``).
"""
import ml_collections

from mpt_jax import config_utils

# The shared CIFAR-10 training archive (JPEG image folder, no test split), relative to the
# repository root.
CIFAR10_ARCHIVE = "../shared/data/cifar10_train_jpeg.tar.gz"


def cifar10_config(model: str) -> ml_collections.ConfigDict:
    """The reference's CIFAR-10 biprop recipe: SGD 0.1, momentum 0.9, weight decay 1e-4,
    batch 128, cosine, no warmup, 100 epochs, Kaiming normal with the reference's fan scaling,
    BatchNorm without scale and shift. Data: the shared archive through the in-memory pipeline
    (no TensorFlow), with the last 500 images of every class held out for evaluation (45,000
    train / 5,000 held-out). Baselines: dense and binary_trained train from a plain Kaiming init
    with SGD 0.01; edge-popup keeps the biprop recipe with signed-constant weights (the
    paper's appendix E)."""
    c = config_utils.base_config()
    c.model = model
    c.dataset = "cifar10"
    c.data_dir = CIFAR10_ARCHIVE
    c.input_pipeline = "in_memory"
    c.holdout_per_class = 500
    c.augment = True
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.num_epochs = 100
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.schedule = "cosine"
    c.warmup_epochs = 0
    c.weight_init = "kaiming_normal"
    c.scale_fan = "reference"
    c.log_every_steps = 50
    sgd_baseline = dict(optimizer="sgd", learning_rate=0.01, momentum=0.9, weight_decay=1e-4,
                        schedule="cosine", scale_fan="none")
    c.baseline_hparams.dense = dict(sgd_baseline)
    c.baseline_hparams.binary_trained = dict(sgd_baseline)
    c.baseline_hparams.edgepopup = dict(weight_init="signed_constant")
    return c


def cifar10_resnet18_config(model: str) -> ml_collections.ConfigDict:
    """The CIFAR-10 recipe as the reference's ResNet-18 files change it: batch 256, weight
    decay 5e-4, and the dense and binary_trained baselines at SGD 0.1 with the same decay."""
    c = cifar10_config(model)
    c.weight_decay = 5e-4
    c.batch_size = 256
    for baseline in ("dense", "binary_trained"):
        c.baseline_hparams[baseline].learning_rate = 0.1
        c.baseline_hparams[baseline].weight_decay = 5e-4
    return c


def cifar10_adam_config(model: str, learning_rate: float = 0.1) -> ml_collections.ConfigDict:
    """The CIFAR-10 recipe with Adam at ``learning_rate`` (the reference's MPT-1/1 and
    VGG-Small files; its Adam has no weight decay); the dense and binary_trained baselines
    use Adam 3e-4 at a constant learning rate."""
    c = cifar10_config(model)
    c.optimizer = "adam"
    c.learning_rate = learning_rate
    adam_baseline = dict(optimizer="adam", learning_rate=3e-4, schedule="constant",
                         scale_fan="none")
    c.baseline_hparams.dense = dict(adam_baseline)
    c.baseline_hparams.binary_trained = dict(adam_baseline)
    return c


def imagenet_config(model: str) -> ml_collections.ConfigDict:
    """The reference's ImageNet recipe (NVIDIA's ResNet-50 one): SGD 0.256, momentum 0.875,
    weight decay 2^-15, batch 256, cosine with 5 warmup epochs, label smoothing 0.1, 100
    epochs; tensorflow-datasets imagenet2012 (the manual download in data_dir). The dense and
    binary_trained baselines use the same recipe from a plain Kaiming init."""
    c = config_utils.base_config()
    c.model = model
    c.dataset = "imagenet2012"
    c.data_dir = "~/tensorflow_datasets"
    c.input_pipeline = "tfds"
    c.batch_size = 256
    c.eval_batch_size = 256
    c.num_epochs = 100
    c.optimizer = "sgd"
    c.learning_rate = 0.256
    c.momentum = 0.875
    c.weight_decay = 2.0 ** -15  # 3.0517578125e-5
    c.schedule = "cosine"
    c.warmup_epochs = 5
    c.label_smoothing = 0.1
    c.log_every_steps = 100
    dense = dict(optimizer="sgd", learning_rate=0.256, momentum=0.875, weight_decay=2.0 ** -15,
                 schedule="cosine", warmup_epochs=5, weight_init="kaiming_normal",
                 scale_fan="none")
    c.baseline_hparams.dense = dict(dense)
    c.baseline_hparams.binary_trained = dict(dense)
    return c
