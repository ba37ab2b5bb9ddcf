"""mpt_jax.loop: the periodic predicate ``itstime``, the run state, and faults injected
through ``loop.Hooks`` into an in-process run (NaN inputs, a real SIGTERM at a chosen step,
a failing checkpoint save): each stops the run where and how the command line promises."""
import errno
import json
import os
import signal

import chex
import pytest

from mpt_jax import checkpoint, loop, members, parallel
from mpt_jax.errors import CheckpointWriteError, Interrupted, TrainingError

from test_train import TinyDataset, tiny_config  # the same tiny run (6 steps per epoch)


pytestmark = pytest.mark.usefixtures("compilation_cache")  # conftest.py


# ---------------------------------------------------------------------------
# itstime and RunState


def due(every, total, **kw):
    return [s for s in range(1, total + 1) if loop.itstime(s, every, total, **kw)]


def test_itstime_every_n_steps():
    assert due(5, 22) == [5, 10, 15, 20]
    assert due(5, 22, last=True) == [5, 10, 15, 20, 22]
    assert due(5, 20, last=True) == [5, 10, 15, 20]  # the last point is not doubled
    assert due(0, 22) == [] and due(-1, 22) == []  # off
    assert due(0, 22, last=True) == [22]
    assert loop.itstime(30, 5) and not loop.itstime(31, 5)  # no total: just the period


def test_itstime_drops_a_point_close_to_the_end():
    """The log rule: an epoch's last interval takes the remainder instead of ending in a
    short one (22 steps every 5: 5, 10, 15, 22, not ..., 20, 22; 351 every 50: ..., 300, 351)."""
    assert due(5, 22, last=True, drop_close_to_last=1.0) == [5, 10, 15, 22]
    assert due(5, 25, last=True, drop_close_to_last=1.0) == [5, 10, 15, 20, 25]
    assert due(50, 351, last=True, drop_close_to_last=1.0) == [50, 100, 150, 200, 250, 300, 351]
    assert due(50, 340, last=True, drop_close_to_last=1.0) == [50, 100, 150, 200, 250, 340]
    assert due(50, 340, last=True, drop_close_to_last=0.5) == [50, 100, 150, 200, 250, 300, 340]
    assert due(4, 6, last=True, drop_close_to_last=1.0) == [6]


def test_run_state_global_step():
    run = loop.RunState(steps_per_epoch=22, epoch=2, step_in_epoch=5)
    assert run.step == 49
    run.step_in_epoch = 22  # an epoch's end that was not evaluated yet
    assert run.step == 66
    # What is recorded per run (best, evaluations, result) lives in its track.
    track = members.Track(config=None, workdir="", checkpointer=None)
    assert track.best == dict(top1=-1.0, top5=-1.0, epoch=0)
    assert track.label == "" and members.Track(None, "", None, name="m", index=0).label == "[m] "


# ---------------------------------------------------------------------------
# Hooks: faults in an in-process run


@pytest.mark.end_to_end  # a whole run in this process
def test_nan_step_stops_with_the_last_good_checkpoint(tmp_path):
    ds = TinyDataset(parallel.make_mesh())
    seen = []

    def before_step(step, batch):
        seen.append(step)
        return dict(batch, image=batch["image"] * float("nan")) if step == 5 else batch

    workdir = str(tmp_path / "run")
    with pytest.raises(TrainingError) as e:
        loop.train_and_evaluate(tiny_config(checkpoint_every_steps=2), workdir, dataset=ds,
                                hooks=loop.Hooks(before_step=before_step))
    # Step 5 is found at the epoch's end (the next log point, step 6); nothing is saved after.
    assert seen == [1, 2, 3, 4, 5, 6]
    assert "non-finite loss or gradients at global step 5 (epoch 1)" in str(e.value)
    assert f"{os.path.join(workdir, 'checkpoints', 'latest', '4')} (global step 4" in str(e.value)
    assert e.value.exit_code == 3
    assert checkpoint.load_for_inference(workdir)["metrics"]["step"] == 4


@pytest.mark.end_to_end  # a whole run in this process
@pytest.mark.parametrize("stop_at,where", [(3, "epoch 1, step 3 of 6 (global step 3)"),
                                           (6, "epoch 1, step 6 of 6 (global step 6)")])
def test_sigterm_after_a_step_saves_it_and_the_rerun_ends_like_an_uninterrupted_run(
        tmp_path, stop_at, where):
    """A real SIGTERM during step ``stop_at``: the step finishes and is saved, the run stops
    with exit code 143; the rerun resumes there (step 6: the epoch's end, evaluated only by
    the rerun) and ends with the uninterrupted run's state, result and evaluations."""
    ds = TinyDataset(parallel.make_mesh())
    straight = loop.train_and_evaluate(tiny_config(), str(tmp_path / "straight"), dataset=ds)

    def on_step(step, stop):
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.received == "SIGTERM"

    workdir = str(tmp_path / "run")
    with pytest.raises(Interrupted) as e:
        loop.train_and_evaluate(tiny_config(), workdir, dataset=ds,
                                hooks=loop.Hooks(on_step=on_step))
    assert e.value.exit_code == 143
    assert str(e.value).startswith(f"stopped by SIGTERM at {where}; checkpoint saved: ")
    assert checkpoint.load_for_inference(workdir)["metrics"]["step"] == stop_at
    resumed = loop.train_and_evaluate(tiny_config(), workdir, dataset=ds)
    assert without_wall(resumed) == without_wall(straight)
    # The wall time of both processes, each up to its last checkpoint, and their sum.
    assert len(resumed["wall_seconds_parts"]) == 2 and len(straight["wall_seconds_parts"]) == 1
    assert resumed["wall_seconds"] == pytest.approx(sum(resumed["wall_seconds_parts"]), abs=0.02)
    a = checkpoint.load_for_inference(str(tmp_path / "straight"))
    b = checkpoint.load_for_inference(workdir)
    chex.assert_trees_all_equal(a["params"], b["params"])
    evals = [r["epoch"] for r in _records(workdir) if r["split"] == "eval"]
    assert evals == [1, 2]


@pytest.mark.end_to_end  # a whole run in this process
def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    ds = TinyDataset(parallel.make_mesh())

    def during_save(meta, directory):
        assert ".orbax-checkpoint-tmp" in directory  # inside the save, before it is final
        if meta["global_step"] == 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), directory)

    workdir = str(tmp_path / "run")
    with pytest.raises(CheckpointWriteError) as e:
        loop.train_and_evaluate(tiny_config(checkpoint_every_steps=4), workdir, dataset=ds,
                                hooks=loop.Hooks(during_checkpoint_save=during_save))
    message = str(e.value)
    assert "could not write checkpoint step 6" in message and "No space left on device" in message
    assert "previous checkpoint is intact" in message and "(global step 4," in message
    assert e.value.exit_code == 4
    assert checkpoint.load_for_inference(workdir)["metrics"]["step"] == 4


def without_wall(result):
    """result.json without its timings (wall time, its parts and their breakdown)."""
    return {k: v for k, v in result.items()
            if not k.startswith("wall_seconds") and k != "time_breakdown"}


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]
