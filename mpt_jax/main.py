"""Command line: ``python -m mpt_jax.main --config=configs/<name>.py [--workdir=DIR]``.

``--config.<field>=<value>`` overrides any config field (``--help`` lists them with their
values for the given config); rerunning with the same workdir resumes
(a finished run prints its stored result at once). User errors (bad config, data or workdir)
print ``error: <one line>`` to stderr and exit with status 2, without a traceback. Exit codes
(issue 4): 0 done; 2 bad input; 3 non-finite loss / gradients (the last good checkpoint is
kept); 4 a checkpoint could not be written; 143 / 130 stopped by SIGTERM / Ctrl-C after a
checkpoint was written (the message holds the command that resumes the run).
"""
from __future__ import annotations

import os
import signal
import sys

from absl import flags
from ml_collections import config_flags

from mpt_jax import cli, config_utils
from mpt_jax.errors import Interrupted, UserError, one_line

FLAGS = flags.FLAGS


def _default_config() -> str:
    default = "configs/default.py"  # the embedded default, also when run outside the repo
    if not os.path.exists(default):
        default = os.path.join(os.path.dirname(os.path.dirname(__file__)), default)
    return default


def _define_flags() -> None:
    # Defined inside run(): config_flags reads --config.* overrides while the flag is defined,
    # and a bad override must become a one-line error, not an import-time traceback.
    if "config" in FLAGS:
        return
    config_flags.DEFINE_config_file(
        "config", _default_config(), "Experiment config file (configs/*.py); fields can be "
        "overridden with --config.<field>=<value>.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics.jsonl, "
                        "tensorboard/); default runs/<config file stem>.")
    flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (also triggered "
                      "by JAX_COORDINATOR_ADDRESS in the environment).")


def _fail(message: object, code: int = 2) -> int:
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    return code


class _Terminated(BaseException):
    """SIGTERM before the training loop (which has its own handler) started."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def run(argv: list[str]) -> int:
    wants_help = any(a in cli.HELP_FLAGS for a in argv[1:])
    try:
        _define_flags()
        cli.parse_command_line(FLAGS, [a for a in argv if a not in cli.HELP_FLAGS],
                               config_default=_default_config())
        config = FLAGS.config
        config.keys()  # a config file that failed to load raises here
    except (flags.Error, OSError, AttributeError, KeyError, ValueError, TypeError) as e:
        return _fail(cli.flag_error_message(e, argv))
    if wants_help:
        cli.print_help(cli.help_text(FLAGS, config, _default_config()))
        return 0
    from mpt_jax import parallel, train  # noqa: PLC0415  (jax starts after flag parsing)

    config_file = config_flags.get_config_filename(FLAGS["config"]).split(":")[0]
    workdir = FLAGS.workdir or os.path.join(
        "runs", os.path.splitext(os.path.basename(config_file))[0])
    resume = cli.resume_command(argv, workdir)
    old_term = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        parallel.maybe_initialize_distributed(FLAGS.multihost)
        overridden = config_flags.get_override_values(FLAGS["config"])
        config = config_utils.resolve(config, overridden)
        config_utils.validate(config)  # before any data or model is touched
        train.enable_compilation_cache(config)
        train.train_and_evaluate(config, workdir)
    except Interrupted as e:
        return _fail(f"{e}: {resume}", e.exit_code)
    except UserError as e:
        return _fail(e, e.exit_code)
    except (KeyboardInterrupt, _Terminated) as e:
        name, code = ("SIGTERM", 143) if isinstance(e, _Terminated) else ("interrupt", 130)
        return _fail(f"stopped by {name} before a checkpoint could be written (or by a second "
                     f"signal); the last complete checkpoint in {workdir} (if any) is intact; "
                     f"resume with: {resume}", code)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return 0


def _main_thread() -> bool:
    import threading  # noqa: PLC0415
    return threading.current_thread() is threading.main_thread()


def main() -> None:
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()
