"""Tiny smoke config for tests: a 32-unit biprop MLP on the embedded digits, 2 short epochs.

    python -m mpt_jax.main --config=configs/smoke.py --workdir=/tmp/mpt_smoke

Takes a few seconds on one CPU core; no accuracy claim.
"""
from mpt_jax import config_utils


def get_config():
    config = config_utils.base_config()
    config.dataset = "digits"
    config.model = "mlp"
    config.model_options.hidden = (32,)
    config.keep_fraction = 0.5
    config.batch_size = 64
    config.eval_batch_size = 64
    config.num_epochs = 2
    config.learning_rate = 0.1
    config.log_every_steps = 5
    config.progress_bar = False
    return config
