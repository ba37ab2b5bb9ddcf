"""Runs the paper's sweeps (accuracy vs. % pruned, width, depth) as one command.

Each point is an ordinary `python -m mpt_jax.main` run with overrides in its own workdir,
so an interrupted sweep resumes where it stopped (finished points return at once).
Results are collected into <root>/results.csv; plot them with experiments/plot.py.

    # Conv-2/4/6/8 MPT-1/32 and MPT-1/1 against % pruned (paper figure; SPEC 6.10)
    python experiments/sweep.py --sweep=prune_rate --root=runs/sweep_conv
    # Conv-8 width sweep and CIFAR ResNet depth sweep
    python experiments/sweep.py --sweep=width --root=runs/sweep_width
    python experiments/sweep.py --sweep=depth --root=runs/sweep_depth
    # anything else: --set adds overrides to every point (e.g. a shorter schedule)
    python experiments/sweep.py --sweep=prune_rate --set num_epochs=10 --dry_run
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
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


def final_metrics(workdir: str) -> dict:
    """Last 'final' record of the run's metrics.jsonl (written by mpt_jax.metrics)."""
    path = os.path.join(workdir, "metrics.jsonl")
    last = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if record.get("split") in ("final", "eval"):
                    last = record
    return last


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", choices=sorted(SWEEPS), required=True)
    parser.add_argument("--root", default=None, help="folder for all runs (default runs/sweep_<name>)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="config override added to every point")
    parser.add_argument("--dry_run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    root = args.root or os.path.join("runs", f"sweep_{args.sweep}")
    rows = []
    for config, overrides in SWEEPS[args.sweep]:
        name = point_name(config, overrides)
        workdir = os.path.join(root, name)
        cmd = command(config, overrides, workdir, args.set)
        print(" ".join(cmd), flush=True)
        if args.dry_run:
            continue
        code = subprocess.call(cmd)
        result = final_metrics(workdir)
        rows.append({"point": name, "config": config, **overrides, "exit_code": code,
                     **{k: result.get(k) for k in ("top1", "best_top1", "top5", "epoch")}})
    if rows:
        os.makedirs(root, exist_ok=True)
        fields = sorted({key for row in rows for key in row})
        with open(os.path.join(root, "results.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {os.path.join(root, 'results.csv')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
