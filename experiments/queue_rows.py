"""The results rows and tickets of the reproduction queue's finished runs (reproduce.py).

* ``result_row(run, workdir, ...)``: one row of experiments/results/cifar10.csv from a
  finished run's result.json and metrics.jsonl, its ticket exported (biprop runs).
* ``finished_rows(item, workdir, ...)``: the rows of a run, or of every member of a member
  program (each member leaves a single-run workdir under the program's).
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys

from queue_plan import Program

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def images_per_s(metrics_path: str) -> float | None:
    """Median logged training throughput, the first 10 % of records (compilation) left out."""
    values = []
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            for line in f:
                try:
                    m = json.loads(line)
                except ValueError:
                    continue
                if m.get("split") == "train" and m.get("images_per_s"):
                    values.append(float(m["images_per_s"]))
    values = sorted(values[len(values) // 10:])
    return round(values[len(values) // 2], 1) if values else None


def git_commit() -> str:
    if os.environ.get("MPT_COMMIT"):
        return os.environ["MPT_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (out.stdout.strip() + ("+dirty" if dirty else "")) if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def export_ticket(run, workdir: str, tickets: str | None) -> str:
    """The run's ticket (signs mode: no dependence on JAX's PRNG) in its workdir, copied to
    ``tickets``/<ship>.ticket for a headline run; returns the shipped path or ''."""
    if run.mode != "biprop":
        return ""
    out = os.path.join(workdir, "ticket.ticket")
    code = subprocess.call([sys.executable, "-m", "mpt_jax.ticket", "export",
                            f"--workdir={workdir}", f"--out={out}", "--mode=signs"],
                           stdout=open(os.path.join(workdir, "ticket_export.txt"), "w"),
                           stderr=subprocess.STDOUT, cwd=ROOT,
                           # beside runs that still hold their share of the accelerator
                           env=dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false"))
    if code != 0 or not run.ship or not tickets:
        return ""  # the ticket stays in the run's workdir
    os.makedirs(tickets, exist_ok=True)
    dest = os.path.join(tickets, f"{run.ship}.ticket")
    # Seed 0's ticket is the one shipped (the first finished seed until seed 0 has run).
    if os.path.exists(dest) and run.seed != 0:
        return ""
    shutil.copyfile(out, dest + ".tmp")
    os.replace(dest + ".tmp", dest)
    return os.path.relpath(dest, ROOT)


def result_row(run, workdir: str, wall: float, parallel: int, tickets: str | None,
               record_early: bool = False, members: int = 1,
               data_seed: int | None = None) -> dict | None:
    """The results-file row of a finished run (None if its result.json is missing or the run
    ended early, e.g. at max_train_steps: rows are for complete runs, unless
    ``record_early``, which dry runs use). A member of a program of ``members`` runs: the
    program's wall time, and its data seed when that is not the run's seed."""
    path = os.path.join(workdir, "result.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    if result.get("stop_reason") and not record_early:
        return None
    overrides = [f"{k}={v}" for k, v in run.overrides]
    if data_seed is not None and data_seed != run.seed:
        overrides.append(f"data_seed={data_seed}")
    return dict(run=run.name, group=run.group, config=run.config,
                overrides=" ".join(overrides), seed=run.seed, members=members,
                epochs=result.get("epochs_completed"), final_top1=result.get("final_top1"),
                final_top5=result.get("final_top5"), best_top1=result.get("best_top1"),
                best_top5=result.get("best_top5"), best_epoch=result.get("best_epoch"),
                eval_split=result.get("eval_split"), wall_seconds=round(wall, 1),
                train_seconds=result.get("wall_seconds"),
                images_per_s=images_per_s(os.path.join(workdir, "metrics.jsonl")),
                parallel=parallel, precision=result.get("precision", ""),
                hardware=result.get("hardware", ""), jax_version=result.get("jax_version", ""),
                commit=git_commit(),
                date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                ticket=export_ticket(run, workdir, tickets))


def finished_rows(item, workdir: str, wall: float, parallel: int, args) -> list[dict]:
    """The results rows of a run or of every member of a program that finished ([] if
    none did): a program's members each leave a single-run workdir under ``workdir``."""
    if not isinstance(item, Program):
        row = result_row(item, workdir, wall, parallel, args.tickets, args.record_early)
        return [row] if row else []
    rows = [result_row(run, directory, wall, parallel, args.tickets, args.record_early,
                       members=len(item.runs), data_seed=item.data_seed)
            for run, directory in zip(item.runs, item.member_workdirs(workdir))]
    return [row for row in rows if row]
