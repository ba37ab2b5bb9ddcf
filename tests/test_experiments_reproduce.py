"""experiments/reproduce.py: the queue's order and names, time estimates from earlier rows,
the budget plan, and real runs of the embedded digits config through the whole path
(rows, tickets, skipping finished runs, a SIGTERM stop and its resume)."""
import csv
import importlib.util
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")


def load(name):
    spec = importlib.util.spec_from_file_location(f"experiments_{name}",
                                                  os.path.join(EXPERIMENTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


R = load("reproduce")
Q = R.queue_plan  # the estimates and the plan (experiments/queue_plan.py), as reproduce uses them


def row(run, hardware="1x NVIDIA H200", wall=100.0, parallel=1, epochs=100, config=None):
    config = config or f"configs/{run.split(',')[0]}.py"
    return dict(run=run, config=config, hardware=hardware, wall_seconds=str(wall),
                parallel=str(parallel), epochs=str(epochs))


def test_queue_order_names_and_seeds():
    runs = R.queue(["table"])
    # The priority: ResNet-18 MPT-1/32 seeds 0-2 first, then its dense twin.
    assert [r.name for r in runs[:5]] == [
        "cifar10_resnet18,seed=0", "cifar10_resnet18,seed=1", "cifar10_resnet18,seed=2",
        "cifar10_resnet18,mode=dense,seed=0", "cifar10_resnet18,mode=dense,seed=1"]
    assert {r.group for r in runs} == {"table"}
    assert len({r.name for r in runs}) == len(runs)  # names identify runs
    # --seeds replaces every entry's seeds; groups come in GROUPS order whatever is asked.
    runs = R.queue(["conv", "table"], seeds=[3])
    assert runs[0].group == "table" and {r.seed for r in runs} == {3}
    conv = [r for r in runs if r.group == "conv"]
    assert len(conv) == 4 * (2 * 6 + 1 + 6)  # Conv-n: 2 modes x 6 keeps, dense, edge-popup x 6
    with pytest.raises(ValueError, match="unknown group"):
        R.queue(["tables"])


def test_estimates_come_from_rows_of_the_same_hardware():
    run = next(r for r in R.queue(["table"]) if r.name == "cifar10_resnet18,seed=1")
    rows = [row("cifar10_resnet18,seed=0", wall=390, parallel=3),   # 130 s alone
            row("cifar10_resnet18,seed=2", wall=150, parallel=1),   # 150 s
            row("cifar10_resnet18,seed=3", wall=170, parallel=1),   # 170 s: median 150
            row("cifar10_resnet18,seed=4", hardware="1x NVIDIA H100", wall=999)]
    assert Q.estimate_seconds(run, rows, "1x NVIDIA H200") == pytest.approx(150)
    assert Q.estimate_seconds(run, rows, "1x NVIDIA H200", epochs=10) == pytest.approx(15)
    assert Q.estimate_seconds(run, rows, "1x NVIDIA H100") == pytest.approx(999)
    # No row of this key: the same config file's rows (here its dense twin), then the guess.
    dense = next(r for r in R.queue(["table"]) if r.name == "cifar10_resnet18,mode=dense,seed=0")
    assert Q.estimate_seconds(dense, rows[:1], "1x NVIDIA H200") == pytest.approx(130)
    assert Q.estimate_seconds(dense, [], "1x NVIDIA H200") == Q.GPU_GUESS_S["resnet18"]
    assert Q.estimate_seconds(dense, [], "1x cpu") == Q.GPU_GUESS_S["resnet18"] * Q.CPU_FACTOR


def test_plan_respects_the_budget_and_skips_finished_runs():
    runs = R.queue(["table"], seeds=[0])
    hw = "1x NVIDIA H200"
    rows = [row("cifar10_resnet18,seed=0", wall=100)]  # finished earlier
    guess = {r.name: Q.estimate_seconds(r, rows, hw) for r in runs}
    todo, over = Q.plan(runs, rows, hw, budget_s=None)
    assert [r.name for r, _ in todo] == [r.name for r in runs[1:]]
    assert not over
    # Budget 250 s: ResNet-18 dense (100 s, learnt from the config's row) fits, then every
    # run whose estimate still fits the rest, in priority order; the others wait.
    todo, over = Q.plan(runs, rows, hw, budget_s=250)
    started = [r.name for r, _ in todo]
    assert started[0] == "cifar10_resnet18,mode=dense,seed=0"
    assert sum(est for _, est in todo) <= 250
    assert {r.name for r in over} | set(started) == {r.name for r in runs[1:]}
    committed = 0.0  # the rule, step by step: a run starts if it fits what is left
    for run in runs[1:]:
        fits = committed + guess[run.name] <= 250
        assert (run.name in started) == fits, run.name
        committed += guess[run.name] if fits else 0.0


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    results = tmp_path / "results.csv"
    assert R.main(["--groups=table", "--dry_run", "--budget_minutes=6", "--hardware=1x NVIDIA H200",
                   f"--results={results}", f"--root={tmp_path / 'runs'}"]) == 0
    out = capsys.readouterr().out
    assert "11 runs in --groups=table: 0 finished earlier, 2 to start now" in out
    assert "--config=configs/cifar10_resnet18.py" in out and "--config.seed=0" in out
    assert not results.exists() and not (tmp_path / "runs").exists()


def test_bad_arguments_are_clear_errors(capsys):
    for argv, message in [(["--groups=tabel"], "unknown group(s) tabel"),
                          (["--only=nothing-matches", "--dry_run"], "matches no run"),
                          (["--parallel=0", "--dry_run"], "--parallel must be at least 1")]:
        with pytest.raises(SystemExit) as e:
            R.main(argv + ["--hardware=cpu"])
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def test_members_group_the_runs_that_differ_in_keep_fraction_and_seed():
    runs = R.queue(["table", "conv"], seeds=[0, 1])
    items = Q.group(runs)
    programs = [p for p in items if isinstance(p, Q.Program)]
    by_key = {p.key: p for p in programs}
    # A Conv-4 keep-fraction curve of two seeds: one program of 12 members; its dense
    # baseline differs in seed only: a program of 2; every run is in exactly one item.
    curve = by_key["cifar10_conv4"]
    assert len(curve.runs) == 12 and {r.seed for r in curve.runs} == {0, 1}
    assert {dict(r.overrides)["keep_fraction"] for r in curve.runs} == set(R.KEEP_FRACTIONS)
    assert len(by_key["cifar10_conv4,mode=dense"].runs) == 2
    assert "cifar10_conv4,mode=edgepopup" in by_key and "cifar10_conv4_binact" in by_key
    names = [r.name for item in items for r in getattr(item, "runs", (item,))]
    assert sorted(names) == sorted(r.name for r in runs)
    assert len({p.name for p in programs}) == len(programs)
    # The ResNet-18 "+BN" row and the plain row differ in more than seed: never one program.
    assert all(len({r.overrides for r in _without_keep(p)}) == 1 for p in programs)
    cmd = curve.command("/w", ["data_dir=/d"])
    # Member i is the i-th run, in queue order (entries, then seeds).
    assert "--config.members.keep_fraction=0.8,0.8,0.6,0.6,0.5,0.5,0.4,0.4,0.2,0.2,0.1,0.1" in cmd
    assert "--config.members.seed=0,1,0,1,0,1,0,1,0,1,0,1" in cmd
    assert "--config.seed=0" in cmd and cmd[-1] == "--config.data_dir=/d"
    one_seed = Q.group(R.queue(["conv"], seeds=[3]))[0]
    assert "--config.members.seed=3" in one_seed.command("/w", [])
    assert Q.group(runs[:1]) == runs[:1]  # a run alone stays a run


def _without_keep(program):
    for run in program.runs:
        yield R.Run(run.group, run.config, tuple((k, v) for k, v in run.overrides
                                                 if k != "keep_fraction"), 0, run.ship)


def test_program_estimates_divide_by_the_speedup_learnt_from_rows():
    hw = "1x NVIDIA H200"
    curve = next(p for p in Q.group(R.queue(["conv"])) if p.key == "cifar10_conv4")
    single = row("cifar10_conv4,keep_fraction=0.8,seed=0", wall=70)   # 70 s alone
    assert Q.program_speedup([single], hw) == Q.DEFAULT_SPEEDUP == 1.0
    assert curve.estimate([single], hw) == pytest.approx(6 * 70)
    # A program of 6 took 105 s: 17.5 s per member against 70 s alone, a speed-up of 4.
    program_rows = [dict(row(f"cifar10_conv4,keep_fraction={k},seed=1", wall=105), members="6")
                    for k in R.KEEP_FRACTIONS]
    rows = [single] + program_rows
    assert Q.program_speedup(rows, hw) == pytest.approx(4.0)
    assert curve.estimate(rows, hw) == pytest.approx(6 * 70 / 4)
    assert Q.program_speedup(rows, "1x NVIDIA H100") == 1.0  # learnt per hardware
    # Program rows never stand for one run's time.
    assert Q.estimate_seconds(curve.runs[1], rows, hw) == pytest.approx(70)
    todo, over = Q.plan([curve], rows, hw, budget_s=110)
    assert todo == [(curve, pytest.approx(105))] and over == []


def test_dry_run_with_members_prints_the_programs(tmp_path, capsys):
    assert R.main(["--groups=conv", "--only=conv4,", "--members", "--dry_run",
                   "--hardware=1x NVIDIA H200", f"--results={tmp_path / 'r.csv'}",
                   f"--root={tmp_path / 'runs'}"]) == 0
    out = capsys.readouterr().out
    assert "13 runs in --groups=conv: 0 finished earlier, 13 to start now" in out
    assert "cifar10_conv4,members=6-" in out and "(6 members: cifar10_conv4,keep_fraction=0.8" in out
    assert "--config.members.keep_fraction=0.8,0.6,0.5,0.4,0.2,0.1" in out
    assert not (tmp_path / "runs").exists()


# Real runs: two entries of the embedded digits config (seconds each on CPU).
DRIVER = f"""
import sys
sys.path.insert(0, {EXPERIMENTS!r})
import reproduce
def entries():
    yield "table", "configs/smoke.py", {{}}, (0,), "digits_smoke"
    yield "table", "configs/smoke.py", {{"mode": "dense"}}, (0,), None
    yield "conv", "configs/smoke.py", {{"keep_fraction": 0.25}}, (0,), None
    yield "conv", "configs/smoke.py", {{"keep_fraction": 0.5}}, (0,), None
reproduce._entries = entries
sys.exit(reproduce.main(sys.argv[1:]))
"""


def drive(tmp_path, *args, wait=True):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cmd = [sys.executable, str(driver), f"--results={tmp_path / 'results.csv'}",
           f"--tickets={tmp_path / 'tickets'}", f"--root={tmp_path / 'runs'}", "--hardware=1x cpu",
           *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def read_csv(path):
    with open(path) as f:
        return {r["run"]: r for r in csv.DictReader(f)}


@pytest.mark.multiprocess
def test_runs_write_rows_tickets_and_are_skipped_next_time(tmp_path):
    out = drive(tmp_path, "--groups=table", "--parallel=2")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = read_csv(tmp_path / "results.csv")
    assert set(rows) == {"smoke,seed=0", "smoke,mode=dense,seed=0"}
    import json
    for name, r in rows.items():
        with open(tmp_path / "runs" / name / "result.json") as f:
            result = json.load(f)
        assert float(r["final_top1"]) == result["final_top1"]
        assert float(r["best_top1"]) == result["best_top1"]
        assert int(r["epochs"]) == result["epochs_completed"] == 2
        assert r["hardware"] == result["hardware"] and r["parallel"] in ("1", "2")
        assert r["precision"] == "float32" and r["commit"]
    # The biprop run's ticket was exported and shipped under its name; the dense run has none.
    assert rows["smoke,seed=0"]["ticket"].endswith("digits_smoke.ticket")
    assert (tmp_path / "tickets" / "digits_smoke.ticket").exists()
    assert rows["smoke,mode=dense,seed=0"]["ticket"] == ""
    from mpt_jax import ticket as T
    shipped = T.load_ticket(tmp_path / "tickets" / "digits_smoke.ticket")
    assert shipped.info["extra"]["result"]["final_top1"] == float(rows["smoke,seed=0"]["final_top1"])
    assert shipped.info["extra"]["config"]["model"] == "mlp" and shipped.mode == "signs"
    # Next time the finished runs are skipped: no new rows.
    again = drive(tmp_path, "--groups=table")
    assert again.returncode == 0
    assert "2 finished earlier, 0 to start now" in again.stdout
    assert len(read_csv(tmp_path / "results.csv")) == 2


@pytest.mark.multiprocess
def test_sigterm_stops_the_running_runs_and_the_same_command_resumes(tmp_path):
    # 40 epochs of the digits MLP: long enough to be stopped part-way.
    args = ["--groups=conv", "--set", "num_epochs=40"]
    proc = drive(tmp_path, *args, wait=False)
    workdir = tmp_path / "runs" / "smoke,keep_fraction=0.25,seed=0"
    deadline = time.time() + 300
    while time.time() < deadline and not (workdir / "checkpoints").exists():
        time.sleep(0.5)
    time.sleep(3)  # a few epochs in
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "stopped (resumable)" in output and "the same command resumes" in output
    assert not (tmp_path / "results.csv").exists()  # no row for an unfinished run
    again = drive(tmp_path, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    log = (workdir / "log.txt").read_text()
    assert "resum" in log.lower()  # the second part continued from the checkpoint
    rows = read_csv(tmp_path / "results.csv")
    assert int(rows["smoke,keep_fraction=0.25,seed=0"]["epochs"]) == 40


def test_import_window_merges_new_rows_tickets_and_runs(tmp_path):
    """A window archive as experiments/gpu_window.sh packs it: the device's copy of the CSV
    (earlier rows and new ones), tickets/, and /tmp/reproduce/<run>/ folders."""
    import io
    import json
    import shutil
    import tarfile

    W = load("import_window")
    results, tickets, runs = tmp_path / "cifar10.csv", tmp_path / "tickets", tmp_path / "runs"
    old = dict(run="cifar10_resnet18,seed=0", group="table", final_top1="89.46")
    new = dict(run="cifar10_resnet18,seed=1", group="table", final_top1="89.50")
    R.append_row(old, str(results))
    device_csv = tmp_path / "device.csv"
    R.append_row(dict(old, final_top1="1.0"), str(device_csv))  # the same run: left alone
    R.append_row(new, str(device_csv))
    archive = tmp_path / "window.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(device_csv, arcname="experiments/results/cifar10.csv")
        tar.add(os.path.join(ROOT, "tests", "fixtures", "digits_mlp_signs_v1.ticket"),
                arcname="tickets/cifar10_resnet18.ticket")
        for run, body in [(new["run"], {"final_top1": 89.5}), ("unfinished,seed=0", None)]:
            info = tarfile.TarInfo(f"tmp/reproduce/{run}/metrics.jsonl")
            data = b'{"step": 1}\n'
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            if body is not None:
                data = json.dumps(body).encode()
                info = tarfile.TarInfo(f"tmp/reproduce/{run}/result.json")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        evil = tarfile.TarInfo("../outside.txt")
        evil.size = 1
        tar.addfile(evil, io.BytesIO(b"x"))
    counts = W.import_window(str(archive), str(results), str(tickets), str(runs))
    assert counts == dict(rows=1, tickets=1, runs=1)
    rows = read_csv(results)
    assert rows[old["run"]]["final_top1"] == "89.46" and rows[new["run"]]["final_top1"] == "89.50"
    assert (tickets / "cifar10_resnet18.ticket").exists()
    assert json.loads((runs / new["run"] / "result.json").read_text()) == {"final_top1": 89.5}
    assert (runs / new["run"] / "metrics.jsonl").exists()
    assert not (runs / "unfinished,seed=0").exists()
    assert not (tmp_path / "outside.txt").exists()
    # Importing the same window again adds nothing.
    assert W.import_window(str(archive), str(results), str(tickets), str(runs))["rows"] == 0
    shutil.rmtree(runs)


@pytest.mark.multiprocess
def test_members_run_as_one_program_with_a_row_and_a_ticket_each(tmp_path):
    """--members: the two keep fractions of the conv group train as one member program;
    each member gets its row (members=2) from its own workdir and its exported ticket."""
    out = drive(tmp_path, "--groups=conv", "--members", "--set", "num_epochs=1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(2 members: smoke,keep_fraction=0.25,seed=0, smoke,keep_fraction=0.5,seed=0)" in out.stdout
    rows = read_csv(tmp_path / "results.csv")
    assert set(rows) == {"smoke,keep_fraction=0.25,seed=0", "smoke,keep_fraction=0.5,seed=0"}
    programs = [d for d in os.listdir(tmp_path / "runs") if ",members=2-" in d]
    assert len(programs) == 1
    import json
    for keep in (0.25, 0.5):
        r = rows[f"smoke,keep_fraction={keep},seed=0"]
        member = tmp_path / "runs" / programs[0] / "members" / f"keep_fraction={keep},seed=0"
        result = json.loads((member / "result.json").read_text())
        assert float(r["final_top1"]) == result["final_top1"] and result["keep_fraction"] == keep
        assert r["members"] == "2" and r["overrides"] == f"keep_fraction={keep}"
        assert (member / "ticket.ticket").exists()
    again = drive(tmp_path, "--groups=conv", "--members", "--set", "num_epochs=1")
    assert "2 finished earlier, 0 to start now" in again.stdout
