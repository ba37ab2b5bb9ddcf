"""Command line: ``python -m mpt_jax.main --config=configs/<name>.py [--workdir=DIR]``.

``--config.<field>=<value>`` overrides any config field (``--help`` lists them with their
values for the given config); rerunning with the same workdir resumes
(a finished run prints its stored result at once). User errors (bad config, data or workdir)
print ``error: <one line>`` to stderr and exit with status 2, without a traceback. Exit
codes: 0 done; 2 bad input; 3 non-finite loss / gradients (the last good checkpoint is
kept); 4 a checkpoint could not be written; 143 / 130 stopped by SIGTERM / Ctrl-C after a
checkpoint was written (a plain "stopped by ..." line, not an error, holding the command
that resumes the run).
"""
from __future__ import annotations

import os
import signal
import sys
import threading

from absl import flags
from ml_collections import config_flags

from mpt_jax import cli, config_utils
from mpt_jax.errors import Interrupted, UserError, one_line

FLAGS = flags.FLAGS


def _fail(message: object, code: int = 2) -> int:
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    return code


class _Terminated(BaseException):
    """SIGTERM before the training loop (which has its own handler) started."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def run(argv: list[str], hooks=None) -> int:
    """Runs the command line ``argv``; returns the exit code. ``hooks``: test-only fault
    injection passed on to ``loop.train_and_evaluate`` (tests/fault_driver.py)."""
    wants_help = any(a in cli.HELP_FLAGS for a in argv[1:])
    try:
        cli.define_main_flags(FLAGS)
        cli.parse_command_line(FLAGS, [a for a in argv if a not in cli.HELP_FLAGS],
                               config_default=cli.default_config_path())
        config = FLAGS.config
        config.keys()  # a config file that failed to load raises here
    except (flags.Error, OSError, AttributeError, KeyError, ValueError, TypeError,
            ImportError) as e:  # ImportError: a config file's own import failed
        return _fail(cli.flag_error_message(e, argv))
    if wants_help:
        cli.print_help(cli.help_text(FLAGS, config))
        return 0
    # Imported here: JAX starts when these load, and only after the flags were parsed.
    from mpt_jax import compilation, loop, parallel  # noqa: PLC0415

    workdir = FLAGS.workdir or cli.default_workdir(config_flags.get_config_filename(
        FLAGS["config"]))
    resume = cli.resume_command(argv, workdir)
    old_term = signal.signal(signal.SIGTERM, _on_sigterm) if (
        threading.current_thread() is threading.main_thread()) else None
    try:
        parallel.maybe_initialize_distributed(FLAGS.multihost)
        overridden = config_flags.get_override_values(FLAGS["config"])
        config = config_utils.resolve(config, overridden)
        config_utils.validate(config)  # before any data or model is touched
        compilation.enable_compilation_cache(config)
        loop.train_and_evaluate(config, workdir, hooks=hooks)
    except Interrupted as e:  # asked for by the user: said plainly, not as an error
        print(one_line(e.resume_with(resume)), file=sys.stderr, flush=True)
        return e.exit_code
    except UserError as e:
        return _fail(e, e.exit_code)
    except (KeyboardInterrupt, _Terminated) as e:
        name, code = ("SIGTERM", 143) if isinstance(e, _Terminated) else ("Ctrl-C", 130)
        print(f"stopped by {name} before a checkpoint could be written (or by a second "
              f"signal); the last complete checkpoint in {workdir} (if any) is intact; "
              f"resume with: {resume}", file=sys.stderr, flush=True)
        return code
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return 0


def main() -> None:
    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()
