"""Resuming a run: the checkpoint it continues from, the checks that the config still fits
that checkpoint, and the loop's state and logs brought back to the point where it was saved.

  open_checkpoint(config, workdir) -> Found | None   (before anything is written)
  stored_result(config, workdir, found) -> the result of a finished run, or None
  restore(checkpointer, found, state, run, workdir) -> state
  meta_fields(run) -> the loop's own entries of a checkpoint's meta

A resumed run must log exactly what one run without the stop would have logged, so a
checkpoint holds, besides the TrainState and the position, the steps of the log interval that
was still open (their loss / top-1 / top-5, each a float32 value), the epoch's running sums
behind the progress line, and the wall time every earlier process had spent up to its last
save. A stop inside a log interval then writes no record; the resumed run writes the
interval's record at its end, over all of its steps, as the uninterrupted run did.
"""
from __future__ import annotations

import json
import time

import jax

from mpt_jax import checkpoint as ckpt_lib
from mpt_jax import config_utils, metrics as metrics_lib, report
from mpt_jax.errors import CheckpointError

# Fields that shape the learning-rate schedule, the optimizer's updates, what is trained or
# the data order: a run resumed with other values would not be one run of either config.
SCHEDULE_FIELDS = ("num_epochs", "learning_rate", "schedule", "warmup_epochs",
                   "schedule_granularity", "optimizer", "momentum", "weight_decay", "nesterov",
                   "adam_weight_decay", "grad_clip", "label_smoothing", "batch_size", "seed",
                   "augment", "holdout_per_class", "prune_ramp_epochs", "learn_batchnorm",
                   "tune_batchnorm")
METRICS = ("loss", "top1", "top5")


def empty_interval() -> dict:
    return {k: [] for k in METRICS}


# ---------------------------------------------------------------------------
# Which checkpoint, and may this config continue it


def open_checkpoint(config, workdir: str):
    """The intact checkpoint this run continues (``checkpoint.Found``), or None for a new
    run. Reads only: a refusal (another run, another schedule, no intact save) leaves the
    workdir as it was."""
    if config.restart:
        return None
    found = ckpt_lib.find_checkpoint(workdir)
    if found is not None:
        check_compatible(found.meta, config, workdir)
        check_schedule(found.meta, config, workdir)
    return found


def check_compatible(meta: dict, config, workdir: str) -> None:
    """Refuses to resume a checkpoint whose fingerprint differs from ``config``'s."""
    saved = meta.get("fingerprint") or {}
    current = config_utils.fingerprint(config)
    if saved != current:
        raise CheckpointError(
            f"workdir {workdir} holds a checkpoint of a different run ("
            f"{config_utils.fingerprint_diff(saved, current)}); pass --config.restart=True to "
            "discard it and start over, or use a new --workdir")


def schedule_changes(saved_config: dict, config) -> list[str]:
    """``field: checkpoint A vs config B`` for every schedule field that differs."""
    current = json.loads(config_utils.to_json(config))
    return [f"{name}: checkpoint {saved_config[name]!r} vs config {current.get(name)!r}"
            for name in SCHEDULE_FIELDS
            if name in saved_config and saved_config[name] != current.get(name)]


def check_schedule(meta: dict, config, workdir: str) -> None:
    """Refuses (one line) a resume whose config changes the schedule or the data order,
    unless ``accept_schedule_change`` says the new values apply from here on."""
    changes = schedule_changes(meta.get("config") or {}, config)
    if changes and not config.get("accept_schedule_change", False):
        raise CheckpointError(
            f"workdir {workdir} was trained with another schedule or data order "
            f"({'; '.join(changes)}); pass --config.accept_schedule_change=True to continue "
            "with the new values from the checkpoint on, or --config.restart=True to start over")


def stored_result(config, workdir: str, found) -> dict | None:
    """The stored result when ``workdir`` holds this run, already finished; else None.
    result.json (rewritten from the checkpoint) and metrics.jsonl are repaired if damaged."""
    meta = None if found is None else found.meta
    if meta is None:
        return None
    limit = config.max_train_steps > 0 and meta.get("global_step", 0) >= config.max_train_steps
    if not (limit or meta.get("epoch", 0) >= config.num_epochs) or not meta.get("result"):
        return None
    if found.damaged:
        report.echo(found.damage_note())
    _repair_metrics(workdir, int(meta["global_step"]))
    report.finished_before(workdir, meta["epoch"], meta["result"])
    return meta["result"]


# ---------------------------------------------------------------------------
# Restoring


def restore(checkpointer, found, state, run, workdir: str):
    """The checkpointed state; ``run`` (loop.RunState) continues from its position, best,
    last evaluation, open log interval, epoch sums and earlier wall time. metrics.jsonl loses
    the records logged after the checkpoint (the resumed run logs them again)."""
    checkpointer.set_aside(found)
    if found.damaged:
        report.echo(found.damage_note())
    state, meta = checkpointer.restore(state, found=found)
    run.epoch, run.step_in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
    run.best = meta.get("best", run.best)
    run.last_eval = meta.get("last_eval")
    interval = meta.get("log_interval") or {}
    run.interval = {k: [float(v) for v in interval.get(k, [])] for k in METRICS}
    loss_sum, acc_sum, count = meta.get("epoch_sums") or (0.0, 0.0, 0)
    run.epoch_sums = (float(loss_sum), float(acc_sum), int(count))
    run.wall_before = [float(s) for s in meta.get("wall_seconds_parts", [])]
    _repair_metrics(workdir, int(meta["global_step"]))
    report.echo(f"resuming {workdir} at epoch {run.epoch + 1}, step {run.step_in_epoch} "
                f"(global step {meta['global_step']}) on {report.devices()}")
    return state


def _repair_metrics(workdir: str, step: int) -> None:
    if jax.process_index() == 0:
        for note in metrics_lib.truncate_after(workdir, step):
            report.echo(f"warning: {note}")


def wall_parts(run) -> list[float]:
    """Seconds spent by every process of this run: the earlier ones up to their last
    checkpoint, this one up to now."""
    return [*run.wall_before, round(time.time() - run.t_start, 2)]


def meta_fields(run) -> dict:
    """The loop's entries of a checkpoint's meta that ``restore`` reads back."""
    return dict(log_interval={k: list(v) for k, v in run.interval.items()},
                epoch_sums=list(run.epoch_sums), wall_seconds_parts=wall_parts(run))
