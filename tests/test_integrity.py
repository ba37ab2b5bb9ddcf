"""Damaged run files. Every checkpoint carries a sha256 manifest: a flipped byte, a truncated
file, a missing manifest (a save that did not finish) or a damaged manifest in the newest
checkpoint sends the run back to the previous complete one, with one line that says which
and why; with no intact checkpoint left the run stops with one line and status 2, deleting
nothing. A damaged result.json of a finished run is rewritten from its checkpoint, and a
damaged metrics.jsonl line is reported and dropped without losing the good records."""
import json
import os
import shutil

import pytest

from mpt_jax import checkpoint, integrity, loop
from mpt_jax.errors import CheckpointError

from test_resume import config, ds, records, snapshot, without_wall  # noqa: F401

# Whole runs in this process, each from its data to its result files; compilation_cache:
# conftest.py.
pytestmark = [pytest.mark.end_to_end, pytest.mark.usefixtures("compilation_cache")]

EPOCHS = 2  # checkpoints at the end of each epoch: global steps 7 and 14


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ds):  # noqa: F811
    """A finished run, copied by each test that damages it."""
    workdir = str(tmp_path_factory.mktemp("finished") / "run")
    result = loop.train_and_evaluate(config(), workdir, dataset=ds)
    return dict(workdir=workdir, result=result, records=records(workdir))


def copy_of(finished, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(finished["workdir"], workdir)
    return workdir


def step_dir(workdir, step, which="latest"):
    return os.path.join(workdir, "checkpoints", which, str(step))


def largest_file(directory):
    files = [os.path.join(root, n) for root, _, names in os.walk(directory) for n in names
             if n != checkpoint.MANIFEST]
    return max(files, key=os.path.getsize)


def flip_byte(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x40]))


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 7)


def no_manifest(directory):
    os.remove(os.path.join(directory, checkpoint.MANIFEST))


def damaged_manifest(directory):
    path = os.path.join(directory, checkpoint.MANIFEST)
    body = json.load(open(path))
    body["meta"]["global_step"] = 15
    json.dump(body, open(path, "w"))


DAMAGES = {
    "flipped byte": (lambda d: flip_byte(largest_file(d)), "does not match its sha256 checksum"),
    "truncated file": (lambda d: truncate(largest_file(d)), "(truncated or changed)"),
    "no manifest": (no_manifest, "has no checksum manifest (its save did not finish)"),
    "damaged manifest": (damaged_manifest, "its checksum manifest is damaged"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, ds, finished, capsys,  # noqa: F811
                                                              damage):
    workdir = copy_of(finished, tmp_path)
    damage_fn, why = DAMAGES[damage]
    damage_fn(step_dir(workdir, 14))
    capsys.readouterr()
    result = loop.train_and_evaluate(config(), workdir, dataset=ds)
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("warning: skipped damaged")]
    assert len(notes) == 1, out
    assert f"{step_dir(workdir, 14)} (global step 14): " in notes[0] and why in notes[0]
    assert f"continuing from the previous complete one, {step_dir(workdir, 7)} (global step 7, " \
        "end of epoch 1)" in notes[0]
    assert "resuming" in out and "(global step 7)" in out
    # Epoch 2 trained again: the same result and logs as the run that was never damaged.
    assert without_wall(result) == without_wall(finished["result"])
    assert records(workdir) == finished["records"]
    # The damaged save was set aside (kept for inspection), out of orbax's sight.
    aside = os.listdir(os.path.join(workdir, "checkpoints", checkpoint.DAMAGED))
    assert len(aside) == 1 and aside[0].startswith("latest-14-")
    assert checkpoint.find_checkpoint(workdir).step == 14  # written anew, intact


def test_no_intact_checkpoint_stops_and_deletes_nothing(tmp_path, ds, finished):  # noqa: F811
    workdir = copy_of(finished, tmp_path)
    flip_byte(largest_file(step_dir(workdir, 14)))
    truncate(largest_file(step_dir(workdir, 7)))
    before = snapshot(workdir)
    with pytest.raises(CheckpointError) as e:
        loop.train_and_evaluate(config(), workdir, dataset=ds)
    message = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in message
    assert message.startswith(f"no intact latest checkpoint in {workdir}/checkpoints/latest "
                              "(step 14: ")
    assert "; step 7: " in message and "nothing was deleted" in message
    assert "--config.restart=True" in message
    assert snapshot(workdir) == before
    with pytest.raises(CheckpointError, match="no intact latest checkpoint"):
        checkpoint.load_for_inference(workdir)


def test_damaged_best_checkpoint_is_refused_by_name(tmp_path, finished):
    workdir = copy_of(finished, tmp_path)
    best = checkpoint.find_checkpoint(workdir, "best")
    flip_byte(largest_file(best.path))
    with pytest.raises(CheckpointError, match=rf"no intact best checkpoint .*step {best.step}: "
                       r".* does not match its sha256 checksum"):
        checkpoint.load_for_inference(workdir, "best")


def test_damaged_result_json_of_a_finished_run_is_rewritten(tmp_path, ds, finished, capsys):  # noqa: F811
    workdir = copy_of(finished, tmp_path)
    path = os.path.join(workdir, "result.json")
    with open(path, "w") as f:
        f.write('{"final_top1": 99.9, "trunc')
    # Rewritten from the final checkpoint, which holds all of the result but the time
    # breakdown (measured after that checkpoint was written, kept only in result.json).
    expected = {k: v for k, v in finished["result"].items() if k != "time_breakdown"}
    assert loop.train_and_evaluate(config(), workdir, dataset=ds) == expected
    assert "is complete" in capsys.readouterr().out
    with open(path) as f:
        assert json.load(f) == expected


def test_damaged_metrics_line_is_reported_and_dropped(tmp_path, ds, finished, capsys):  # noqa: F811
    workdir = copy_of(finished, tmp_path)
    path = os.path.join(workdir, "metrics.jsonl")
    lines = open(path).read().splitlines(keepends=True)
    lines[1] = lines[1][:10] + "\x00garbage" + lines[1][20:]
    with open(path, "w") as f:
        f.writelines(lines)
    capsys.readouterr()
    loop.train_and_evaluate(config(), workdir, dataset=ds)
    out = capsys.readouterr().out
    assert f"warning: {path} line 2 is damaged" in out and "the other records are kept" in out
    assert records(workdir) == finished["records"][:1] + finished["records"][2:]


def test_damaged_metrics_line_before_a_resume_point(tmp_path, ds, finished):  # noqa: F811
    """Interrupted at step 8, a damaged first record: the resumed run keeps every good
    record and logs the steps after the checkpoint once."""
    import signal

    def on_step(step, stop):
        if step == 8:
            os.kill(os.getpid(), signal.SIGTERM)

    workdir = str(tmp_path / "run")
    from mpt_jax.errors import Interrupted
    with pytest.raises(Interrupted):
        loop.train_and_evaluate(config(), workdir, dataset=ds, hooks=loop.Hooks(on_step=on_step))
    path = os.path.join(workdir, "metrics.jsonl")
    lines = open(path).read().splitlines(keepends=True)
    with open(path, "w") as f:
        f.writelines(["{not json\n"] + lines[1:])
    loop.train_and_evaluate(config(), workdir, dataset=ds)
    assert records(workdir) == finished["records"][1:]


def fake_save(workdir, step, payload=b"weights"):
    """A save directory as orbax leaves it (one data file) with its manifest."""
    path = step_dir(workdir, step)
    os.makedirs(path)
    with open(os.path.join(path, "data"), "wb") as f:
        f.write(payload + bytes([step]))
    meta = dict(global_step=step, epoch=step // 10, step_in_epoch=0)
    integrity.write_manifest(path, meta)
    return path


def test_a_member_program_resumes_from_the_newest_step_all_members_saved_intact(tmp_path):
    a, b, c = (str(tmp_path / name) for name in "abc")
    for workdir in (a, b, c):
        fake_save(workdir, 10)
        fake_save(workdir, 20)
    fake_save(a, 30)  # a save the other members did not reach: not common
    with open(os.path.join(step_dir(b, 20), "data"), "r+b") as f:
        f.write(b"X")  # member b's step 20 is damaged: every member goes back to 10
    found = integrity.find_common([a, b, c])
    assert [f.step for f in found] == [10, 10, 10]
    assert [f.meta["global_step"] for f in found] == [10, 10, 10]
    assert [[(s, why) for s, _, why in f.damaged] for f in found] == [
        [], [(20, "data does not match its sha256 checksum (the file is corrupt)")], []]
    # All of them intact at 20: 20.
    shutil.rmtree(step_dir(b, 20))
    fake_save(b, 20)
    assert [f.step for f in integrity.find_common([a, b, c])] == [20, 20, 20]
    # No step that every member saved: a new program (None), nothing refused.
    assert integrity.find_common([a, str(tmp_path / "empty")]) is None
    # Common saves, none intact everywhere: one line, nothing deleted.
    for step in (10, 20):
        os.remove(os.path.join(step_dir(c, step), integrity.MANIFEST))
    with pytest.raises(CheckpointError, match=r"^no global step that every member saved "
                       r"intact \(.*20: it has no checksum manifest.*nothing was deleted"):
        integrity.find_common([a, b, c])
    assert sorted(os.listdir(os.path.join(c, "checkpoints", "latest"))) == ["10", "20"]
