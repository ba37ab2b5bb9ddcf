"""The paper's CIFAR-10 experiments as one resumable queue that fits short GPU windows.

    python experiments/reproduce.py --dry_run                          # the plan, nothing runs
    python experiments/reproduce.py --groups=table --budget_minutes=10  # what fits in 10 minutes
    python experiments/reproduce.py --groups=conv --seeds=0,1,2 --only='conv4'
    python experiments/reproduce.py --groups=conv --members --budget_minutes=10  # as programs

Named groups, in priority order:

- ``table``: the paper's CIFAR-10 rows (ResNet-18 and VGG-Small MPT-1/32, 1.25x VGG-Small
  MPT-1/1, their "+BN" variants) and the dense networks their error is compared with;
- ``conv``: Conv-2/4/6/8 x keep 0.8 ... 0.1, MPT-1/32 and MPT-1/1, with a dense and an
  edge-popup baseline for each Conv-n (the paper's accuracy-vs-%-pruned figure);
- ``width``: Conv-8 at width 0.5, 1, 1.5, 2; ``depth``: CIFAR ResNet-20 ... 110.

Every run is an ordinary ``python -m mpt_jax.main`` in its own workdir under ``--root``
(checkpoints, metrics.jsonl, result.json, log.txt), so a stopped queue resumes where it
stopped. A run that finishes appends one row to the committed results file
(``experiments/results/cifar10.csv``: config and overrides, seed, epochs, final and best
held-out top-1/top-5, wall time, images/s, hardware, JAX version, commit) and, for biprop
runs, exports its ticket (``ticket.ticket`` in the workdir; the headline runs' tickets are
copied to ``tickets/``; queue_rows.py). Runs that already have a row are skipped.

``--budget_minutes`` starts only runs that fit: each run's time is estimated from the
results file's earlier rows of the same run (or the same model) on the same hardware,
from a built-in guess otherwise, and a run is started only while the estimates of all
runs started so far add up to the budget (queue_plan.py). ``--members`` trains the runs
that differ only in keep_fraction and seed (e.g. a Conv-4 keep-fraction curve) as one
member program (mpt_jax.members): one process, one vmapped step for all of them, each
member still its own workdir, row (``members`` column: the program's size) and ticket;
its estimate is the members' estimates over the speed-up earlier programs showed.
``--parallel=N`` runs N at once on one device (each gets 1/N of the accelerator memory); the budget counts their time as if they ran
one after another, which is what sharing one GPU amounts to. A Ctrl-C or SIGTERM is
passed to the running runs, which save a checkpoint and stop; the same command resumes.

Tables and figures are generated from the results file by ``experiments/report.py``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import queue_plan  # noqa: E402  (experiments/ is a folder of scripts, not a package)
import sweep  # noqa: E402
from queue_plan import Program, plan  # noqa: E402
from queue_rows import finished_rows  # noqa: E402

RESULTS = os.path.join(ROOT, "experiments", "results", "cifar10.csv")
TICKETS = os.path.join(ROOT, "tickets")
KEEP_FRACTIONS = sweep.KEEP_FRACTIONS

FIELDS = ("run", "group", "config", "overrides", "seed", "epochs", "final_top1", "final_top5",
          "best_top1", "best_top5", "best_epoch", "eval_split", "wall_seconds", "train_seconds",
          "images_per_s", "parallel", "precision", "hardware", "jax_version", "commit", "date",
          "ticket", "members")


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the queue: a config file, its overrides and a seed."""

    group: str
    config: str
    overrides: tuple = ()  # ((field, value), ...) in a fixed order
    seed: int = 0
    ship: str | None = None  # file stem under tickets/ for a headline run's ticket

    @property
    def stem(self) -> str:
        return os.path.splitext(os.path.basename(self.config))[0]

    @property
    def key(self) -> str:
        """The run without its seed: seeds of one key are averaged in the tables."""
        return ",".join([self.stem] + [f"{k}={v}" for k, v in self.overrides])

    @property
    def name(self) -> str:
        return f"{self.key},seed={self.seed}"

    @property
    def mode(self) -> str:
        return str(dict(self.overrides).get("mode", "biprop"))


def _entries():
    """(group, config, overrides, default seeds, ticket name) in priority order."""
    table = [
        ("configs/cifar10_resnet18.py", {}, (0, 1, 2), "cifar10_resnet18"),
        ("configs/cifar10_resnet18.py", {"mode": "dense"}, (0, 1), None),
        ("configs/cifar10_vgg_small.py", {}, (0,), "cifar10_vgg_small"),
        ("configs/cifar10_vgg_small.py", {"mode": "dense"}, (0,), None),
        ("configs/cifar10_wide_vgg_small_binact.py", {}, (0,), "cifar10_wide_vgg_small_binact"),
        ("configs/cifar10_wide_vgg_small_binact.py", {"learn_batchnorm": True}, (0,),
         "cifar10_wide_vgg_small_binact+bn"),
        ("configs/cifar10_resnet18.py", {"learn_batchnorm": True}, (0,), "cifar10_resnet18+bn"),
        ("configs/cifar10_resnet18.py", {"precision": "float32"}, (0,), None),
    ]
    for config, overrides, seeds, ship in table:
        yield "table", config, overrides, seeds, ship
    for n in (4, 2, 6, 8):
        for suffix in ("", "_binact"):
            for k in KEEP_FRACTIONS:
                yield "conv", f"configs/cifar10_conv{n}{suffix}.py", {"keep_fraction": k}, (0,), None
        yield "conv", f"configs/cifar10_conv{n}.py", {"mode": "dense"}, (0,), None
        for k in KEEP_FRACTIONS:
            yield ("conv", f"configs/cifar10_conv{n}.py", {"mode": "edgepopup", "keep_fraction": k},
                   (0,), None)
    for config, overrides in sweep.SWEEPS["width"]:
        yield "width", config, overrides, (0,), None
    for config, overrides in sweep.SWEEPS["depth"]:
        yield "depth", config, overrides, (0,), None


GROUPS = ("table", "conv", "width", "depth")


def queue(groups=GROUPS, seeds=None) -> list[Run]:
    """The runs of ``groups`` in priority order (groups in GROUPS order, then the entries'
    order, then seeds). ``seeds`` replaces every entry's default seeds."""
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown group(s) {', '.join(unknown)}; the groups are "
                         f"{', '.join(GROUPS)}")
    runs = []
    for group, config, overrides, default_seeds, ship in _entries():
        if group not in groups:
            continue
        for seed in (default_seeds if seeds is None else seeds):
            runs.append(Run(group, config, tuple(overrides.items()), int(seed), ship))
    order = {g: i for i, g in enumerate(GROUPS)}
    return sorted(runs, key=lambda r: order[r.group])  # stable: entry order within a group


# --------------------------------------------------------------------------------------
# The results file


def read_rows(path: str = RESULTS) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(row: dict, path: str = RESULTS) -> None:
    """Adds one row, rewriting the file atomically (a kill never leaves half a file)."""
    rows = read_rows(path) + [row]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def finished(rows: list[dict]) -> set[str]:
    return {row["run"] for row in rows}


# --------------------------------------------------------------------------------------
# Running


def command(run: Run, workdir: str, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "mpt_jax.main", f"--config={run.config}", f"--workdir={workdir}",
           f"--config.seed={run.seed}", "--config.progress_bar=False"]
    cmd += [f"--config.{k}={v}" for k, v in run.overrides]
    return cmd + [f"--config.{item}" for item in extra]


def item_command(item, workdir: str, extra: list[str]) -> list[str]:
    """The command of a run or of a member program."""
    return item.command(workdir, extra) if isinstance(item, Program) else command(
        item, workdir, extra)


def detect_hardware() -> str:
    """The first device's kind as mpt_jax reports it ("1x NVIDIA H200"), without taking
    the accelerator's memory from the runs."""
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    code = "import jax; d = jax.devices(); print(f'{len(d)}x {d[0].device_kind}')"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, timeout=120)
        return out.stdout.strip().splitlines()[-1] if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def _fmt(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def execute(todo, args, hardware) -> tuple[dict, int | None]:
    """Runs ``todo`` with at most ``args.parallel`` at once; returns ({name: status}, signal)."""
    env = dict(os.environ)
    if args.parallel > 1 and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{min(0.75, 0.9 / args.parallel):.2f}"
    pending = list(todo)
    running = {}  # name -> (run, proc, start, workdir, log file)
    status, received = {}, []
    peak = {}

    def forward(signum, frame):
        received.append(signum)
        for _, proc, *_ in running.values():
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.time()
    try:
        while running or (pending and not received):  # after a stop nothing new starts
            while pending and len(running) < args.parallel and not received:
                run, est = pending.pop(0)
                workdir = os.path.join(args.root, run.name)
                os.makedirs(workdir, exist_ok=True)
                log = open(os.path.join(workdir, "log.txt"), "a")
                proc = subprocess.Popen(item_command(run, workdir, args.set), stdout=log,
                                        stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                        start_new_session=True)
                running[run.name] = (run, proc, time.time(), workdir, log)
                print(f"[{_fmt(time.time() - t0)}] start  {run.name} (estimate {_fmt(est)})",
                      flush=True)
            for name in [n for n, item in running.items() if item[1].poll() is not None]:
                run, proc, start, workdir, log = running.pop(name)
                log.close()
                wall = time.time() - start
                rows = []
                # 130 / 143: a stop that came after the run had finished still leaves a
                # complete result.json (result_row checks), which counts as done.
                if proc.returncode in (0, 130, 143):
                    rows = finished_rows(run, workdir, wall, peak.get(name, 1), args)
                    for row in rows:
                        append_row(row, args.results)
                status[name] = ("done" if rows else
                                "stopped (resumable)" if proc.returncode in (130, 143) else
                                f"failed (exit {proc.returncode}, see {workdir}/log.txt)"
                                if proc.returncode else "ended early")
                top1 = "".join(f" top-1 {row['final_top1']:.2f}%" for row in rows)
                print(f"[{_fmt(time.time() - t0)}] {status[name]} {name} after "
                      f"{_fmt(wall)}{top1}", flush=True)
            for name in running:
                peak[name] = max(peak.get(name, 1), len(running))
            time.sleep(0.5)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return status, (received[0] if received else None)


def print_table(runs: list[Run], rows: list[dict], status: dict) -> None:
    by_run = {row["run"]: row for row in rows}
    width = max([len("run")] + [len(r.name) for r in runs])
    print(f"{'run':<{width}}  {'status':<12} {'final':>7} {'best':>7} {'epochs':>6} {'wall':>7}")
    for run in runs:
        row = by_run.get(run.name)
        state = "done" if row else status.get(run.name, "not run")
        if row:
            print(f"{run.name:<{width}}  {state:<12} {float(row['final_top1']):>7.2f} "
                  f"{float(row['best_top1']):>7.2f} {row['epochs']:>6} "
                  f"{_fmt(float(row['wall_seconds'])):>7}")
        else:
            print(f"{run.name:<{width}}  {state:<12}")


def print_plan(todo, over, count: int, done: int, args, hardware: str) -> None:
    """What starts now (runs and member programs with their estimates; with --dry_run
    their commands) and what waits."""
    total = sum(est for _, est in todo)
    starting = sum(len(getattr(item, "runs", (item,))) for item, _ in todo)
    print(f"{count} runs in --groups={args.groups}: {done} finished earlier, "
          f"{starting} to start now (estimated {_fmt(total)} on {hardware}"
          + (f", {args.parallel} at a time" if args.parallel > 1 else "") + ")"
          + (f", {len(over)} left for a later window" if over else ""), flush=True)
    for item, est in todo:
        line = f"  {_fmt(est):>6}  {item.name}"
        if isinstance(item, Program):
            line += f" ({len(item.runs)} members: {', '.join(r.name for r in item.runs)})"
        if args.dry_run:
            line += "\n          " + shlex.join(item_command(
                item, os.path.join(args.root, item.name), args.set))
        print(line, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default="table",
                        help=f"comma-separated groups in priority order, from {', '.join(GROUPS)}")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds for every run (default: each run's own, "
                             "0 for most, 0,1,2 for the headline ResNet-18)")
    parser.add_argument("--only", default=None, metavar="REGEX",
                        help="only the runs whose name matches (re.search)")
    parser.add_argument("--budget_minutes", type=float, default=None,
                        help="start only runs whose estimated times add up to this")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once on one device")
    parser.add_argument("--root", default=os.path.join(ROOT, "runs", "reproduce"),
                        help="the runs' workdirs")
    parser.add_argument("--results", default=RESULTS, help="the results CSV")
    parser.add_argument("--tickets", default=TICKETS, help="where headline tickets are shipped")
    parser.add_argument("--hardware", default=None,
                        help="for the estimates (default: asked from JAX, e.g. '1x NVIDIA H200')")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override for every run that is not part of its identity (e.g. "
                             "data_dir=...); num_epochs changes the estimates too")
    parser.add_argument("--members", action="store_true",
                        help="train the runs that differ only in keep_fraction and seed as one "
                             "member program each (mpt_jax.members)")
    parser.add_argument("--dry_run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--record_early", action="store_true",
                        help="also record runs that ended early (max_train_steps): for trying "
                             "the whole path with tiny runs into a scratch results file")
    args = parser.parse_args(argv)
    try:
        seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",") if s]
        runs = queue([g for g in args.groups.split(",") if g], seeds)
        pattern = re.compile(args.only) if args.only else None
    except ValueError as e:  # also re.error
        parser.error(str(e))
    if pattern:
        runs = [r for r in runs if pattern.search(r.name)]
        if not runs:
            parser.error(f"--only={args.only!r} matches no run of --groups={args.groups}")
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    epochs = 100
    for item in args.set:
        if "=" not in item:
            parser.error(f"--set {item!r}: expected FIELD=VALUE")
        if item.startswith("num_epochs="):
            epochs = int(item.split("=", 1)[1])
    rows = read_rows(args.results)
    hardware = args.hardware or detect_hardware()
    budget_s = None if args.budget_minutes is None else args.budget_minutes * 60
    done = [r for r in runs if r.name in finished(rows)]
    items = runs
    if args.members:  # finished runs first, so that a program holds only what is left
        items = queue_plan.group([r for r in runs if r.name not in finished(rows)])
    todo, over = plan(items, rows, hardware, budget_s, epochs)
    print_plan(todo, over, len(runs), len(done), args, hardware)
    if args.dry_run:
        return 0
    status, received = execute(todo, args, hardware)
    shown = dict(status)
    for item, _ in todo:  # a program's status is its members'
        for run in getattr(item, "runs", ()):
            shown[run.name] = status.get(item.name, "not run")
    print_table(runs, read_rows(args.results), shown)
    if received:
        print(f"stopped by {signal.Signals(received).name}; the running runs saved a checkpoint:"
              f" the same command resumes them", file=sys.stderr)
        return 128 + received
    failed = [n for n, s in status.items() if s.startswith("failed")]
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
