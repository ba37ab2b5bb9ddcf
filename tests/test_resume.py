"""A run stopped at any step and resumed writes what one run without the stop writes:
metrics.jsonl record for record, TensorBoard's scalars, the console's progress lines and
result.json (wall-clock fields aside, which add up the parts instead). In-process runs of the
tiny model with a real SIGTERM sent from ``loop.Hooks.on_step``; and resumes that must be
refused: a changed schedule (nothing on disk changes), damaged checkpoints and logs."""
import json
import os
import re
import signal

import pytest

from mpt_jax import checkpoint, config_fields, loop, parallel, resume
from mpt_jax.errors import CheckpointError, Interrupted

from test_train import TinyDataset, tiny_config

SPE, LOG = 7, 3  # 112 examples / batch 16; log points 3 and 7 of every epoch (7 - 6 < 3)
WALL_CLOCK = ("time", "images_per_s")


pytestmark = pytest.mark.usefixtures("compilation_cache")  # conftest.py


@pytest.fixture(scope="module")
def ds():
    return TinyDataset(parallel.make_mesh(), num_train=16 * SPE)


def config(**kw):
    return tiny_config(**dict(dict(log_every_steps=LOG, progress_bar=True), **kw))


def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in f]


def tensorboard_scalars(workdir):
    """{tag: [(step, value)]} as TensorBoard shows them (its loader purges what a restart
    orphaned), read with the tensorboard package's own event reader."""
    from tensorboard.backend.event_processing import event_accumulator
    acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"] if not tag.endswith("images_per_s")}


def progress_lines(text):
    """The progress bar's lines without their timings (img/s, ETA)."""
    return [re.sub(r" [\d,]+ img/s, epoch ETA .*$", "", line) for line in text.splitlines()
            if re.match(r"epoch \d+/\d+ \[", line)]


def without_wall(result):
    """result.json without its timings (wall time, its parts and their breakdown)."""
    return {k: v for k, v in result.items()
            if not k.startswith("wall_seconds") and k != "time_breakdown"}


def sigterm_at(stop_at):
    def on_step(step, stop):
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
    return loop.Hooks(on_step=on_step)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, ds):
    """The uninterrupted run: its workdir, result and console output."""
    workdir = str(tmp_path_factory.mktemp("straight") / "run")
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = loop.train_and_evaluate(config(), workdir, dataset=ds)
    return dict(workdir=workdir, result=result, out=out.getvalue())


def assert_same_logs(workdir, straight):
    assert records(workdir) == records(straight["workdir"])
    assert tensorboard_scalars(workdir) == tensorboard_scalars(straight["workdir"])


# Inside the first interval, at its end (a log point), just after it, inside the epoch's last
# (longer) interval, at the epoch's end (before its evaluation), in the second epoch.
@pytest.mark.end_to_end  # a whole run in this process
@pytest.mark.parametrize("stops", [(1,), (3,), (4,), (6,), (7,), (8,), (13,), (2, 5, 10)])
def test_logs_after_stops_equal_the_uninterrupted_runs(tmp_path, ds, straight, capsys, stops):
    workdir = str(tmp_path / "run")
    capsys.readouterr()
    out = ""
    for stop_at in stops:
        with pytest.raises(Interrupted):
            loop.train_and_evaluate(config(), workdir, dataset=ds, hooks=sigterm_at(stop_at))
        assert checkpoint.find_checkpoint(workdir).meta["global_step"] == stop_at
        # A stop inside a log interval writes no record: its steps wait in the checkpoint.
        assert all(r["step"] <= stop_at for r in records(workdir))
        out += capsys.readouterr().out
    result = loop.train_and_evaluate(config(), workdir, dataset=ds)
    out += capsys.readouterr().out
    assert_same_logs(workdir, straight)
    assert [r["step"] for r in records(workdir) if r["split"] == "train"] == [3, 7, 10, 14]
    assert progress_lines(out) == progress_lines(straight["out"])
    assert len(progress_lines(out)) == 4
    assert without_wall(result) == without_wall(straight["result"])
    parts = result["wall_seconds_parts"]
    assert len(parts) == len(stops) + 1 and all(p > 0 for p in parts)
    assert result["wall_seconds"] == pytest.approx(sum(parts), abs=0.05)
    with open(os.path.join(workdir, "result.json")) as f:
        assert json.load(f) == result


class Killed(BaseException):
    """Ends a run at once, like SIGKILL: no checkpoint is written for it."""


@pytest.mark.end_to_end  # a whole run in this process
def test_kill_after_a_checkpoint_inside_a_log_interval(tmp_path, ds, straight):
    """checkpoint_every_steps=2 saves steps 2, 4, ... inside the log intervals; a run killed
    at step 6 resumes from step 4 with the interval's step 4 from the checkpoint."""
    def on_step(step, stop):
        if step == 6:
            raise Killed()

    workdir = str(tmp_path / "run")
    with pytest.raises(Killed):
        loop.train_and_evaluate(config(checkpoint_every_steps=2), workdir, dataset=ds,
                                hooks=loop.Hooks(on_step=on_step))
    meta = checkpoint.find_checkpoint(workdir).meta
    assert meta["global_step"] == 4 and len(meta["log_interval"]["loss"]) == 1
    loop.train_and_evaluate(config(checkpoint_every_steps=2), workdir, dataset=ds)
    assert_same_logs(workdir, straight)


# ---------------------------------------------------------------------------
# A changed schedule


def snapshot(workdir):
    """Every file below ``workdir`` with its size and modification time."""
    out = {}
    for root, _, names in os.walk(workdir):
        for name in names:
            st = os.stat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), workdir)] = (st.st_size, st.st_mtime_ns)
    return out


def test_schedule_fields_are_config_fields():
    assert set(resume.SCHEDULE_FIELDS) <= set(config_fields.BY_NAME)
    assert config_fields.BY_NAME["accept_schedule_change"].default is False


@pytest.mark.end_to_end  # a whole run in this process
def test_a_changed_schedule_is_refused_unless_accepted(tmp_path, ds):
    workdir = str(tmp_path / "run")
    loop.train_and_evaluate(config(num_epochs=1), workdir, dataset=ds)
    before = snapshot(workdir)
    with pytest.raises(CheckpointError) as e:
        loop.train_and_evaluate(config(num_epochs=2), workdir, dataset=ds)
    message = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in message
    assert "(num_epochs: checkpoint 1 vs config 2)" in message
    assert "--config.accept_schedule_change=True" in message
    assert "--config.restart=True" in message
    with pytest.raises(CheckpointError) as e:
        loop.train_and_evaluate(config(num_epochs=2, learning_rate=0.05, seed=1), workdir,
                                dataset=ds)
    assert ("num_epochs: checkpoint 1 vs config 2; learning_rate: checkpoint 0.1 vs config "
            "0.05; seed: checkpoint 0 vs config 1") in str(e.value)
    assert snapshot(workdir) == before  # nothing on disk changed
    # A field that shapes neither: the finished run's stored result.
    assert loop.train_and_evaluate(config(num_epochs=1, log_every_steps=2), workdir,
                                   dataset=ds)["epochs_completed"] == 1
    result = loop.train_and_evaluate(config(num_epochs=2, accept_schedule_change=True),
                                     workdir, dataset=ds)
    assert result["epochs_completed"] == 2
    # From there on the new schedule is the run's own.
    assert loop.train_and_evaluate(config(num_epochs=2), workdir, dataset=ds) == result
