"""Command-line plumbing shared by ``python -m mpt_jax.main`` and ``python -m mpt_jax.ticket``:
parsing a fresh command line (also in a notebook that calls them twice), one-line flag
errors, ``--help`` with every config field, and the command that resumes a stopped run."""
from __future__ import annotations

import difflib
import os
import re
import shlex
import sys

from mpt_jax import config_fields
from mpt_jax.errors import one_line


def resume_command(argv: list[str], workdir: str) -> str:
    """The command that resumes this run: the same arguments without ``restart`` (rerunning
    with --config.restart=True would discard the checkpoint that was just written), with the
    workdir made absolute so that it works from any directory."""
    args, skip = [], False
    for a in argv[1:]:
        name = a.split("=")[0]
        if skip or name in ("--config.restart", "--workdir", "-workdir"):
            skip = a in ("--workdir", "-workdir")  # "--workdir DIR": drop DIR too
            continue
        args.append(a)
    return shlex.join([sys.executable or "python", "-m", "mpt_jax.main", *args,
                       f"--workdir={os.path.abspath(workdir)}"])


HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")


def default_config_path() -> str:
    """configs/default.py, the embedded default (also when run outside the repo)."""
    default = "configs/default.py"
    if not os.path.exists(default):
        default = os.path.join(os.path.dirname(os.path.dirname(__file__)), default)
    return default


def default_workdir(config_arg: str) -> str:
    """runs/<config file stem>, with the config's parameters if it has any
    (configs/cifar10_conv.py:depth=4,binact -> runs/cifar10_conv_depth-4_binact), so that the
    members of a parametrised family never share a workdir."""
    path, _, params = config_arg.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    if params:
        name += "_" + re.sub(r"[^\w.-]+", "_", params.replace("=", "-")).strip("_")
    return os.path.join("runs", name)


def define_main_flags(flag_values) -> None:
    """``python -m mpt_jax.main``'s flags (--config, --workdir, --multihost), once.

    Defined when a run starts, not at import: config_flags reads --config.* overrides while
    the flag is defined, and a bad override must become a one-line error, not an
    import-time traceback."""
    from absl import flags  # noqa: PLC0415
    from ml_collections import config_flags  # noqa: PLC0415
    if "config" in flag_values:
        return
    config_flags.DEFINE_config_file(
        "config", default_config_path(), "Experiment config file (configs/*.py); fields can "
        "be overridden with --config.<field>=<value>; a parametrised config takes its "
        "parameters after a colon (configs/cifar10_conv.py:depth=4,binact).", lock_config=True,
        flag_values=flag_values)
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics.jsonl, "
                        "tensorboard/); default runs/<config file stem>.",
                        flag_values=flag_values)
    flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (also triggered "
                      "by JAX_COORDINATOR_ADDRESS in the environment).",
                      flag_values=flag_values)


def help_text(flag_values, config) -> str:
    """``--help``: the flags, then every field of the selected config with its value and a
    line saying what it means (config_fields.py), grouped as the table groups them."""
    lines = ["usage: python -m mpt_jax.main [--config=configs/<name>.py] [--workdir=DIR] "
             "[--config.<field>=<value> ...]", "", "flags:"]
    for name in ("config", "workdir", "multihost"):
        flag = flag_values[name]
        default = default_config_path() if name == "config" else flag.default
        lines.append(f"  --{name}: {flag.help} (default: {default})")
    lines += ["", "config fields of this config (override with --config.<field>=<value>):"]
    known = [f.name for f in config_fields.FIELDS if f.name in config]
    others = sorted(k for k in config.keys() if k not in config_fields.BY_NAME)
    section = None
    for name in known + others:
        here = config_fields.SECTION_OF.get(name, "other fields")
        if here != section:
            section = here
            lines += ["", f" {section}:"]
        lines += _value_lines(f"--config.{name}", config[name])
        lines.append(f"      {config_fields.help_line(name) or 'not a field of mpt_jax'}")
        lines += [f"      {f.name}: {f.help}" for f in config_fields.SUBFIELDS.get(name, ())]
    return "\n".join(lines)


def _value_lines(prefix: str, value) -> list[str]:
    """``  --config.a.b=value`` for every leaf under ``prefix`` (``={}`` for an empty group)."""
    if not hasattr(value, "items"):
        return [f"  {prefix}={value!r}"]
    if not value:
        return [f"  {prefix}={{}}"]
    return [line for key, item in sorted(value.items())
            for line in _value_lines(f"{prefix}.{key}", item)]


def stdout_closed() -> None:
    """Call after a BrokenPipeError on stdout (``... | head``): a reader that stops early is
    not an error; stdout goes to /dev/null so Python's flush at exit does not raise again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def print_help(text: str) -> None:
    """Prints the help; a reader that stops early (``--help | head``) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        stdout_closed()


def flag_error_message(error: Exception, argv) -> str:
    """One clear line for flag / config-file errors (config_flags' own are multi-line)."""
    text = one_line(error)
    if "Failed loading config file" in text or "earlier failure to load" in text:
        return f"cannot load the config file: {text.split('Attempted')[-1].strip()}"
    given = next((a for a in argv[1:] if re.match(r"-{1,2}config=", a)), "--config")
    if isinstance(error, ImportError):
        hint = (" (configs/*.py import configs/common.py: run from the repository root)"
                if error.name == "configs" else "")
        return f"cannot load the config of {given}: {text}{hint}"
    if "Error whilst parsing config file" in text:
        # config_flags puts the config file's whole traceback in the message: keep its last
        # line, the exception raised by the file (e.g. a bad parameter after the colon).
        found = re.findall(r"\b[A-Za-z]*(?:Error|Exception): (.*?)(?= \w*(?:Error|Exception): |$)",
                           text.split("Traceback", 1)[-1])
        return f"cannot load the config of {given}: {found[-1] if found else text}"
    if isinstance(error, (KeyError, AttributeError)):
        return unknown_field_message(error, argv, given)
    return text


def unknown_field_message(error: Exception, argv, given: str) -> str:
    """``unknown config field 'lerning_rate'; did you mean 'learning_rate'? (python -m
    mpt_jax.main --config=... --help lists the fields)``: the field as the user typed it,
    ml_collections' suggestion (else the closest field of the table) and how to list them."""
    # ml_collections: "'key'\nDid you mean "other" instead of "key"?" (KeyError adds repr).
    raw = error.args[0] if error.args else one_line(error)
    while isinstance(raw, BaseException):  # AttributeError(KeyError(...))
        raw = raw.args[0] if raw.args else ""
    first, _, hint = str(raw).partition("\n")
    key = first.strip("\"' ").split(".")[-1]
    typed = next((a.split("=")[0][len("--config."):] for a in argv
                  if a.startswith("--config.") and key in a.split("=")[0]), key)
    suggested = re.search(r'Did you mean "([^"]+)"', hint)
    if suggested:
        suggestion = suggested.group(1)
    else:
        close = difflib.get_close_matches(key, list(config_fields.BY_NAME), n=1)
        suggestion = close[0] if close and "." not in typed else None
    parent = typed.rpartition(".")[0]
    message = f"unknown config field {typed!r}"
    if suggestion:
        message += f"; did you mean {(parent + '.' if parent else '') + suggestion!r}?"
    config_arg = f"{given} " if given != "--config" else ""
    return f"{message} (python -m mpt_jax.main {config_arg}--help lists the fields)"


def parse_command_line(flag_values, argv, config_default: str | None = None) -> None:
    """Parses ``argv`` into the absl ``flag_values`` as a fresh command line.

    Every flag starts from its default, not from a previous call's value (a notebook or a
    test calling ``main.run`` / ``ticket.main`` twice in one process). ml_collections
    registers the ``--config.<field>`` override flags from ``sys.argv`` while it parses
    ``--config``, so ``sys.argv`` is ``argv`` meanwhile and the previous call's override
    flags are dropped first; without a ``--config`` in ``argv``, ``config_default`` is
    parsed as if given (a flag's default is parsed once, and overrides edit that object).
    """
    argv = list(argv)
    if config_default and not any(re.match(r"-{1,2}config(=|$)", a) for a in argv[1:]):
        argv.insert(1, f"--config={config_default}")
    saved_argv, sys.argv = sys.argv, argv
    try:
        for name in [n for n in flag_values if n.startswith("config.")]:
            delattr(flag_values, name)
        flag_values.unparse_flags()
        flag_values(argv)
    finally:
        sys.argv = saved_argv
