"""Faults: real subprocesses of ``python -m mpt_jax.main`` and real signals, no mocks.

One tiny run (configs/smoke.py: 32-unit biprop MLP on the embedded digits, 22 steps/epoch,
3 epochs, a checkpoint every 5 global steps) is trained once without interruption; the
interrupted runs below must end bit-identical to it (same XLA program on the same CPU: the
data order is a pure function of (seed, epoch) and every piece of state is checkpointed).
Test hooks (tests/fault_driver.py: mpt_jax.main's command line with ``loop.Hooks``) only pause
a run at a known point; the kill / terminate itself is a real signal sent with
``Popen.send_signal``.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mpt_jax import checkpoint, ops

pytestmark = pytest.mark.multiprocess  # real runs of python -m mpt_jax.main and real signals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "tests", "fault_driver.py")
SPE = 22  # digits: 1,438 training images // batch 64
ARGS = ("--config=configs/smoke.py", "--config.num_epochs=3", "--config.checkpoint_every_steps=5")
TIMEOUT = 120


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("xla_cache"))  # later subprocesses skip compilation
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def start(workdir, env, *extra, faults=(), logs=None):
    """``python -m mpt_jax.main``, or with ``faults`` (e.g. "--pause_after_step=3") the same
    command line through tests/fault_driver.py. Its stdout / stderr go to files in ``logs``
    (default: next to the workdir)."""
    logs = logs or os.path.dirname(workdir)
    out = open(os.path.join(logs, os.path.basename(workdir) + ".out"), "w+")
    err = open(out.name[:-4] + ".err", "w+")
    program = [DRIVER, *faults, "--"] if faults else ["-m", "mpt_jax.main"]
    proc = subprocess.Popen([sys.executable, *program, *ARGS, f"--workdir={workdir}", *extra],
                            cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
    proc.out_path, proc.err_path = out.name, err.name
    return proc


def finish(proc, timeout=TIMEOUT):
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return rc, open(proc.out_path).read(), open(proc.err_path).read()


def run(workdir, env, *extra):
    return finish(start(workdir, env, *extra))


def wait_for(proc, marker, timeout=TIMEOUT):
    t = time.time()
    while time.time() - t < timeout:
        if marker in open(proc.out_path).read():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {marker!r}: "
                                 + open(proc.err_path).read()[-2000:])
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"timed out waiting for {marker!r}")


def load_state(workdir, which="latest"):
    return checkpoint.load_for_inference(workdir, which)


def metrics_records(workdir):
    recs = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in recs]


def tensorboard_scalars(workdir):
    """{tag: [(step, value), ...]} as TensorBoard shows them (its loader, with its purge of
    data orphaned by a restart), without the timing scalar."""
    from tensorboard.backend.event_processing import event_accumulator
    acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"] if not tag.endswith("images_per_s")}


def result(workdir):
    r = json.load(open(os.path.join(workdir, "result.json")))
    r.pop("wall_seconds")
    r.pop("time_breakdown", None)  # timings of the last process alone
    r.pop("wall_seconds_parts")
    return r


def ticket(params, keep_fraction=0.5):
    """The mask of every layer, from the scores in float64 NumPy: the kept_count largest |s|."""
    masks = {}
    for layer, leaves in params.items():
        s = np.abs(np.asarray(leaves["scores"], np.float64)).ravel()
        k = ops.kept_count(s.size, keep_fraction)
        thresh = np.sort(s)[::-1][k - 1]
        masks[layer] = (s >= thresh).reshape(np.shape(leaves["scores"]))
        assert masks[layer].sum() == k  # no ties at the threshold
    return masks


def assert_same_run(workdir, reference):
    a, b = load_state(workdir), load_state(reference)
    assert a["metrics"]["step"] == b["metrics"]["step"] == 3 * SPE
    for col in ("params", "frozen", "batch_stats"):
        np.testing.assert_equal(a[col], b[col])  # bit-exact
    ta, tb = ticket(a["params"]), ticket(b["params"])
    for layer in tb:
        assert np.array_equal(ta[layer], tb[layer])
    assert result(workdir) == result(reference)
    assert metrics_records(workdir) == metrics_records(reference)
    # The steps replayed after the checkpoint appear once in TensorBoard, as in the reference.
    assert tensorboard_scalars(workdir) == tensorboard_scalars(reference)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """The uninterrupted run."""
    workdir = str(tmp_path_factory.mktemp("ref") / "run")
    rc, out, err = run(workdir, env)
    assert rc == 0, err[-3000:]
    assert "final accuracy" in out
    return workdir


def test_sigkill_mid_epoch_2_resumes_bit_exact(tmp_path, env, reference):
    workdir = str(tmp_path / "run")
    # Pause after global step 33 = epoch 2, step 11 of 22; the last checkpoint is step 30.
    proc = start(workdir, env, faults=["--pause_after_step=33"])
    wait_for(proc, "test-hook: paused after step 33")
    proc.send_signal(signal.SIGKILL)
    rc, _, _ = finish(proc)
    assert rc == -signal.SIGKILL
    assert load_state(workdir)["metrics"]["step"] == 30
    rc, out, err = run(workdir, env)  # the same command again
    assert rc == 0, err[-3000:]
    assert "resuming" in out and "epoch 2, step 8 (global step 30)" in out
    assert_same_run(workdir, reference)


def test_sigterm_checkpoints_and_prints_resume_command(tmp_path, env, reference):
    workdir = str(tmp_path / "run")
    proc = start(workdir, env, "--config.restart=True", faults=["--pause_after_step=27"])
    wait_for(proc, "test-hook: paused after step 27")
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc)
    assert rc == 143
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    # Stopped as asked, not failed: a plain line, not an "error:".
    assert line.startswith("stopped by SIGTERM at epoch 2, step 5 of 22 (global step 27)")
    # The step that was running finished and was saved (not the last periodic one, 25).
    assert load_state(workdir)["metrics"]["step"] == 27
    command = line.split("; resume with: ")[1]
    assert "--config.restart" not in command and f"--workdir={workdir}" in command
    import shlex
    argv = shlex.split(command)
    assert argv[:3] == [sys.executable, "-m", "mpt_jax.main"]
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 2, step 5 (global step 27)" in proc.stdout
    assert_same_run(workdir, reference)


def test_sigkill_during_checkpoint_write_is_never_read(tmp_path, env, reference):
    workdir = str(tmp_path / "run")
    latest = os.path.join(workdir, "checkpoints", "latest")
    # Step 44 = end of epoch 2: killed while orbax writes its temporary directory.
    proc = start(workdir, env, faults=["--pause_in_save=44"])
    wait_for(proc, "test-hook: pausing inside the save of step 44")
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    names = os.listdir(latest)
    assert "44" not in names and any(n.startswith("44.orbax-checkpoint-tmp") for n in names)
    assert load_state(workdir)["metrics"]["step"] == 40  # the last complete save
    rc, out, err = run(workdir, env)
    assert rc == 0, err[-3000:]
    assert "global step 40" in out
    assert not any("tmp" in n for n in os.listdir(latest))  # cleaned up on the next run
    assert_same_run(workdir, reference)


def test_ctrl_c_finishes_the_step_and_saves(tmp_path, env):
    workdir = str(tmp_path / "run")
    proc = start(workdir, env, faults=["--pause_after_step=3"])
    wait_for(proc, "test-hook: paused after step 3")
    proc.send_signal(signal.SIGINT)
    rc, _, err = finish(proc)
    assert rc == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        "stopped by Ctrl-C at epoch 1, step 3 of 22 (global step 3); checkpoint saved: ")
    assert "error:" not in err
    assert load_state(workdir)["metrics"]["step"] == 3


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs (a file system that really fills), unmounted afterwards; skipped with
    the reason where this machine cannot mount one (not root, no mount namespace rights)."""
    mount_point = tmp_path / "disk_mount"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        reason = f"cannot mount a small tmpfs here ({proc.stderr.strip() or proc.returncode})"
        print(f"SKIPPED: {reason}; the injected ENOSPC test covers the message")
        pytest.skip(reason)
    try:
        yield str(mount_point)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_real_disk_full_keeps_the_last_checkpoint_and_resumes(small_disk, env, reference,
                                                              tmp_path):
    """The disk really fills after global step 12 (a file written by the test hook until
    ENOSPC): the run's next writes fail, it exits 4 with one line naming the intact
    checkpoint (step 10); once the space is back the same command resumes from it and ends
    as the uninterrupted run."""
    workdir = os.path.join(small_disk, "run")
    logs = str(tmp_path)  # the run's console output is kept off the full disk
    rc, out, err = finish(start(workdir, env, faults=["--fill_disk_after_step=12"], logs=logs))
    assert "test-hook: filled the disk after step 12" in out
    assert rc == 4, err[-3000:]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: could not write ") and "No space left on device" in line
    assert "run the same command again to resume" in line
    assert load_state(workdir)["metrics"]["step"] == 10
    os.remove(workdir + ".filler")  # space is back
    rc, out, err = finish(start(workdir, env, logs=logs))
    assert rc == 0, err[-3000:]
    assert "resuming" in out and "(global step 10)" in out
    assert_same_run(workdir, reference)
