"""The training loop: one loop over global steps, with periodic actions.

  train_and_evaluate(config, workdir, *, dataset=None, overridden=(), hooks=None) -> result
  itstime(step, every, total=None, *, last=False, drop_close_to_last=0.0) -> bool

Each iteration runs one training step (global step g, counted from 1) and then asks
``itstime`` whether to log (every ``log_every_steps`` steps of an epoch; the epoch's last
interval takes the remainder), to checkpoint mid-epoch (every ``checkpoint_every_steps``
global steps), to evaluate (at each epoch's end, or when ``max_train_steps`` is reached) and
whether to stop. After an evaluation the best top-1 is tracked and a checkpoint is written
every ``checkpoint_every_epochs`` epochs (and at the end); the loop ends after the last epoch,
at ``max_train_steps``, or when the run is not learning (``stop_if_not_learning``).

Each epoch starts by setting the global-pruning kept count of k_t in the state (no recompile).
Rerunning with the same workdir resumes where the checkpoint was saved and logs what one
uninterrupted run logs (mpt_jax.resume). What is recorded (evaluations, checkpoints, logs,
result) is kept per ``members.Track``: one for a single run, one per member of a member
program (``config.members``, mpt_jax.members), whose state stacks the members' states.
SIGTERM / Ctrl-C finish the current step, checkpoint and raise ``Interrupted``; a non-finite
step raises ``TrainingError`` and nothing after it is saved. Tests inject faults through a
``Hooks`` object; a real run passes none.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Iterable

import jax
import ml_collections
import numpy as np

from mpt_jax import config_utils, members, metrics as metrics_lib, ops, optim, parallel, report
from mpt_jax import resume, stages
from mpt_jax import train
from mpt_jax.compilation import CompiledAhead, abstract
from mpt_jax.errors import DataError, Interrupted, TrainingError, UserError
from mpt_jax.signals import StopSignal, spoken, stop_requested

NOT_LEARNING_TOP1 = 2.0  # percent: below this after the third epoch, the run is not learning


def itstime(step: int, every: int, total: int | None = None, *, last: bool = False,
            drop_close_to_last: float = 0.0) -> bool:
    """Whether a periodic action is due after ``step``: every ``every`` steps (never if
    ``every`` <= 0) and, if ``last``, at ``total``. A periodic point closer to ``total``
    than ``drop_close_to_last * every`` steps is skipped (the action at ``total`` then covers
    the remainder instead of following a moment later). After big_vision's ``itstime``."""
    due = every > 0 and step % every == 0
    if due and total is not None and drop_close_to_last:
        due = total - step >= drop_close_to_last * every
    return due or (last and step == total)


@dataclasses.dataclass(frozen=True)
class Hooks:
    """Fault injection for tests (real runs pass none).

    before_step(g, batch) -> batch: the batch global step g will train on (e.g. NaNs).
    on_step(g, stop): after step g was dispatched, before its metrics are checked or a
      checkpoint is written (e.g. pause until ``stop.received`` for a real signal).
    during_checkpoint_save(meta, directory): inside every checkpoint save, after part of it
      was written (``checkpoint.Checkpointer``'s ``during_save``: pause, or raise OSError).
    """

    before_step: Callable[[int, Any], Any] | None = None
    on_step: Callable[[int, StopSignal], None] | None = None
    during_checkpoint_save: Callable[[dict, str], None] | None = None


@dataclasses.dataclass
class RunState:
    """What the loop carries between steps (host values; the TrainState travels apart)."""

    steps_per_epoch: int
    tracks: list = dataclasses.field(default_factory=list)  # members.Track: what is recorded
    epoch: int = 0  # 0-based epoch of the next step
    step_in_epoch: int = 0  # steps done in that epoch (== steps_per_epoch: not evaluated yet)
    first_step: int = 0  # global step this process started from (its first step compiles)
    pending: list = dataclasses.field(default_factory=list)  # device metrics not fetched yet
    window_start: float = 0.0  # when the current log interval's timing began
    window_images: int = 0  # images trained in it (per track)
    stop_reason: str | None = None  # signal | not_learning | max_train_steps
    wall_before: list = dataclasses.field(default_factory=list)  # seconds of earlier processes

    @property
    def step(self) -> int:
        """The global step: steps done since the run began."""
        return self.epoch * self.steps_per_epoch + self.step_in_epoch


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What the loop works with and never changes during a run."""

    config: ml_collections.ConfigDict
    workdir: str
    ds: Any
    mesh: Any
    p_train: Callable
    p_eval: Callable
    schedule: Callable
    hooks: Hooks
    clock: stages.Clock  # where the run's wall time goes
    bar: metrics_lib.ProgressBar | None = None
    stop: StopSignal | None = None


# ---------------------------------------------------------------------------
# Entry points


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, dataset=None,
                       overridden: Iterable[str] = (), hooks: Hooks | None = None) -> dict:
    """Trains (or resumes) the run of ``config`` in ``workdir``; returns the final metrics.

    Metrics (percent): final_top1/5 (last evaluation), best_top1/5 and best_epoch (model
    selection on the eval split, which ``eval_split`` names). A finished run returns its
    stored result at once. A member program (``config.members``) returns {member name: its
    metrics}. ``hooks``: test-only fault injection (``Hooks``).
    """
    clock = stages.Clock()
    config = config_utils.resolve(config, overridden)
    config_utils.validate(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    hooks = hooks or Hooks()
    runs = members.layout(config, workdir)  # its refusals, like the next, change nothing
    founds = resume.open_checkpoints(config, runs)
    if (stored := resume.stored_result(runs, founds)) is not None:
        return stored
    tracks = members.open_tracks(config, workdir, runs, restart=bool(config.restart),
                                 during_save=hooks.during_checkpoint_save)
    for track in tracks:
        track.checkpointer.save = clock.timed(track.checkpointer.save, "checkpoint")
    try:  # until the loop's own try/finally: close orbax on any error (its threads)
        ctx, state, run = _prepare(config, workdir, dataset, tracks, founds, hooks, clock)
    except BaseException:
        members.close(tracks)
        raise
    is_main = jax.process_index() == 0
    for track in tracks:
        # Replayed steps (after the checkpoint) replace, not duplicate, earlier TensorBoard data.
        track.logger = metrics_lib.MetricsLogger(track.workdir, enabled=is_main,
                                                 start_step=run.step + 1)
    bar = metrics_lib.ProgressBar(config.num_epochs, run.steps_per_epoch,
                                  enabled=is_main and config.progress_bar)
    bar.set_batch_size(config.batch_size * len(tracks))
    try:
        with StopSignal() as stop:
            _loop(dataclasses.replace(ctx, bar=bar, stop=stop), run, state)
    finally:
        bar.end_epoch()
        members.close(tracks)
    return _finish(config, run, clock)


# ---------------------------------------------------------------------------
# Start and end of a run


def _prepare(config, workdir, dataset, tracks, founds, hooks, clock):
    """(RunContext without bar / stop, the initial or restored state, RunState)."""
    mesh = parallel.make_mesh()
    if dataset is None:
        from mpt_jax import data  # noqa: PLC0415  (data imports heavier deps lazily)
        dataset = clock.timed(data.get_dataset, "data")(config, mesh)
    spe = int(dataset.steps_per_epoch)
    if spe <= 0:
        raise UserError(f"batch_size={config.batch_size} is larger than the "
                        f"{dataset.num_train} training examples; lower --config.batch_size")
    model = train.create_model(config, dataset.num_classes)
    tx = optim.make_optimizer(config, spe)
    p_train, p_eval = _parallel_steps(config, model, tx, mesh, dataset, tracks, clock)
    states = members.initial_states(tracks, tx, dataset.num_classes, dataset.image_shape, model)
    states = [parallel.replicate(s, mesh) for s in states]
    # Room for every track's saves (a program's members share one file system).
    tracks[0].checkpointer.check_room_for(states if len(states) > 1 else states[0])
    run = RunState(steps_per_epoch=spe, tracks=tracks)
    if founds[0] is not None:
        states = resume.restore(tracks, founds, states, run)
    elif members.is_program(tracks):
        members.announce(config, workdir, dataset, tracks)
    else:
        report.announce(config, dataset, model, states[0])
    state = members.stack(states, tracks, mesh)
    run.first_step = run.step
    schedule = jax.jit(optim.make_schedule(config, spe))  # host-side lr for the logs
    ctx = RunContext(config=config, workdir=workdir, ds=dataset, mesh=mesh, p_train=p_train,
                     p_eval=p_eval, schedule=schedule, hooks=hooks, clock=clock)
    return ctx, state, run


def _parallel_steps(config, model, tx, mesh, ds, tracks, clock):
    """The jitted steps (first call announced and timed); with in-memory data both compile in
    a thread from abstract shapes while this thread initialises (and maybe restores) the
    state and epoch 1 starts."""
    p_train, p_eval = members.parallel_steps(config, model, tx, mesh, tracks, ds)
    if hasattr(ds, "train_batch_shapes") and hasattr(ds, "eval_batch_shapes"):
        state_shapes = members.state_shapes(tracks, tx, ds.num_classes, ds.image_shape, model)
        state_shapes = abstract(state_shapes, parallel.replicated(mesh))
        p_train = CompiledAhead(p_train, state_shapes, ds.train_batch_shapes())
        p_eval = CompiledAhead(p_eval, state_shapes, ds.eval_batch_shapes())
    return (stages.FirstCallTimed(p_train, "train step", clock, starts_training=True),
            stages.FirstCallTimed(p_eval, "eval step", clock))


def _finish(config, run: RunState, clock: stages.Clock) -> dict:
    """result.json (with where the wall time went) and the closing lines of a run that
    ended."""
    if run.tracks[0].result is None:
        raise TrainingError("no training step was run: num_epochs is already reached in this "
                            "workdir; raise --config.num_epochs to train further")
    note = None
    if run.stop_reason == "not_learning":
        track = run.tracks[0]
        note = (f"stopped: best top-1 {track.best['top1']:.2f}% < {NOT_LEARNING_TOP1}% after "
                f"epoch {track.last_eval['epoch']} (stop_if_not_learning)")
    if members.is_program(run.tracks):
        return members.finished(run.tracks, note, clock.breakdown())
    report.finished(config, run.tracks[0].workdir, run.tracks[0].result, note,
                    clock.breakdown())
    return run.tracks[0].result


# ---------------------------------------------------------------------------
# The loop


def _loop(ctx: RunContext, run: RunState, state) -> None:
    """Trains until the run ends: one iteration per global step (and one without a step where
    a resume starts at an epoch end not evaluated yet, or a signal came before a step)."""
    batches = None
    while run.epoch < ctx.config.num_epochs:
        if batches is None:
            state, batches = _begin_epoch(ctx, run, state)
        batch = None
        if run.stop_reason is None and run.step_in_epoch < run.steps_per_epoch:
            batch = next(batches, None)
            if batch is None:
                raise DataError(f"the training data of epoch {run.epoch + 1} ended after "
                                f"{run.step_in_epoch} of {run.steps_per_epoch} steps")
            state = _train_step(ctx, run, state, batch)
        if batch is None or run.stop_reason or _evaluation_due(ctx.config, run):
            ctx.bar.end_epoch()
            if run.stop_reason == "signal":
                _interrupt(ctx, run, state)
            new_best = _evaluate_and_log(ctx, run, state)
            if _after_evaluation(ctx, run, state, new_best):
                return
            batches = None


def _limit_reached(config, global_step: int) -> bool:
    return config.max_train_steps > 0 and global_step >= config.max_train_steps


def _evaluation_due(config, run: RunState) -> bool:
    return itstime(run.step, run.steps_per_epoch) or _limit_reached(config, run.step)


def _begin_epoch(ctx: RunContext, run: RunState, state):
    """(state with this epoch's keep fraction k_t, the epoch's remaining batches)."""
    for track in run.tracks:
        config = track.config
        track.keep_fraction = (ops.global_keep_schedule(
            run.epoch, float(config.keep_fraction), int(config.prune_ramp_epochs))
            if config.pruning == "global" else float(config.keep_fraction))
        if run.step_in_epoch == 0:  # else resumed inside the epoch: its sums came with it
            track.epoch_sums, track.interval = (0.0, 0.0, 0), metrics_lib.empty_interval()
    state = members.with_keep_fraction(state, run.tracks, parallel.replicated(ctx.mesh))
    run.pending = []
    run.window_start, run.window_images = time.time(), 0
    if jax.process_count() == 1 and ctx.stop.received:  # e.g. during the last evaluation
        run.stop_reason = "signal"
        return state, iter(())
    return state, iter(ctx.ds.train_batches(run.epoch, run.step_in_epoch))


def _train_step(ctx: RunContext, run: RunState, state, batch):
    """One step, then what is due after it: the log (with the finiteness check), a mid-epoch
    checkpoint, the stop on a signal."""
    config, hooks = ctx.config, ctx.hooks
    if hooks.before_step is not None:
        batch = hooks.before_step(run.step + 1, batch)
    state, metrics = ctx.p_train(state, batch)
    run.step_in_epoch += 1
    run.pending.append(metrics)  # fetched at the next log point: a fetch per step would sync
    if hooks.on_step is not None:
        hooks.on_step(run.step, ctx.stop)
    if run.step == run.first_step + 1:
        # The first step of a process includes compilation: time throughput from its end.
        jax.block_until_ready(metrics)
        run.window_start = time.time()
    else:
        run.window_images += config.batch_size
    step, spe = run.step, run.steps_per_epoch
    limit = _limit_reached(config, step)
    checkpoint_now = (itstime(step, int(config.get("checkpoint_every_steps", 0) or 0))
                      and run.step_in_epoch < spe and not limit)
    # A log interval never ends within log_every_steps of the epoch's end: the last one
    # takes the remainder (351 steps, every 50: ..., 300, 351), instead of a one-step
    # interval whose noisy mean showed as a spike in the training curves.
    log_now = itstime(run.step_in_epoch, config.log_every_steps, spe, last=True,
                      drop_close_to_last=1.0)
    sync_point = log_now or limit or checkpoint_now
    if stop_requested(ctx.stop, sync_point):
        run.stop_reason = "signal"
    if sync_point or run.stop_reason:
        _collect(run)
    if log_now or limit:  # never at a stop inside an interval: the resumed run logs it whole
        _log_train(ctx, run)
    if checkpoint_now and not run.stop_reason:
        _save(ctx, run, state)
    return state


def _save(ctx: RunContext, run: RunState, state) -> None:
    """Every track's checkpoint of where the run is."""
    for track, track_state in zip(run.tracks, members.split(state, run.tracks)):
        track.checkpointer.save(track_state, resume.checkpoint_meta(track, run, ctx.clock.elapsed()))


def _collect(run: RunState) -> None:
    """Fetches the steps' metrics since the last fetch into each track's open log interval;
    stops on a non-finite one (of any member) before anything after it is logged or saved."""
    step = run.step
    fetched = parallel.to_host(run.pending)
    run.pending = []
    mine = [members.step_metrics(fetched, track) for track in run.tracks]
    for j in range(len(fetched)):
        bad = [t.name for t, m in zip(run.tracks, mine) if not bool(m[j]["finite"])]
        if bad:
            who = f" in member{'s' if len(bad) > 1 else ''} {', '.join(bad)}" if bad[0] else ""
            raise TrainingError(
                f"non-finite loss or gradients at global step {step - len(fetched) + j + 1} "
                f"(epoch {run.epoch + 1}){who}; training stopped and nothing was saved after "
                f"it. Last good checkpoint (kept intact): {members.describe_latest(run.tracks)}. "
                "Lower --config.learning_rate or check the data, then run again")
    for track, track_metrics in zip(run.tracks, mine):
        for key in metrics_lib.TRAIN_METRICS:
            track.interval[key] += [float(f[key]) for f in track_metrics]


def _log_train(ctx: RunContext, run: RunState) -> None:
    """Writes each track's record of the log interval and updates the progress bar."""
    step, spe = run.step, run.steps_per_epoch
    images_per_s = run.window_images / max(time.time() - run.window_start, 1e-9)
    lr = float(ctx.schedule(step - 1))
    for track in run.tracks:
        losses, accs, top5 = (track.interval[k] for k in metrics_lib.TRAIN_METRICS)
        track.interval = metrics_lib.empty_interval()
        loss_sum, acc_sum, count = track.epoch_sums
        track.epoch_sums = (loss_sum + sum(losses), acc_sum + sum(accs), count + len(losses))
        track.logger.write(dict(step=step, epoch=run.epoch + run.step_in_epoch / spe,
                                split="train", loss=float(np.mean(losses)),
                                top1=100.0 * float(np.mean(accs)),
                                top5=100.0 * float(np.mean(top5)), lr=lr,
                                images_per_s=images_per_s))
    loss_sum, acc_sum, count = (sum(t.epoch_sums[i] for t in run.tracks) for i in range(3))
    ctx.bar.update(run.epoch, run.step_in_epoch, loss_sum / count, acc_sum / count,
                   images_per_s * len(run.tracks))  # a member program: all members' images
    run.window_start, run.window_images = time.time(), 0


def _interrupt(ctx: RunContext, run: RunState, state) -> None:
    """Saves where the run stopped (and a best epoch still held on the host), then raises
    ``Interrupted`` with the message ``main`` turns into the resume instructions."""
    _save(ctx, run, state)
    for track in run.tracks:
        if track.pending_best is not None:
            track.checkpointer.save(*track.pending_best, best=True, latest=False)
    # Multi-process: a process without the signal stops because another had it.
    name = spoken(ctx.stop.received)
    raise Interrupted(
        f"stopped by {name} at epoch {run.epoch + 1}, step {run.step_in_epoch} "
        f"of {run.steps_per_epoch} (global step {run.step}); checkpoint saved: "
        f"{members.describe_latest(run.tracks)}",
        exit_code=130 if ctx.stop.received == "SIGINT" else 143)


def _evaluate_and_log(ctx: RunContext, run: RunState, state) -> list[bool]:
    """Evaluates, updates each track's best top-1 and logs; returns which are a new best."""
    with ctx.clock.section("evaluation"):
        evs = members.evaluate(ctx.p_eval, state, ctx.ds, run.tracks)
    finished = run.step_in_epoch >= run.steps_per_epoch
    epoch = run.epoch + 1 if finished else run.epoch  # epochs completed
    lr = float(ctx.schedule(max(run.step - 1, 0)))
    num_epochs = ctx.config.num_epochs
    where = (f"epoch {epoch}/{num_epochs}" if finished else
             f"epoch {run.epoch + 1}/{num_epochs} step {run.step_in_epoch}/{run.steps_per_epoch}")
    new_best = []
    for track, ev in zip(run.tracks, evs):
        track.last_eval = dict(ev, epoch=epoch, split=ctx.ds.eval_split_name)
        track.best, is_new = update_best(track.best, ev, epoch)
        new_best.append(is_new)
        track.logger.write(dict(step=run.step, epoch=epoch, split="eval", loss=ev["loss"],
                                top1=ev["top1"], top5=ev["top5"], best_top1=track.best["top1"],
                                lr=lr, keep_fraction=track.keep_fraction))
        report.echo(f"{track.label}{where}: eval ({ctx.ds.eval_split_name}) "
                    f"top-1 {ev['top1']:.2f}% top-5 {ev['top5']:.2f}% loss {ev['loss']:.4f} "
                    f"(best top-1 {track.best['top1']:.2f}% at epoch {track.best['epoch']})")
    return new_best


def _after_evaluation(ctx: RunContext, run: RunState, state, new_best: list[bool]) -> bool:
    """Decides whether the run ends, moves to the next epoch and checkpoints what is due;
    returns whether the run ended."""
    config, step = ctx.config, run.step
    limit = _limit_reached(config, step)
    not_learning = (config.stop_if_not_learning and run.epoch > 1
                    and all(t.best["top1"] < NOT_LEARNING_TOP1 for t in run.tracks))
    epoch = run.tracks[0].last_eval["epoch"]
    if run.step_in_epoch >= run.steps_per_epoch:
        run.epoch, run.step_in_epoch = run.epoch + 1, 0
    last = run.epoch >= config.num_epochs or limit or not_learning
    if not_learning:
        run.stop_reason = "not_learning"
    save = last or itstime(epoch, config.checkpoint_every_epochs)
    states = (members.split(state, run.tracks) if save or any(new_best)
              else [None] * len(run.tracks))
    for track, track_state, is_new in zip(run.tracks, states, new_best):
        meta = resume.checkpoint_meta(track, run, ctx.clock.elapsed())
        if last:
            parts = meta["wall_seconds_parts"]  # every process of the run, this one up to now
            track.result = meta["result"] = report.run_result(
                track.config, ctx.ds, track.best, track.last_eval, step, epoch, sum(parts),
                run.stop_reason or ("max_train_steps" if limit else None))
            track.result["wall_seconds_parts"] = parts
        if save:
            track.checkpointer.save(track_state, meta, best=is_new)
            if track.pending_best is not None and not is_new:
                track.checkpointer.save(*track.pending_best, best=True, latest=False)
            track.pending_best = None
        elif is_new:
            # Keep the best epoch's state on the host and write it with the next checkpoint:
            # a full save at every new best would cost more than a short CIFAR epoch (and
            # ~1 GB per save for WRN-50-2).
            track.pending_best = (parallel.to_host(track_state), meta)
    if limit:
        run.stop_reason = run.stop_reason or "max_train_steps"
    return last


def update_best(best: dict, ev: dict, epoch: int) -> tuple[dict, bool]:
    """Best top-1 (model selection, with its epoch) and, separately, the best top-5."""
    top5 = max(best["top5"], ev["top5"])
    if ev["top1"] > best["top1"]:
        return dict(top1=ev["top1"], top5=top5, epoch=epoch), True
    return dict(best, top5=top5), False
