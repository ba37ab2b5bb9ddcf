"""``python -m mpt_jax.ticket COMMAND [flags]``: export, evaluate, summary, import-torch.

``export --workdir --out [--which] [--mode=seed|signs] [--bn_dtype]``,
``evaluate --ticket [--config] [--workdir [--which]]`` (compares with the checkpoint the ticket
was exported from),, ``summary --ticket|--workdir [--json]``,
``import-torch --checkpoint --model --keep_fraction --out [--model_options]``. Exit status 0
on success, 2 (with a one-line ``error: ...`` on stderr) for a bad request or ticket.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Sequence

import jax
from absl import flags
from ml_collections import config_flags

from mpt_jax import checkpoint, cli, data, parallel
from mpt_jax.errors import UserError, one_line
from mpt_jax.ticket import format as ticket_format
from mpt_jax.ticket import inference, run, torch_import
from mpt_jax.ticket.core import BN_DTYPES, MODES, TicketError
# By name: the package re-exports the function summary under the module's own name.
from mpt_jax.ticket.summary import summary, summary_table

USAGE = """usage: python -m mpt_jax.ticket COMMAND [flags]
  export        --workdir=RUN --out=FILE [--which=latest|best] [--mode=seed|signs]
  evaluate      --ticket=FILE [--config=configs/X.py] [--workdir=RUN [--which=latest|best]]
  summary       --ticket=FILE | --workdir=RUN   [--json]
  import-torch  --checkpoint=model_best.pth --model=NAME --keep_fraction=K --out=FILE"""

_FLAGS = None


def _define_flags() -> flags.FlagValues:
    """This command's own flags (not absl's global FLAGS, where ``python -m mpt_jax.main``
    defines a --config of its own: a notebook may call both)."""
    global _FLAGS
    if _FLAGS is not None:
        return _FLAGS
    F = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "Config (configs/*.py) of the evaluation "
                                    "data; --config.<field>=... overrides.", flag_values=F,
                                    lock_config=False)
    flags.DEFINE_string("workdir", None, "Training run directory (export; evaluate/summary "
                        "compare with it).", flag_values=F)
    flags.DEFINE_enum("which", "latest", ["latest", "best"], "Which checkpoint of the run "
                      "(evaluate: by default the one the ticket was exported from).",
                      flag_values=F)
    flags.DEFINE_string("out", None, "Output ticket file (export, import-torch).", flag_values=F)
    flags.DEFINE_string("ticket", None, "Ticket file (evaluate, summary).", flag_values=F)
    flags.DEFINE_enum("mode", "seed", list(MODES), "seed: regenerate W from the run's PRNG key "
                      "(<= 1.1 bits/weight); signs: store the kept sign bits (<= 2.2).",
                      flag_values=F)
    flags.DEFINE_enum("bn_dtype", "float32", list(BN_DTYPES), "Storage dtype of BN arrays.",
                      flag_values=F)
    flags.DEFINE_list("image_shape", None, "H,W,C when the dataset does not imply it.",
                      flag_values=F)
    flags.DEFINE_bool("json", False, "summary: machine-readable JSON on stdout.", flag_values=F)
    flags.DEFINE_string("checkpoint", None, "import-torch: PyTorch checkpoint (.pth).",
                        flag_values=F)
    flags.DEFINE_string("model", None, "import-torch: mpt_jax model name (e.g. resnet18_cifar).",
                        flag_values=F)
    flags.DEFINE_float("keep_fraction", None, "import-torch: the run's prune_rate (fraction "
                       "KEPT).", flag_values=F)
    flags.DEFINE_string("model_options", "{}", "import-torch: JSON of extra get_model options, "
                        "e.g. '{\"width_mult\": 10}'.", flag_values=F)
    flags.DEFINE_integer("num_classes", None, "import-torch: classifier outputs (default: from "
                         "the checkpoint).", flag_values=F)
    _FLAGS = F
    return F


def _cmd_export(F) -> int:
    if not F.workdir or not F.out:
        raise TicketError("export needs --workdir=RUN and --out=FILE")
    ticket = run.ticket_from_run(F.workdir, F.which, mode=F.mode, bn_dtype=F.bn_dtype,
                                 image_shape=F.image_shape)
    size = ticket_format.save_ticket(ticket, F.out)
    s = summary(ticket, file_bytes=size,
                checkpoint_bytes=run.checkpoint_bytes(F.workdir, F.which))
    print(summary_table(s))
    t = s["totals"]
    print(f"wrote {F.out}: {size:,} bytes = {t['file_bits_per_weight']:.3f} bits/weight "
          f"({t['bits_per_weight']:.3f} for the prunable layers alone); fp32 dense "
          f"{t['fp32_bytes']:,} bytes" + (f"; run checkpoint {t['checkpoint_bytes']:,} bytes"
                                          if "checkpoint_bytes" in t else ""))
    return 0


def _evaluation_config(F, ticket, which: str):
    """The config of the evaluation data: --config, else the run's (--workdir)."""
    config = F.config
    if config is None:
        if not F.workdir:
            raise TicketError("evaluate needs --config=configs/X.py (the evaluation data) "
                              "and/or --workdir=RUN (logit comparison)")
        config = checkpoint.load_for_inference(F.workdir, which)["config"]
    if config.get("model") and config.model != ticket.model:
        raise TicketError(f"ticket is for model {ticket.model!r} but the config asks for "
                          f"{config.model!r}; use the run's config")
    # Evaluation reads the eval split only: the training batch is set to its smallest valid
    # value so that a small archive (e.g. a user's own test set) is not refused for it.
    config.batch_size = jax.device_count()
    return config


def _exported_from(ticket) -> tuple[str | None, str | None]:
    """(workdir, "latest" | "best") of the run checkpoint a ticket was exported from, as its
    manifest records them (None for a ticket of elsewhere, e.g. a PyTorch import)."""
    extra = ticket.info.get("extra") or {}
    return extra.get("workdir"), extra.get("which")


def _comparison_line(F, ticket, which: str, diff: float, count: int) -> str:
    """What the logit comparison measured, in words, with the number."""
    workdir, exported = _exported_from(ticket)
    same_run = workdir is None or os.path.abspath(F.workdir) == os.path.abspath(workdir)
    if exported == which and same_run:
        source = " (the one this ticket was exported from)"
    elif exported is not None:
        source = (f" (this ticket was exported from the {exported} checkpoint"
                  f"{'' if same_run else ' of ' + workdir}: a difference is expected)")
    else:
        source = ""
    return (f"largest |logit difference| between this ticket and the run's {which} checkpoint"
            f"{source}, on {count} eval images: {diff:.3g} (0: the ticket computes exactly "
            f"the trained network; float rounding gives up to ~1e-5; another checkpoint's "
            f"network differs by tenths)")


def _cmd_evaluate(F) -> int:
    if not F.ticket:
        raise TicketError("evaluate needs --ticket=FILE")
    ticket = ticket_format.load_ticket(F.ticket)
    recorded = ticket.info.get("metrics", {})
    # Compare with the checkpoint the ticket came from, unless --which says otherwise.
    which = F.which if F["which"].present else (_exported_from(ticket)[1] or F.which)
    ds = data.get_dataset(_evaluation_config(F, ticket, which), parallel.make_mesh())
    if tuple(ds.image_shape) != tuple(ticket.image_shape):
        raise TicketError(f"ticket expects images {ticket.image_shape}, dataset gives "
                          f"{tuple(ds.image_shape)}")
    result = inference.evaluate_batches(ticket, ds.eval_batches())
    line = (f"ticket {F.ticket}: top-1 {result['accuracy']:.2f}% on {result['examples']:,} "
            f"examples ({ds.eval_split_name})")
    if recorded.get("accuracy") is not None:
        line += f"; run recorded {recorded['accuracy']:.2f}%"
    print(line)
    if F.workdir:
        images = next(iter(ds.eval_batches()))["image"]
        diff = inference.compare_with_run(ticket, F.workdir, which, images)
        print(_comparison_line(F, ticket, which, diff, int(images.shape[0])))
    return 0


def _cmd_summary(F) -> int:
    if F.ticket:
        ticket = ticket_format.load_ticket(F.ticket)
        size = os.path.getsize(F.ticket)
    elif F.workdir:
        ticket = run.ticket_from_run(F.workdir, F.which, mode=F.mode, image_shape=F.image_shape)
        size = None
    else:
        raise TicketError("summary needs --ticket=FILE or --workdir=RUN")
    s = summary(ticket, file_bytes=size,
                checkpoint_bytes=run.checkpoint_bytes(F.workdir, F.which) if F.workdir else None)
    print(json.dumps(s, indent=1) if F.json else summary_table(s))
    return 0


def _cmd_import_torch(F) -> int:
    if not (F.checkpoint and F.model and F.keep_fraction and F.out):
        raise TicketError("import-torch needs --checkpoint, --model, --keep_fraction and --out")
    try:
        options = json.loads(F.model_options)
    except json.JSONDecodeError as e:
        raise TicketError(f"--model_options is not JSON ({e})") from None
    ticket = torch_import.ticket_from_torch(
        F.checkpoint, F.model, F.keep_fraction, model_opts=options, num_classes=F.num_classes,
        image_shape=F.image_shape)
    size = ticket_format.save_ticket(ticket, F.out)
    print(summary_table(summary(ticket, file_bytes=size,
                                checkpoint_bytes=os.path.getsize(F.checkpoint))))
    print(f"wrote {F.out}: {size:,} bytes")
    return 0


COMMANDS = {"export": _cmd_export, "evaluate": _cmd_evaluate, "summary": _cmd_summary,
            "import-torch": _cmd_import_torch}


def _run_command(command: str, argv: list[str]) -> int:
    F = _define_flags()
    try:
        cli.parse_command_line(F, argv)
        return COMMANDS[command](F)
    except BrokenPipeError:  # `ticket summary ... | head`: output is printed after the work
        cli.stdout_closed()
        return 0
    except (TicketError, UserError, flags.Error) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; ``argv`` as ``sys.argv`` (program name first). Returns the exit
    status: 0 done (or help printed), 2 usage or ticket error."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) >= 2 and argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in argv[2:]):
        print(USAGE)
        return 0
    command = argv.pop(1)
    return _run_command(command, argv)
