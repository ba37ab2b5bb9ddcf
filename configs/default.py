"""Embedded default: biprop MLP on scikit-learn's 8x8 digits (no data files, no network).

    python -m mpt_jax.main --config=configs/default.py --workdir=runs/default

Runs in about 10-15 s on 2 shared CPU cores. Held-out split: the last 20 % of every digit
class (359 images). Measured (seed 0, CPU, float32): final held-out accuracy 93.3 % top-1
(best 93.6 %), for a binary, 50 %-pruned subnetwork of a random 64-256-256-10 MLP of which
only the scores were trained. There is no paper number for it (chance is 10 %).
"""
from mpt_jax import config_utils


def get_config():
    config = config_utils.base_config()
    config.dataset = "digits"
    config.model = "mlp"
    config.model_options.hidden = (256, 256)
    config.mode = "biprop"
    config.keep_fraction = 0.5
    config.scale_fan = "none"
    config.batch_size = 32
    config.eval_batch_size = 32
    config.num_epochs = 10
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.momentum = 0.9
    config.weight_decay = 1e-4
    config.schedule = "cosine"
    config.log_every_steps = 10
    config.baseline_hparams.dense = dict(learning_rate=0.01)
    config.baseline_hparams.binary_trained = dict(learning_rate=0.01)
    return config
