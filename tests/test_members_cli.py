"""mpt_jax.members on the command line: real signals to a member program (SIGKILL inside a
member's save, SIGTERM and its resume command, Ctrl-C) stop and resume it as they do one run,
and benchmarks/members.py runs on a CPU."""
import json
import os
import signal
import subprocess
import sys
import time

import chex
import pytest

from mpt_jax import checkpoint

# ---------------------------------------------------------------------------
# The command line: real signals to a member program (tests/fault_driver.py pauses it)

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fault_driver.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = ("--config=configs/smoke.py", "--config.num_epochs=2", "--config.checkpoint_every_steps=5",
           "--config.members.keep_fraction=0.5,0.25", "--config.members.seed=0,1")
NAMES = ("keep_fraction=0.5,seed=0", "keep_fraction=0.25,seed=1")


def command(workdir, env, *faults, wait_for=None):
    """The member program's command line (through the fault driver); with ``wait_for``, the
    running process once that marker is printed, else the finished (rc, out, err)."""
    program = [DRIVER, *faults, "--"] if faults else ["-m", "mpt_jax.main"]
    proc = subprocess.Popen([sys.executable, *program, *PROGRAM, f"--workdir={workdir}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if wait_for is None:
        out, err = proc.communicate(timeout=300)
        return proc.returncode, out, err
    seen = ""
    deadline = time.time() + 300
    while wait_for not in seen and time.time() < deadline:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, proc.stderr.read()[-2000:]
        seen += line
    return proc


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("xla_cache_cli"))
    return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


@pytest.mark.multiprocess  # subprocesses and real signals
def test_signals_to_a_member_program_on_the_command_line(tmp_path, cli_env):
    """SIGKILL inside a member's save, SIGTERM (exit 143 and the resume command) and Ctrl-C
    (exit 130) stop a member program as they stop one run; the resumed programs end
    bit-identical to the uninterrupted one (22 steps per epoch, saves every 5 steps)."""
    reference = str(tmp_path / "reference")
    rc, out, err = command(reference, cli_env)
    assert rc == 0, err[-3000:]
    assert all(f"[{name}] final accuracy: top-1" in out for name in NAMES)

    killed = str(tmp_path / "killed")
    proc = command(killed, cli_env, "--pause_in_save=30",
                   wait_for="test-hook: pausing inside the save of step 30")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    rc, out, err = command(killed, cli_env)
    assert rc == 0, err[-3000:]
    assert "resuming the 2 members of" in out and "(global step 25)" in out

    stopped = str(tmp_path / "stopped")
    proc = command(stopped, cli_env, "--pause_after_step=27",
                   wait_for="test-hook: paused after step 27")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("stopped by SIGTERM at epoch 2, step 5 of 22 (global step 27); "
                           "checkpoint saved: every member's, e.g. ")
    import shlex
    resume = shlex.split(line.split("; resume with: ")[1])
    assert "--config.members.keep_fraction=0.5,0.25" in resume
    done = subprocess.run(resume, cwd=ROOT, env=cli_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for workdir in (killed, stopped):
        for name in NAMES:
            a = checkpoint.load_for_inference(os.path.join(workdir, "members", name))
            b = checkpoint.load_for_inference(os.path.join(reference, "members", name))
            assert a["metrics"]["step"] == b["metrics"]["step"] == 44
            for col in ("params", "frozen", "batch_stats"):
                chex.assert_trees_all_equal(a[col], b[col])
            with open(os.path.join(workdir, "members", name, "result.json")) as f:
                got = json.load(f)
            with open(os.path.join(reference, "members", name, "result.json")) as f:
                want = json.load(f)
            timings = dict(wall_seconds=0, wall_seconds_parts=0, time_breakdown=0)
            assert dict(got, **timings) == dict(want, **timings)

    interrupted = str(tmp_path / "interrupted")
    proc = command(interrupted, cli_env, "--pause_after_step=3",
                   wait_for="test-hook: paused after step 3")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "stopped by Ctrl-C at epoch 1, step 3 of 22 (global step 3)" in err


@pytest.mark.end_to_end  # benchmarks/members.py, whole
def test_members_benchmark_runs_on_cpu(tmp_path, capsys):
    """benchmarks/members.py at tiny sizes: a row for the single run and one for the program,
    the program's aggregate images/s = members x its per-member images/s."""
    import importlib.util
    path = os.path.join(ROOT, "benchmarks", "members.py")
    spec = importlib.util.spec_from_file_location("members_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "rows.jsonl"
    assert bench.main(["--programs=conv2=2", "--width-mult=0.0625", "--batch=8", "--steps=1",
                       "--repeats=1", "--warmup=1", "--precision=float32",
                       f"--json={out}"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["model"], r["members"]) for r in rows] == [("conv2", 1), ("conv2", 2)]
    assert all(r["finite"] for r in rows)
    program = rows[1]
    assert program["images_per_s"] == pytest.approx(2 * program["per_member_images_per_s"],
                                                    rel=1e-3)
    assert "| conv2 | 2 | 8 | float32 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="MODEL=M"):
        bench.parse_programs("conv4=0")
