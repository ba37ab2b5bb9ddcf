"""Brings one GPU window's results (experiments/gpu_window.sh's window.tar.gz) into the
repository: new rows of the results CSV, the shipped tickets, and each finished run's
metrics.jsonl and result.json under experiments/results/runs/; then regenerates the tables.

    python experiments/import_window.py /path/to/window.tar.gz [--no_report]

Rows are matched by run name: a run already in the committed CSV is left as it is. Tickets
under tickets/ are replaced by the window's copy (a window ships a headline ticket only when
it ran that run). Runs that did not finish (no result.json) bring nothing.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import reproduce  # noqa: E402  (experiments/ is a folder of scripts, not a package)


def _members(tar: tarfile.TarFile):
    """Only regular files with relative paths inside the archive (no links, no '..')."""
    for member in tar.getmembers():
        parts = member.name.split("/")
        if member.isfile() and not member.name.startswith("/") and ".." not in parts:
            yield member


def import_window(archive: str, results: str = reproduce.RESULTS,
                  tickets: str = reproduce.TICKETS,
                  runs_dir: str = os.path.join(ROOT, "experiments", "results", "runs")) -> dict:
    """Merges the window into ``results`` / ``tickets`` / ``runs_dir``; returns counts."""
    counts = dict(rows=0, tickets=0, runs=0)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(archive) as tar:
            members = list(_members(tar))
            tar.extractall(tmp, members=members, filter="data")
        names = [m.name for m in members]
        csvs = [n for n in names if n.endswith("results/cifar10.csv")]
        known = reproduce.finished(reproduce.read_rows(results))
        for name in csvs:
            for row in reproduce.read_rows(os.path.join(tmp, name)):
                if row["run"] not in known:
                    reproduce.append_row(row, results)
                    known.add(row["run"])
                    counts["rows"] += 1
        for name in names:
            parts = name.split("/")
            if len(parts) >= 2 and parts[-2] == "tickets" and name.endswith(".ticket"):
                os.makedirs(tickets, exist_ok=True)
                shutil.copyfile(os.path.join(tmp, name), os.path.join(tickets, parts[-1]))
                counts["tickets"] += 1
            if parts[-1] == "result.json":
                run = parts[-2]
                if run not in known:  # not a finished queue run (e.g. a dry run)
                    continue
                dest = os.path.join(runs_dir, run)
                os.makedirs(dest, exist_ok=True)
                for f in ("result.json", "metrics.jsonl"):
                    src = os.path.join(tmp, *parts[:-1], f)
                    if os.path.exists(src):
                        shutil.copyfile(src, os.path.join(dest, f))
                counts["runs"] += 1
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive")
    parser.add_argument("--no_report", action="store_true",
                        help="do not regenerate the README tables, figures and tickets/README.md")
    args = parser.parse_args(argv)
    if not os.path.exists(args.archive):
        parser.error(f"{args.archive} does not exist")
    try:
        counts = import_window(args.archive)
    except (tarfile.TarError, OSError) as e:
        print(f"error: {args.archive} is not a readable window archive ({e})", file=sys.stderr)
        return 2
    print(f"imported {counts['rows']} new row(s), {counts['tickets']} ticket(s), "
          f"{counts['runs']} run folder(s)")
    if not args.no_report:
        import report  # noqa: PLC0415  (experiments/report.py)
        return report.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
