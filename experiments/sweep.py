"""Runs the paper's sweeps (accuracy vs. % pruned, width, depth) as one command.

Each point is an ordinary `python -m mpt_jax.main` run with overrides in its own workdir,
so an interrupted sweep resumes where it stopped (finished points return at once).
Results are collected into <root>/results.csv; plot them with experiments/plot.py.

    # Conv-2/4/6/8 MPT-1/32 and MPT-1/1 against % pruned (the paper's figure; keep fractions
    # 0.8, 0.6, 0.5, 0.4, 0.2, 0.1 as the reference's README lists them)
    python experiments/sweep.py --sweep=prune_rate --root=runs/sweep_conv
    # Conv-8 width sweep and CIFAR ResNet depth sweep
    python experiments/sweep.py --sweep=width --root=runs/sweep_width
    python experiments/sweep.py --sweep=depth --root=runs/sweep_depth
    # anything else: --set adds overrides to every point (e.g. a shorter schedule), --only
    # runs the points whose name matches a regular expression
    python experiments/sweep.py --sweep=prune_rate --set num_epochs=10 --only '^cifar10_conv4,' --dry_run

BN-free Conv-n at keep fractions far from 0.5: the configs' scale_fan="reference" (the
reference code's fan * (1 - k), docs/decisions.md#scale-fan) starts them with logits
(k / (1 - k))**3.5 off for Conv-4; add `--set scale_fan=kept` for the variance-preserving
fan * k (README, "Measured results": 56.82 % vs 72.54 % for Conv-4 at keep 0.2, 10 epochs).

A Ctrl-C or SIGTERM is passed on to the running point, which saves a checkpoint and stops;
the sweep then stops too, and the same command resumes it. results.csv (rewritten after
every point) and the table printed at the end give each point's status and accuracy.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys

# keep fractions of the paper's sweep (README of the reference: prune rates 0.8 ... 0.1)
KEEP_FRACTIONS = (0.8, 0.6, 0.5, 0.4, 0.2, 0.1)

SWEEPS = {
    # name -> list of (config file, overrides) points
    "prune_rate": [
        (f"configs/cifar10_conv{n}{suffix}.py", {"keep_fraction": k})
        for n, suffix, k in itertools.product((2, 4, 6, 8), ("", "_binact"), KEEP_FRACTIONS)
    ],
    "width": [
        (f"configs/cifar10_conv8{suffix}.py", {"keep_fraction": k, "model_options.width_mult": w})
        for suffix, w, k in itertools.product(("", "_binact"), (0.5, 1.0, 1.5, 2.0), KEEP_FRACTIONS)
    ],
    "depth": [
        ("configs/cifar10_resnet18.py",
         {"model": f"resnet{d}_cifar{suffix}", "keep_fraction": k,
          **({"optimizer": "adam", "learning_rate": 0.1, "weight_decay": 0.0} if suffix else {})})
        for d, suffix, k in itertools.product((20, 32, 44, 56, 110), ("", "_binact"), KEEP_FRACTIONS)
    ],
}


def point_name(config: str, overrides: dict) -> str:
    stem = os.path.splitext(os.path.basename(config))[0]
    parts = [stem] + [f"{key.split('.')[-1]}={value}" for key, value in sorted(overrides.items())]
    return ",".join(parts)


def command(config: str, overrides: dict, workdir: str, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "mpt_jax.main", f"--config={config}", f"--workdir={workdir}"]
    cmd += [f"--config.{key}={value}" for key, value in overrides.items()]
    return cmd + [f"--config.{item}" for item in extra]


RESULT_FIELDS = ("final_top1", "best_top1", "best_epoch", "epochs_completed", "wall_seconds",
                 "eval_split")


def point_status(workdir: str, exit_code: int | None = None) -> tuple[str, dict]:
    """(status, result) of one point from its workdir's result.json (written atomically by
    mpt_jax.main when a run ends) and, if it ran in this invocation, its exit code."""
    path = os.path.join(workdir, "result.json")
    result = {}
    if os.path.exists(path):
        with open(path) as f:
            result = json.load(f)
    # This invocation's outcome first: a result.json may be left from an earlier, shorter run.
    if exit_code in (130, 143):  # mpt_jax.main saved a checkpoint and stopped
        return "stopped (resumable)", result
    if exit_code not in (None, 0):
        return f"failed (exit {exit_code})", result
    if result.get("stop_reason"):  # max_train_steps, not_learning
        return f"ended early ({result['stop_reason']})", result
    if not result:  # no result.json: killed, or still running in another process
        return "incomplete", result
    return "done", result


def run_point(cmd: list[str]) -> tuple[int, list[int]]:
    """Runs one point; returns (exit code, signals received meanwhile).

    The run gets its own session, so a Ctrl-C in the terminal reaches only this process,
    which passes each SIGINT / SIGTERM on to the run exactly once: the first makes it finish
    its step and save a checkpoint (mpt_jax.main's graceful stop), a second stops it at once.
    (subprocess.call would SIGKILL the run 0.25 s after a Ctrl-C, mid-checkpoint.)"""
    proc = subprocess.Popen(cmd, start_new_session=True)
    received = []

    def forward(signum, frame):
        received.append(signum)
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()  # retried after each handled signal (PEP 475)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code, received


def write_results(root: str, points: list, exit_codes: dict) -> list[dict]:
    """<root>/results.csv with one row per point of the sweep that has a workdir (also the
    points run by earlier or --only-filtered invocations), written atomically. ``status`` is
    done, ended early (<reason>), stopped (resumable), failed (exit <code>) or incomplete."""
    rows = []
    for config, overrides in points:
        name = point_name(config, overrides)
        workdir = os.path.join(root, name)
        if not os.path.isdir(workdir):
            continue
        status, result = point_status(workdir, exit_codes.get(name))
        rows.append({"point": name, "config": config, **overrides, "status": status,
                     **{key: result.get(key) for key in RESULT_FIELDS}})
    if rows:
        fields = list(dict.fromkeys(key for row in rows for key in row))
        path = os.path.join(root, "results.csv")
        with open(path + ".tmp", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(path + ".tmp", path)
    return rows


def print_table(rows: list[dict]) -> None:
    """One line per point: status, final and best held-out top-1, epochs completed."""
    def cell(value, fmt="{}"):
        return "" if value is None else fmt.format(value)

    width = max([len("point")] + [len(row["point"]) for row in rows])
    print(f"{'point':<{width}}  {'status':<22} {'final':>7} {'best':>7} {'epochs':>6}")
    for row in rows:
        print(f"{row['point']:<{width}}  {row['status']:<22} "
              f"{cell(row.get('final_top1'), '{:.2f}'):>7} {cell(row.get('best_top1'), '{:.2f}'):>7} "
              f"{cell(row.get('epochs_completed')):>6}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", choices=sorted(SWEEPS), required=True)
    parser.add_argument("--root", default=None, help="folder for all runs (default runs/sweep_<name>)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="config override added to every point")
    parser.add_argument("--only", default=None, metavar="REGEX",
                        help="run only the points whose name matches (re.search), e.g. "
                             "'^cifar10_conv4,' or 'keep_fraction=0.(2|5)$'")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    root = args.root or os.path.join("runs", f"sweep_{args.sweep}")
    points = SWEEPS[args.sweep]
    selected = points
    if args.only is not None:
        try:
            pattern = re.compile(args.only)
        except re.error as e:
            parser.error(f"--only={args.only!r} is not a valid regular expression ({e})")
        selected = [p for p in points if pattern.search(point_name(*p))]
        if not selected:
            examples = ", ".join(point_name(*p) for p in points[:3])
            parser.error(f"--only={args.only!r} matches none of the {len(points)} points of "
                         f"--sweep={args.sweep} (names look like: {examples}, ...)")
    exit_codes = {}
    for config, overrides in selected:
        name = point_name(config, overrides)
        cmd = command(config, overrides, os.path.join(root, name), args.set)
        print(shlex.join(cmd), flush=True)
        if args.dry_run:
            continue
        exit_codes[name], received = run_point(cmd)
        os.makedirs(root, exist_ok=True)
        rows = write_results(root, points, exit_codes)  # after every point: a stop keeps them
        if received:
            print_table(rows)
            print(f"sweep stopped by {signal.Signals(received[0]).name} during {name}; run the same "
                  f"command again to resume it (finished points return at once)", file=sys.stderr)
            return 128 + received[0]
    if args.dry_run:
        return 0
    print_table(rows)  # the results.csv rows written after the last point
    print(f"wrote {os.path.join(root, 'results.csv')}")
    failed = [name for name, code in exit_codes.items() if code != 0]
    if failed:
        print(f"{len(failed)} point(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
