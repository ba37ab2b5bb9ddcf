"""Resuming a run: the checkpoint it continues from, the checks that the config still fits
that checkpoint, and the loop's state and logs brought back to the point where it was saved.

  open_checkpoints(config, runs) -> [Found | None] per run   (before anything is written)
  stored_result(runs, founds) -> the result of a finished run, or None
  restore(tracks, founds, states, run) -> the tracks' states
  checkpoint_meta(track, run, seconds) -> a track's checkpoint record (JSON)

A resumed run must log exactly what one run without the stop would have logged, so a
checkpoint holds, besides the TrainState and the position, the steps of the log interval that
was still open (their loss / top-1 / top-5, each a float32 value), the epoch's running sums
behind the progress line, and the wall time every earlier process had spent up to its last
save. A stop inside a log interval then writes no record; the resumed run writes the
interval's record at its end, over all of its steps, as the uninterrupted run did.

A member program (mpt_jax.members) resumes every member from the newest global step that all
of them saved intact; one run is the program of a single member.
"""
from __future__ import annotations

import json
import os
import time

import jax

from mpt_jax import config_utils, integrity, members, metrics as metrics_lib, report
from mpt_jax.errors import CheckpointError

# Fields that shape the learning-rate schedule, the optimizer's updates, what is trained or
# the data order: a run resumed with other values would not be one run of either config.
SCHEDULE_FIELDS = ("num_epochs", "learning_rate", "schedule", "warmup_epochs",
                   "schedule_granularity", "optimizer", "momentum", "weight_decay", "nesterov",
                   "adam_weight_decay", "grad_clip", "label_smoothing", "batch_size", "seed",
                   "augment", "holdout_per_class", "prune_ramp_epochs", "learn_batchnorm",
                   "tune_batchnorm", "data_seed")


# ---------------------------------------------------------------------------
# Which checkpoint, and may this config continue it


def open_checkpoints(config, runs: list) -> list:
    """The intact checkpoint (``integrity.Found``) each of ``runs`` (``members.layout``'s
    (name, config, workdir) triples) continues, or Nones for a new run. Reads only: a
    refusal (another run, another schedule, no intact save) leaves the workdir as it was."""
    if config.restart:
        return [None] * len(runs)
    if len(runs) == 1 and not runs[0][0]:
        founds = [integrity.find_checkpoint(runs[0][2])]
    else:
        founds = integrity.find_common([d for _, _, d in runs]) or [None] * len(runs)
    for (_, run_config, directory), found in zip(runs, founds):
        if found is not None:
            check_compatible(found.meta, run_config, directory)
            check_schedule(found.meta, run_config, directory)
    return founds


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


def stored_result(runs: list, founds: list) -> dict | None:
    """The stored result when the workdirs of ``runs`` hold this run (every member),
    already finished; else None. result.json (rewritten from the checkpoint) and
    metrics.jsonl are repaired if damaged. A member program's is {member name: result}."""
    for (_, run_config, _), found in zip(runs, founds):
        meta = None if found is None else found.meta
        if meta is None:
            return None
        limit = (run_config.max_train_steps > 0
                 and meta.get("global_step", 0) >= run_config.max_train_steps)
        if not (limit or meta.get("epoch", 0) >= run_config.num_epochs) or not meta.get("result"):
            return None
    results = {}
    for (name, _, directory), found in zip(runs, founds):
        if found.damaged:
            report.echo(found.damage_note())
        _repair_metrics(directory, int(found.meta["global_step"]))
        results[name] = report.finished_before(directory, found.meta["epoch"],
                                               found.meta["result"])
    return results[""] if "" in results else results


# ---------------------------------------------------------------------------
# Restoring


def restore(tracks: list, founds: list, states: list, run) -> list:
    """The tracks' checkpointed states; ``run`` (loop.RunState) continues from the saved
    position and earlier wall time, each track from its best, last evaluation, open log
    interval and epoch sums. metrics.jsonl loses the records logged after the checkpoint
    (the resumed run logs them again)."""
    restored = []
    for track, found, state in zip(tracks, founds, states):
        track.checkpointer.set_aside(found)
        if found.damaged:
            report.echo(found.damage_note())
        state, meta = track.checkpointer.restore(state, found=found)
        restored.append(state)
        track.best = meta.get("best", track.best)
        track.last_eval = meta.get("last_eval")
        interval = meta.get("log_interval") or {}
        track.interval = {k: [float(v) for v in interval.get(k, [])]
                          for k in metrics_lib.TRAIN_METRICS}
        loss_sum, acc_sum, count = meta.get("epoch_sums") or (0.0, 0.0, 0)
        track.epoch_sums = (float(loss_sum), float(acc_sum), int(count))
        _repair_metrics(track.workdir, int(meta["global_step"]))
    meta = founds[0].meta
    run.epoch, run.step_in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
    run.wall_before = [float(s) for s in meta.get("wall_seconds_parts", [])]
    where = (tracks[0].workdir if not members.is_program(tracks) else
             f"the {len(tracks)} members of {os.path.dirname(os.path.dirname(tracks[0].workdir))}")
    report.echo(f"resuming {where} at epoch {run.epoch + 1}, step {run.step_in_epoch} "
                f"(global step {meta['global_step']}) on {report.devices()}")
    return restored


def _repair_metrics(workdir: str, step: int) -> None:
    if jax.process_index() == 0:
        for note in metrics_lib.truncate_after(workdir, step):
            report.echo(f"warning: {note}")


def wall_parts(run, seconds: float) -> list[float]:
    """Seconds spent by every process of this run: the earlier ones up to their last
    checkpoint, this one (``seconds`` so far) up to now."""
    return [*run.wall_before, round(seconds, 2)]


def checkpoint_meta(track, run, seconds: float) -> dict:
    """A track's checkpoint record (JSON): where the run continues (``run``: loop.RunState),
    its best and last evaluation, its config and fingerprint, and what ``restore`` needs to
    log as if the run had never stopped; ``seconds``: this process's wall time so far."""
    config = track.config
    return dict(epoch=int(run.epoch), step_in_epoch=int(run.step_in_epoch),
                global_step=int(run.step), best=dict(track.best), last_eval=track.last_eval,
                keep_fraction=float(track.keep_fraction), model=config.model,
                fingerprint=config_utils.fingerprint(config),
                config=json.loads(config_utils.to_json(config)), time=time.time(),
                log_interval={k: list(v) for k, v in track.interval.items()},
                epoch_sums=list(track.epoch_sums), wall_seconds_parts=wall_parts(run, seconds))
