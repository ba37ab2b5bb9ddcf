"""Command line: ``python -m mpt_jax.main --config=configs/<name>.py [--workdir=DIR]``.

``--config.<field>=<value>`` overrides any config field; rerunning with the same workdir resumes
(a finished run prints its stored result at once). User errors (bad config, data or workdir)
print ``error: <one line>`` to stderr and exit with status 2, without a traceback.
"""
from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags

from mpt_jax import config_utils
from mpt_jax.errors import UserError, one_line

FLAGS = flags.FLAGS


def _define_flags() -> None:
    # Defined inside run(): config_flags reads --config.* overrides while the flag is defined,
    # and a bad override must become a one-line error, not an import-time traceback.
    if "config" in FLAGS:
        return
    default = "configs/default.py"  # the embedded default, also when run outside the repo
    if not os.path.exists(default):
        default = os.path.join(os.path.dirname(os.path.dirname(__file__)), default)
    config_flags.DEFINE_config_file(
        "config", default, "Experiment config file (configs/*.py); fields can be overridden "
        "with --config.<field>=<value>.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics.jsonl, "
                        "tensorboard/); default runs/<config file stem>.")
    flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (also triggered "
                      "by JAX_COORDINATOR_ADDRESS in the environment).")


def _user_error_types() -> tuple:
    from mpt_jax.data.errors import DataError  # noqa: PLC0415  (data's own ValueError class)
    return UserError, DataError


def _fail(message: object, code: int = 2) -> int:
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    return code


def run(argv: list[str]) -> int:
    try:
        _define_flags()
        FLAGS(argv)
        config = FLAGS.config
        config.keys()  # a config file that failed to load raises here
    except (flags.Error, OSError, AttributeError, KeyError, ValueError, TypeError) as e:
        return _fail(config_utils.flag_error_message(e, argv))
    from mpt_jax import parallel, train  # noqa: PLC0415  (jax starts after flag parsing)

    config_file = config_flags.get_config_filename(FLAGS["config"]).split(":")[0]
    workdir = FLAGS.workdir or os.path.join(
        "runs", os.path.splitext(os.path.basename(config_file))[0])
    try:
        parallel.maybe_initialize_distributed(FLAGS.multihost)
        overridden = config_flags.get_override_values(FLAGS["config"])
        config = config_utils.resolve(config, overridden)
        config_utils.validate(config)  # before any data or model is touched
        train.train_and_evaluate(config, workdir)
    except _user_error_types() as e:
        return _fail(e, getattr(e, "exit_code", 2))
    except KeyboardInterrupt:
        return _fail("interrupted; run the same command again to resume from the last "
                     "checkpoint", 130)
    return 0


def main() -> None:
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()
