"""experiments/sweep.py and experiments/plot.py: a sweep runs real `python -m mpt_jax.main`
points, is stopped by a real SIGTERM and resumed, collects results.csv from the runs'
result.json files, and the plots draw exactly those numbers."""
import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
FAULT_DRIVER = os.path.join(ROOT, "tests", "fault_driver.py")


def load(name):
    spec = importlib.util.spec_from_file_location(f"experiments_{name}",
                                                  os.path.join(EXPERIMENTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = load("sweep")
plot = load("plot")

# A two-point sweep of the embedded digits default (seconds per point on CPU).
POINTS = [("configs/default.py", {"keep_fraction": 0.5}),
          ("configs/default.py", {"keep_fraction": 0.25})]
NAMES = ["default,keep_fraction=0.5", "default,keep_fraction=0.25"]
# --pause_after_step=N runs the points through tests/fault_driver.py (the same command line,
# paused after global step N until a signal arrives).
DRIVER = f"""
import sys
sys.path.insert(0, {EXPERIMENTS!r})
import sweep
sweep.SWEEPS["digits"] = {POINTS!r}
args = sys.argv[1:]
faults = [a for a in args if a.startswith("--pause_after_step=")]
if faults:
    args = [a for a in args if a not in faults]
    command = sweep.command
    sweep.command = lambda *a: [sys.executable, {FAULT_DRIVER!r}, *faults, "--"] + command(*a)[3:]
sys.exit(sweep.main(args))
"""


def read_csv(root):
    with open(os.path.join(root, "results.csv")) as f:
        return {row["point"]: row for row in csv.DictReader(f)}


def read_result(root, name):
    with open(os.path.join(root, name, "result.json")) as f:
        return json.load(f)


def test_point_names_and_only_filter(capsys, tmp_path):
    assert [sweep.point_name(*p) for p in POINTS] == NAMES
    root = tmp_path / "sweep"
    assert sweep.main(["--sweep=prune_rate", "--only=^cifar10_conv4,", "--dry_run",
                       f"--root={root}", "--set", "num_epochs=10"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # Conv-4 MPT-1/32 only (not conv4_binact: the name is followed by ","), one line per keep.
    assert len(lines) == len(sweep.KEEP_FRACTIONS)
    for line, keep in zip(lines, sweep.KEEP_FRACTIONS):
        assert "--config=configs/cifar10_conv4.py" in line
        assert f"--config.keep_fraction={keep}" in line and line.endswith("--config.num_epochs=10")
        assert f"cifar10_conv4,keep_fraction={keep}" in line
    assert not root.exists()  # a dry run writes nothing


def test_only_that_matches_nothing_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["--sweep=width", "--only=resnet", "--dry_run"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--only='resnet' matches none of the {len(sweep.SWEEPS['width'])} points of --sweep=width" in err
    assert "cifar10_conv8,keep_fraction=0.8,width_mult=0.5" in err  # what names look like


@pytest.mark.multiprocess
def test_sweep_stops_on_sigterm_resumes_and_plots(tmp_path):
    root = str(tmp_path / "sweep")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cmd = [sys.executable, str(driver), "--sweep=digits", f"--root={root}",
           "--set", "num_epochs=2"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")

    # 1. SIGTERM to the sweep while its first point runs: the point saves a checkpoint and
    #    stops (not SIGKILLed), the sweep records it and stops before the second point.
    proc = subprocess.Popen(cmd + ["--pause_after_step=5"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        if "test-hook: paused after step 5" in line:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at epoch 1, step 5" in err  # mpt_jax.main's graceful stop
    assert "sweep stopped by SIGTERM during default,keep_fraction=0.5" in err
    rows = read_csv(root)
    assert list(rows) == NAMES[:1] and rows[NAMES[0]]["status"] == "stopped (resumable)"
    assert not os.path.exists(os.path.join(root, NAMES[0], "result.json"))
    assert os.listdir(os.path.join(root, NAMES[0], "checkpoints"))
    assert not os.path.exists(os.path.join(root, NAMES[1]))

    # 2. --only the second point: results.csv keeps the first point's row.
    done = subprocess.run(cmd + ["--only=0.25$"], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = read_csv(root)
    assert [rows[n]["status"] for n in NAMES] == ["incomplete", "done"]

    # 3. The whole sweep again: the first point resumes, the second returns at once.
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resum" in done.stdout + done.stderr
    rows = read_csv(root)
    for name in NAMES:
        result = read_result(root, name)
        assert rows[name]["status"] == "done"
        assert result["epochs_completed"] == 2 and int(rows[name]["epochs_completed"]) == 2
        assert float(rows[name]["final_top1"]) == result["final_top1"]
        assert float(rows[name]["best_top1"]) == result["best_top1"]
        assert f"{result['final_top1']:.2f}" in done.stdout  # the printed table

    # The plots draw exactly these numbers.
    results = [read_result(root, name) for name in NAMES]
    assert plot.sweep_series(root) == {
        "default": [(50.0, results[0]["best_top1"]), (75.0, results[1]["best_top1"])]}
    assert plot.sweep_series(root, "final_top1") == {
        "default": [(50.0, results[0]["final_top1"]), (75.0, results[1]["final_top1"])]}
    series = plot.curve_series(os.path.join(root, NAMES[1]))
    assert [epoch for epoch, _ in series["eval"]] == [1, 2]
    assert series["eval"][-1][1] == pytest.approx(results[1]["final_top1"], abs=1e-3)  # rounded
    assert len(series["train"]) >= 4 and all(loss > 0 for _, loss in series["train"])
    # Training loss against fractional epochs, held-out loss at every evaluated epoch.
    assert series["train"][-1][0] == pytest.approx(2.0) and series["train"][0][0] < 1
    assert [epoch for epoch, _ in series["eval_loss"]] == [1, 2]
    assert series["eval_loss"][-1][1] == pytest.approx(results[1]["final_loss"], rel=1e-4)
    assert plot.run_label(os.path.join(root, NAMES[1])).endswith(
        f"seed 0, 2 epochs: {results[1]['final_top1']:.2f} %)")
    pytest.importorskip("matplotlib", reason="the PNG files need matplotlib (extra 'plot')")
    for args in (["sweep", root, "--out", str(tmp_path / "s.png")],
                 ["curves", *(os.path.join(root, n) for n in NAMES),
                  "--out", str(tmp_path / "c.png")]):
        assert plot.main(args) == 0
        data = (tmp_path / os.path.basename(args[-1])).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_of_a_missing_sweep_names_the_fix(tmp_path):
    with pytest.raises(SystemExit, match="run experiments/sweep.py --root="):
        plot.sweep_series(str(tmp_path))
    with pytest.raises(SystemExit, match="metrics.jsonl not found"):
        plot.curve_series(str(tmp_path))


def test_point_status_puts_this_invocations_exit_code_first(tmp_path):
    """A result.json left from an earlier run does not hide that this run failed or stopped."""
    workdir = tmp_path / "point"
    workdir.mkdir()
    assert sweep.point_status(str(workdir))[0] == "incomplete"
    assert sweep.point_status(str(workdir), 2)[0] == "failed (exit 2)"
    (workdir / "result.json").write_text(json.dumps({"final_top1": 50.0, "stop_reason": None}))
    assert sweep.point_status(str(workdir), 0) == ("done", {"final_top1": 50.0,
                                                            "stop_reason": None})
    (workdir / "result.json").write_text(json.dumps({"stop_reason": "max_train_steps"}))
    assert sweep.point_status(str(workdir))[0] == "ended early (max_train_steps)"
    assert sweep.point_status(str(workdir), 143)[0] == "stopped (resumable)"
    assert sweep.point_status(str(workdir), 130)[0] == "stopped (resumable)"
    assert sweep.point_status(str(workdir), 1)[0] == "failed (exit 1)"
