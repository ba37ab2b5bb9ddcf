"""Plots of runs and sweeps (needs matplotlib: `pip install mpt_jax[plot]`).

    # training curves of one or more runs (reads <workdir>/metrics.jsonl)
    python experiments/plot.py curves runs/cifar10_conv2 runs/cifar10_conv4 --out curves.png
    # accuracy vs. % pruned from a sweep (reads <root>/results.csv of experiments/sweep.py)
    python experiments/plot.py sweep runs/sweep_prune_rate --out sweep.png
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import sys


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(workdirs: list[str], out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for workdir in workdirs:
        records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        label = os.path.basename(os.path.normpath(workdir))
        train = [r for r in records if r.get("split") == "train" and "loss" in r]
        evals = [r for r in records if r.get("split") == "eval" and "top1" in r]
        if train:
            ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label=label)
        if evals:
            ax_acc.plot([r["epoch"] for r in evals], [r["top1"] for r in evals], marker="o", label=label)
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="held-out top-1 (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def plot_sweep(root: str, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = collections.defaultdict(list)
    with open(os.path.join(root, "results.csv")) as f:
        for row in csv.DictReader(f):
            if not row.get("best_top1"):
                continue
            label = os.path.splitext(os.path.basename(row["config"]))[0]
            if row.get("model_options.width_mult"):
                label += f" w={row['model_options.width_mult']}"
            if row.get("model"):
                label = row["model"]
            pruned = 100.0 * (1.0 - float(row["keep_fraction"]))
            series[label].append((pruned, float(row["best_top1"])))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in sorted(series.items()):
        points.sort()
        ax.plot([p for p, _ in points], [a for _, a in points], marker="o", label=label)
    ax.set(xlabel="% of weights pruned", ylabel="best held-out top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    curves = sub.add_parser("curves")
    curves.add_argument("workdirs", nargs="+")
    curves.add_argument("--out", default="curves.png")
    sweep = sub.add_parser("sweep")
    sweep.add_argument("root")
    sweep.add_argument("--out", default="sweep.png")
    args = parser.parse_args(argv)
    if args.command == "curves":
        plot_curves(args.workdirs, args.out)
    else:
        plot_sweep(args.root, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
