"""Faults that stop a run: non-finite steps, a failing checkpoint save (disk full),
a workdir holding another run's checkpoint. Real ``python -m mpt_jax.main`` subprocesses (the
injected faults through tests/fault_driver.py, the same command line with ``loop.Hooks``)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from mpt_jax import checkpoint

pytestmark = pytest.mark.multiprocess  # real runs of python -m mpt_jax.main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "tests", "fault_driver.py")
TIMEOUT = 120


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("xla_cache"))
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def main(workdir, env, *args, faults=()):
    program = [DRIVER, *faults, "--"] if faults else ["-m", "mpt_jax.main"]
    proc = subprocess.run([sys.executable, *program, "--config=configs/smoke.py",
                           f"--workdir={workdir}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    return proc.returncode, proc.stdout, proc.stderr


def one_error_line(err):
    assert "Traceback" not in err, err[-3000:]
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def all_finite(tree):
    return all(np.all(np.isfinite(np.asarray(x))) for x in
               __import__("jax").tree.leaves(tree))


def test_nonfinite_step_stops_and_keeps_last_good_checkpoint(tmp_path, env):
    workdir = str(tmp_path / "run")
    # Global step 30 (epoch 2) gets NaN inputs; checkpoints every 5 steps + epoch ends.
    rc, out, err = main(workdir, env, "--config.checkpoint_every_steps=5",
                        faults=["--nan_at_step=30"])
    assert rc == 3, err[-3000:]
    line = one_error_line(err)
    assert "non-finite loss or gradients at global step 30 (epoch 2)" in line
    good = os.path.join(workdir, "checkpoints", "latest", "25")
    assert f"Last good checkpoint (kept intact): {good} (global step 25" in line
    loaded = checkpoint.load_for_inference(workdir)
    assert loaded["metrics"]["step"] == 25 and all_finite(loaded["params"])
    assert sorted(os.listdir(os.path.dirname(good))) == ["22", "25"]  # nothing after the NaN


def test_failed_save_keeps_previous_checkpoint(tmp_path, env):
    workdir = str(tmp_path / "run")
    # The save at the end of epoch 1 (step 22) raises ENOSPC after part of it was written.
    rc, out, err = main(workdir, env, "--config.checkpoint_every_steps=10",
                        faults=["--fail_save_at_epoch=1"])
    assert rc == 4, err[-3000:]
    line = one_error_line(err)
    assert "could not write checkpoint step 22" in line and "No space left on device" in line
    assert "previous checkpoint is intact" in line and "global step 20" in line
    loaded = checkpoint.load_for_inference(workdir)
    assert loaded["metrics"]["step"] == 20 and all_finite(loaded["params"])
    # The next run (disk "freed") resumes from it and finishes.
    rc, out, err = main(workdir, env, "--config.checkpoint_every_steps=10")
    assert rc == 0, err[-3000:]
    assert "global step 20" in out and "final accuracy" in out


def test_other_runs_checkpoint_is_refused_unless_restart(tmp_path, env):
    workdir = str(tmp_path / "run")
    rc, _, err = main(workdir, env, "--config.max_train_steps=2")
    assert rc == 0, err[-3000:]
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest")))
    rc, out, err = main(workdir, env, "--config.max_train_steps=2", "--config.keep_fraction=0.3")
    assert rc == 2
    line = one_error_line(err)
    assert "holds a checkpoint of a different run" in line
    assert "keep_fraction: checkpoint 0.5 vs config 0.3" in line
    assert "--config.restart=True" in line
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest"))) == before
    rc, out, err = main(workdir, env, "--config.max_train_steps=2", "--config.keep_fraction=0.3",
                        "--config.restart=True")
    assert rc == 0, err[-3000:]
    assert "resuming" not in out
    assert checkpoint.load_for_inference(workdir)["config"].keep_fraction == 0.3


def test_unwritable_workdir_fails_before_training(tmp_path, env):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a directory")
    rc, out, err = main(str(blocker / "run"), env)
    assert rc == 2
    assert "is not writable" in one_error_line(err)
    assert "epoch" not in out  # nothing was trained


def test_too_little_free_space_is_refused(tmp_path):
    import shutil
    free = shutil.disk_usage(str(tmp_path)).free
    from mpt_jax.errors import CheckpointError
    with pytest.raises(CheckpointError, match=r"MiB free but the checkpoints need about"):
        checkpoint.check_free_space(str(tmp_path), free * 2)
    checkpoint.check_free_space(str(tmp_path), 1)  # enough room: no error
