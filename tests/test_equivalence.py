"""Scale and equivalence: the same 6 training steps of configs/smoke.py through
``python -m mpt_jax.main`` on 1 CPU device, on 8 simulated CPU devices, and on 2 processes x 2
devices joined by ``jax.distributed`` on localhost give the same scores (float32 tolerance:
the gradient and BatchNorm reductions are summed in a different order on each topology).
All four processes run at the same time. A run stopped on one device count resumes on another
with the same result."""
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mpt_jax import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(ROOT, "tests", "fault_driver.py")
TIMEOUT = 150
STEPS = 6
ARGS = ("--config=configs/smoke.py", "--config.num_epochs=1", f"--config.max_train_steps={STEPS}")


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(workdir, devices, extra_env=None, faults=()):
    """``python -m mpt_jax.main``, or with ``faults`` (e.g. "--pause_after_step=3") the same
    command line through tests/fault_driver.py."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               **(extra_env or {}))
    program = [DRIVER, *faults, "--"] if faults else ["-m", "mpt_jax.main"]
    return subprocess.Popen([sys.executable, *program, *ARGS, f"--workdir={workdir}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_all(procs):
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            outs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


def wait_marker(proc, step):
    """Reads ``proc``'s stdout up to the pause hook's marker of global step ``step``."""
    t = time.time()
    while True:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, proc.stderr.read()[-3000:]
        if f"test-hook: paused after step {step}" in line:
            return
        assert time.time() - t < TIMEOUT


@pytest.mark.multiprocess
def test_1_device_8_devices_and_2x2_processes_agree(tmp_path):
    port = free_port()
    dirs = {name: str(tmp_path / name) for name in ("one", "eight", "multi")}
    multi_env = lambda i: dict(JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
    procs = [launch(dirs["multi"], 2, multi_env(0)), launch(dirs["multi"], 2, multi_env(1)),
             launch(dirs["one"], 1), launch(dirs["eight"], 8)]
    results = wait_all(procs)
    for rc, out, err in results:
        assert rc == 0, err[-3000:]
    assert "2 devices" not in results[0][1]
    devices = [line for line in results[0][1].splitlines() if "steps/epoch" in line]
    assert devices and devices[0].rstrip().endswith("4 devices"), devices  # 2 x 2, one mesh
    assert "final accuracy" in results[0][1]
    assert "final accuracy" not in results[1][1]  # only process 0 reports and logs
    loaded = {name: checkpoint.load_for_inference(d) for name, d in dirs.items()}
    ref = loaded["one"]
    assert ref["metrics"]["step"] == STEPS
    for name in ("eight", "multi"):
        got = loaded[name]
        assert got["metrics"]["step"] == STEPS
        for layer in ref["params"]:
            a = np.asarray(ref["params"][layer]["scores"])
            b = np.asarray(got["params"][layer]["scores"])
            assert a.shape == b.shape
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=f"{name} {layer}")
            # The random weights are the same draw on every topology (same seed).
            np.testing.assert_array_equal(got["frozen"][layer]["weight"],
                                          ref["frozen"][layer]["weight"])
        # Same evaluation (an example may flip only if a score sits at the float32 rounding
        # boundary of the top-k threshold: allow one of the 359 held-out images).
        assert abs(got["metrics"]["accuracy"] - ref["metrics"]["accuracy"]) <= 100 / 359 + 1e-9


@pytest.mark.multiprocess
def test_sigterm_stops_all_processes_together(tmp_path):
    """2 processes x 2 devices: SIGTERM to both during step 5 (a logging step): both agree,
    save one checkpoint together (a collective orbax save) and exit 143."""
    port = free_port()
    workdir = str(tmp_path / "multi")
    env = lambda i: dict(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                         JAX_PROCESS_ID=str(i))
    procs = [launch(workdir, 2, env(i), faults=["--pause_after_step=5"]) for i in range(2)]
    try:
        for p in procs:  # the marker is the first stdout line of process 1; wait for both
            wait_marker(p, 5)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        results = wait_all(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rc, _, err in results:
        assert rc == 143, err[-3000:]
        assert "Traceback" not in err
    assert "stopped by SIGTERM at epoch 1, step 5 of 22 (global step 5)" in results[0][2]
    assert checkpoint.load_for_inference(workdir)["metrics"]["step"] == 5


def _stop_at(proc, step):
    """Waits for the pause hook's marker of ``step``, then sends SIGTERM; returns the result."""
    try:
        wait_marker(proc, step)
        proc.send_signal(signal.SIGTERM)
    finally:
        results = wait_all([proc])
    return results[0]


@pytest.mark.multiprocess
def test_resume_on_another_device_count(tmp_path):
    """A run stopped (SIGTERM, mid-epoch) on 1 device resumes on 8 devices, and one stopped on
    8 resumes on 1; both end, after all 6 steps, with the scores of an uninterrupted 1-device
    run (float32 tolerance: only the reduction order differs) and the same random weights."""
    dirs = {name: str(tmp_path / name) for name in ("ref", "one_to_eight", "eight_to_one")}
    pause = ["--pause_after_step=3"]
    ref = launch(dirs["ref"], 1)
    first = [launch(dirs["one_to_eight"], 1, faults=pause),
             launch(dirs["eight_to_one"], 8, faults=pause)]
    for proc in first:
        rc, _, err = _stop_at(proc, 3)
        assert rc == 143, err[-3000:]
    for d in dirs.values():
        if d != dirs["ref"]:
            assert checkpoint.load_for_inference(d)["metrics"]["step"] == 3
    resumed = [launch(dirs["one_to_eight"], 8), launch(dirs["eight_to_one"], 1)]
    results = wait_all([ref] + resumed)
    for rc, out, err in results:
        assert rc == 0, err[-3000:]
        assert "final accuracy" in out
    # The resume line names the new topology (the checkpoint itself is topology-free).
    assert "(global step 3) on 8 devices" in results[1][1], results[1][1][-2000:]
    assert "(global step 3) on 1 device\n" in results[2][1], results[2][1][-2000:]
    want = checkpoint.load_for_inference(dirs["ref"])
    for name in ("one_to_eight", "eight_to_one"):
        got = checkpoint.load_for_inference(dirs[name])
        assert got["metrics"]["step"] == STEPS
        for layer in want["params"]:
            np.testing.assert_allclose(np.asarray(got["params"][layer]["scores"]),
                                       np.asarray(want["params"][layer]["scores"]),
                                       rtol=1e-5, atol=1e-6, err_msg=f"{name} {layer}")
            np.testing.assert_array_equal(got["frozen"][layer]["weight"],
                                          want["frozen"][layer]["weight"])
