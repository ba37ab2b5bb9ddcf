"""Plots of runs and sweeps (needs matplotlib: `pip install -e ".[plot]"` in the checkout).

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


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plotting needs matplotlib: pip install -e '.[plot]'") from None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def curve_series(workdir: str) -> dict:
    """{"train": [(epoch, loss)], "eval": [(epoch, top1)], "eval_loss": [(epoch, loss)]} from
    <workdir>/metrics.jsonl (training records carry fractional epochs)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: pass the --workdir of an mpt_jax.main run")
    records = read_jsonl(path)
    evals = [r for r in records if r.get("split") == "eval"]
    return {"train": [(r["epoch"], r["loss"]) for r in records
                      if r.get("split") == "train" and "loss" in r],
            "eval": [(r["epoch"], r["top1"]) for r in evals if "top1" in r],
            "eval_loss": [(r["epoch"], r["loss"]) for r in evals if "loss" in r]}


def run_label(workdir: str) -> str:
    """The run's folder name, and from its result.json (when it has finished) what it was:
    model, mode, keep fraction, seed, epochs and final held-out top-1."""
    label = os.path.basename(os.path.normpath(workdir))
    path = os.path.join(workdir, "result.json")
    if os.path.exists(path):
        with open(path) as f:
            r = json.load(f)
        keep = f", keep {r.get('keep_fraction')}" if r.get("mode") != "dense" else ""
        label += (f" ({r.get('model')} {r.get('mode')}{keep}, seed {r.get('seed')}, "
                  f"{r.get('epochs_completed')} epochs: {r.get('final_top1', 0):.2f} %)")
    return label


def plot_curves(workdirs: list[str], out: str) -> None:
    plt = _pyplot()
    from matplotlib.lines import Line2D  # noqa: PLC0415  (after _pyplot chose the backend)

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.4 + 0.25 * len(workdirs)))
    runs = []
    for i, workdir in enumerate(workdirs):
        series = curve_series(workdir)
        color = f"C{i % 10}"
        if series["train"]:
            ax_loss.plot(*zip(*series["train"]), color=color, alpha=0.6, lw=1)
        if series["eval_loss"]:
            ax_loss.plot(*zip(*series["eval_loss"]), color=color, ls="--", lw=1.5)
        if series["eval"]:
            ax_acc.plot(*zip(*series["eval"]), color=color, marker="o", ms=3)
        runs.append(Line2D([], [], color=color, marker="o", ms=3, label=run_label(workdir)))
    ax_loss.set(title="cross-entropy loss", xlabel="epoch", ylabel="loss (log scale)",
                yscale="log")
    ax_loss.legend(handles=[Line2D([], [], color="gray", lw=1, label="training batches"),
                            Line2D([], [], color="gray", ls="--", label="held-out split")],
                   fontsize=8)
    ax_acc.set(title="accuracy on the evaluation split", xlabel="epoch",
               ylabel="held-out top-1 (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.legend(handles=runs, loc="lower center", fontsize=8, frameon=False)
    names = ", ".join(os.path.basename(os.path.normpath(w)) for w in workdirs)
    fig.suptitle(f"training curves: {names}", fontsize=10)
    fig.tight_layout(rect=(0, 0.07 + 0.045 * len(workdirs), 1, 1))
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"wrote {out}")


def sweep_series(root: str, metric: str = "best_top1") -> dict:
    """{label: [(% pruned, top-1), ...] sorted by % pruned} from <root>/results.csv; only the
    points that finished (status "done"; csvs without a status column: every row)."""
    path = os.path.join(root, "results.csv")
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: run experiments/sweep.py --root={root} first")
    series = collections.defaultdict(list)
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get("status", "done") != "done" or not row.get(metric):
                continue
            label = os.path.splitext(os.path.basename(row["config"]))[0]
            if row.get("model_options.width_mult"):
                label += f" w={row['model_options.width_mult']}"
            if row.get("model"):
                label = row["model"]
            pruned = 100.0 * (1.0 - float(row["keep_fraction"]))
            series[label].append((pruned, float(row[metric])))
    return {label: sorted(points) for label, points in sorted(series.items())}


def plot_sweep(root: str, out: str, metric: str = "best_top1") -> None:
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in sweep_series(root, metric).items():
        ax.plot(*zip(*points), marker="o", label=label)
    ax.set(xlabel="% of weights pruned",
           ylabel=("best" if metric == "best_top1" else "final") + " held-out top-1 (%)")
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
    sweep.add_argument("--metric", choices=("best_top1", "final_top1"), default="best_top1")
    args = parser.parse_args(argv)
    if args.command == "curves":
        plot_curves(args.workdirs, args.out)
    else:
        plot_sweep(args.root, args.out, args.metric)
    return 0


if __name__ == "__main__":
    sys.exit(main())
