"""Soak: 30 stops of one run of configs/smoke.py (3 epochs, a checkpoint every 5 steps) by
real signals at random points, each followed by the same command again: SIGTERM and
SIGKILL after a random step, and SIGKILL inside a checkpoint write (tests/fault_driver.py
pauses there). The run then ends with the uninterrupted run's scores, masks, BatchNorm
statistics, metrics.jsonl, TensorBoard scalars and result.json (wall time aside).

The random points come from a fixed seed, so every run of the test tries the same ones."""
import random
import signal

import pytest

from mpt_jax import checkpoint

from test_faults import SPE, assert_same_run, env, finish, reference, run, start, wait_for  # noqa: F401

STOPS = 30
LAST = 3 * SPE  # global steps of the run
SAVED = sorted({s for s in range(5, LAST + 1, 5) if s % SPE} | {SPE, 2 * SPE, LAST})


def position(workdir):
    found = checkpoint.find_checkpoint(workdir)
    return 0 if found is None else found.meta["global_step"]


@pytest.mark.multiprocess
@pytest.mark.timeout(600)
def test_thirty_stops_end_as_the_uninterrupted_run(tmp_path, env, reference):  # noqa: F811
    rng = random.Random(1234)
    workdir = str(tmp_path / "run")
    kinds = []
    while len(kinds) < STOPS:
        at = position(workdir)
        assert not checkpoint.find_checkpoint(workdir) or \
            not checkpoint.find_checkpoint(workdir).meta.get("result"), "finished too early"
        # A few steps past the checkpoint, so that 30 stops fit in the run's 66 steps.
        step = rng.randint(at + 1, min(at + 4, LAST)) if at < LAST else None
        saves = [s for s in SAVED if at < s <= at + 6] or [LAST]
        kind = rng.choice(["SIGTERM", "SIGKILL", "SIGKILL in save"]) if step else \
            "SIGKILL in save"
        if kind == "SIGKILL in save":
            at_save = rng.choice(saves)
            proc = start(workdir, env, faults=[f"--pause_in_save={at_save}"])
            wait_for(proc, f"test-hook: pausing inside the save of step {at_save}")
            proc.send_signal(signal.SIGKILL)
            rc, _, _ = finish(proc)
            assert rc == -signal.SIGKILL
        else:
            proc = start(workdir, env, faults=[f"--pause_after_step={step}"])
            wait_for(proc, f"test-hook: paused after step {step}")
            proc.send_signal(getattr(signal, kind))
            rc, _, err = finish(proc)
            assert rc == (143 if kind == "SIGTERM" else -signal.SIGKILL), err[-2000:]
            if kind == "SIGTERM":
                assert position(workdir) == step  # the step that was running was saved
        kinds.append(kind)
    assert {"SIGTERM", "SIGKILL", "SIGKILL in save"} <= set(kinds)
    rc, out, err = run(workdir, env)
    assert rc == 0, err[-3000:]
    assert "final accuracy" in out
    assert_same_run(workdir, reference)
