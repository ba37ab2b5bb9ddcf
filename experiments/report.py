"""Tables and figures of the reproduction, generated from the results file (never typed).

    python experiments/report.py              # README tables, figures, tickets/README.md
    python experiments/report.py --check      # exit 1 if any generated file is out of date

Reads experiments/results/cifar10.csv (experiments/reproduce.py appends one row per
finished run) and writes:

- the results tables of README.md, between the markers ``<!-- results:NAME -->`` and
  ``<!-- /results:NAME -->`` (``headline``: the paper's CIFAR-10 rows with our mean +- std
  over seeds, the dense network trained the same way on the same data, the error ratio
  ticket / dense, and the paper's figures beside them; ``conv``, ``width``, ``depth``: the
  sweeps' points);
- figures under experiments/results/figures/ (accuracy against % pruned per Conv-n for
  MPT-1/32, MPT-1/1 and edge-popup with the dense network's line, as in the paper; width and
  depth the same way), only for groups that have rows;
- tickets/README.md: every shipped ticket with its size, model, accuracy and split as its
  manifest records them, and the command that evaluates it.

The figures need matplotlib (``pip install -e ".[plot]"``); the tables do not.
"""
from __future__ import annotations

import argparse
import collections
import csv
import math
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(ROOT, "experiments", "results", "cifar10.csv")
FIGURES = os.path.join(ROOT, "experiments", "results", "figures")
README = os.path.join(ROOT, "README.md")
TICKETS = os.path.join(ROOT, "tickets")

# The paper's CIFAR-10 test-set figures for the headline rows, and the full-precision
# network each is measured against there: ResNet-18's is the paper's own full-precision
# figure (its abstract: MPT-1/32+BN's 94.8 % beats it by 1.78 points), VGG-Small's is the
# full-precision row of its MPT-1/1 comparison table.
PAPER = {
    "cifar10_resnet18": (94.66, 93.02),
    "cifar10_resnet18,learn_batchnorm=True": (94.8, 93.02),
    "cifar10_vgg_small": (91.48, 93.6),
    "cifar10_wide_vgg_small_binact": (88.49, 93.6),
    "cifar10_wide_vgg_small_binact,learn_batchnorm=True": (91.9, 93.6),
}
# The run each headline ticket's error is divided by: the same network with trained float
# weights (the MPT-1/1 Wide VGG-Small is compared with the float VGG-Small, as in the paper).
DENSE = {
    "cifar10_resnet18": "cifar10_resnet18,mode=dense",
    "cifar10_resnet18,learn_batchnorm=True": "cifar10_resnet18,mode=dense",
    "cifar10_resnet18,precision=float32": "cifar10_resnet18,mode=dense",
    "cifar10_vgg_small": "cifar10_vgg_small,mode=dense",
    "cifar10_wide_vgg_small_binact": "cifar10_vgg_small,mode=dense",
    "cifar10_wide_vgg_small_binact,learn_batchnorm=True": "cifar10_vgg_small,mode=dense",
}
# The training curves drawn beside the table: the shipped ResNet-18 ticket and its dense twin.
CURVES = ("cifar10_resnet18,seed=0", "cifar10_resnet18,mode=dense,seed=0")
HEADLINE_NAMES = {
    "cifar10_resnet18": "ResNet-18 MPT-1/32, 80 % pruned",
    "cifar10_resnet18,precision=float32": "ResNet-18 MPT-1/32, 80 % pruned, float32",
    "cifar10_resnet18,learn_batchnorm=True": "ResNet-18 MPT-1/32 +BN, 80 % pruned",
    "cifar10_vgg_small": "VGG-Small MPT-1/32, 95 % pruned",
    "cifar10_wide_vgg_small_binact": "VGG-Small 1.25x MPT-1/1, 75 % pruned",
    "cifar10_wide_vgg_small_binact,learn_batchnorm=True": "VGG-Small 1.25x MPT-1/1 +BN, 75 % pruned",
    "cifar10_resnet18,mode=dense": "ResNet-18 dense (trained float weights)",
    "cifar10_vgg_small,mode=dense": "VGG-Small dense (trained float weights)",
}


def read_rows(path: str = RESULTS) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_key(row: dict) -> str:
    return row["run"].rsplit(",seed=", 1)[0]


def by_key(rows: list[dict]) -> dict[str, list[dict]]:
    groups = collections.defaultdict(list)
    for row in rows:
        groups[run_key(row)].append(row)
    return groups


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def fmt_acc(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def hardware_line(rows: list[dict]) -> str:
    kinds = sorted({f"{r['hardware']} {r['precision']}" for r in rows})
    return ", ".join(k.replace("1x ", "") for k in kinds)


def headline_table(rows: list[dict]) -> str:
    """Markdown: one line per headline run key that has rows (and the dense rows)."""
    groups = by_key(rows)
    lines = ["| run | seeds | ours: final top-1 % (held-out) | best top-1 % | dense, same data | "
             "error ratio ticket / dense | paper: top-1 % (test) | paper's full-precision "
             "reference | paper's error ratio | hardware |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, name in HEADLINE_NAMES.items():
        if key not in groups:
            continue
        runs = groups[key]
        final = [float(r["final_top1"]) for r in runs]
        best = [float(r["best_top1"]) for r in runs]
        seeds = ",".join(sorted(r["seed"] for r in runs))
        dense_rows = groups.get(DENSE.get(key, ""), [])
        dense_cell = ratio_cell = "—"
        if dense_rows:
            dense = [float(r["final_top1"]) for r in dense_rows]
            dense_cell = fmt_acc(dense)
            ratio = (100 - statistics.fmean(final)) / (100 - statistics.fmean(dense))
            ratio_cell = f"{ratio:.2f}"
        paper_acc, paper_dense = PAPER.get(key, (None, None))
        paper_cells = ["—", "—", "—"]
        if paper_acc is not None:
            paper_cells = [f"{paper_acc:.2f}", f"{paper_dense:.2f}",
                           f"{(100 - paper_acc) / (100 - paper_dense):.2f}"]
        if DENSE.get(key) is None:  # a dense row itself
            dense_cell = ratio_cell = ""
        lines.append(f"| {name} | {seeds} | {fmt_acc(final)} | {fmt_acc(best)} | {dense_cell} | "
                     f"{ratio_cell} | " + " | ".join(paper_cells) + f" | {hardware_line(runs)} |")
    return "\n".join(lines)


def _keep(row: dict) -> float | None:
    m = re.search(r"keep_fraction=([0-9.]+)", row["overrides"])
    return float(m.group(1)) if m else None


def _series_label(row: dict) -> str:
    """The figure line a sweep row belongs to."""
    overrides = row["overrides"]
    if "mode=dense" in overrides:
        return "dense"
    if "mode=edgepopup" in overrides:
        return "edge-popup"
    config = os.path.basename(row["config"])
    label = "MPT-1/1" if "binact" in config or "_binact" in overrides else "MPT-1/32"
    width = re.search(r"width_mult=([0-9.]+)", overrides)
    model = re.search(r"model=(resnet\d+)_cifar", overrides)
    return label + (f" width {width.group(1)}" if width else "") + (
        f" {model.group(1)}" if model else "")


def _panel(row: dict) -> str:
    m = re.search(r"cifar10_(conv\d+)", row["config"])
    if row["group"] == "conv" and m:
        return m.group(1).replace("conv", "Conv-")
    return {"width": "Conv-8, width", "depth": "CIFAR ResNet, depth"}.get(row["group"], row["group"])


def sweep_points(rows: list[dict], group: str) -> dict:
    """{panel: {label: [(% pruned, mean top-1, std or 0, n)] sorted}} of one sweep group;
    dense rows (no keep fraction) are stored under % pruned None."""
    acc = collections.defaultdict(lambda: collections.defaultdict(list))
    for row in rows:
        if row["group"] != group:
            continue
        keep = _keep(row)
        pruned = None if keep is None else round(100 * (1 - keep), 1)
        acc[(_panel(row), _series_label(row))][pruned].append(float(row["final_top1"]))
    out = collections.defaultdict(dict)
    for (panel, label), points in acc.items():
        out[panel][label] = sorted(
            ((p, *mean_std(v)[:1], mean_std(v)[1] or 0.0, len(v)) for p, v in points.items()),
            key=lambda t: -1 if t[0] is None else t[0])
    return out


def sweep_table(rows: list[dict], group: str) -> str:
    points = sweep_points(rows, group)
    if not points:
        return "_No finished runs yet._"
    lines = ["| network | run | % pruned | final top-1 % (held-out) | seeds |", "|---|---|---|---|---|"]
    for panel in sorted(points):
        for label in sorted(points[panel]):
            for pruned, mean, std, n in points[panel][label]:
                cell = f"{mean:.2f}" + (f" ± {std:.2f}" if n > 1 else "")
                lines.append(f"| {panel} | {label} | {'—' if pruned is None else pruned} | "
                             f"{cell} | {n} |")
    return "\n".join(lines)


def plot_group(rows: list[dict], group: str, out: str) -> bool:
    """Accuracy against % pruned, one panel per network; False when the group has no rows."""
    points = sweep_points(rows, group)
    if not points:
        return False
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("figures need matplotlib: pip install -e '.[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (after choosing the file-only backend)

    panels = sorted(points)
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 4.2 * len(panels)), 3.8),
                             squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for label, series in sorted(points[panel].items()):
            dense = [s for s in series if s[0] is None]
            curve = [s for s in series if s[0] is not None]
            if dense:
                ax.axhline(dense[0][1], color="k", ls="--", lw=1, label=f"{label} (trained float)")
            if curve:
                x, y, err, _ = zip(*curve)
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
        ax.set(title=panel, xlabel="% of weights pruned", ylabel="held-out top-1 (%)",
               xlim=(0, 100))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{group}: CIFAR-10 JPEG archive, 5,000 held-out images, 100 epochs",
                 fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def tickets_readme(tickets_dir: str = TICKETS) -> str:
    """tickets/README.md: one row per shipped ticket, from its own manifest."""
    from mpt_jax import ticket as T  # noqa: PLC0415  (jax only for this file, not the tables)

    lines = ["# Shipped tickets", "",
             "Generated by `python experiments/report.py` from each file's own manifest. Every",
             "ticket is a binary subnetwork of a random network found by a run of",
             "`experiments/reproduce.py`, stored in `signs` mode (mask and the signs of the kept",
             "weights, bit-packed: independent of JAX's random number generator).",
             "CIFAR-10 accuracies are on the held-out last 500 images per class of the JPEG",
             "training archive; evaluate on your own data with",
             "`--config.data_dir=<image folder or archive with a test/ split>`.", "",
             "| file | model | kept | size | bits / weight | accuracy (recorded) | split | run | "
             "hardware | evaluate |", "|---|---|---|---|---|---|---|---|---|---|"]
    names = sorted(f for f in os.listdir(tickets_dir) if f.endswith(".ticket")) if os.path.isdir(
        tickets_dir) else []
    for name in names:
        path = os.path.join(tickets_dir, name)
        ticket = T.load_ticket(path)
        size = os.path.getsize(path)
        weights = sum(int(math.prod(lt.shape)) for lt in ticket.layers)
        result = ticket.info.get("extra", {}).get("result") or {}
        config = ticket.info.get("extra", {}).get("config") or {}
        stem = name[:-len(".ticket")].split("+")[0]
        flags = " --config.learn_batchnorm=True" if name.endswith("+bn.ticket") else ""
        run = (f"{result.get('epochs_completed', '?')} epochs, seed {result.get('seed', '?')}, "
               f"{config.get('optimizer', '?')} lr {config.get('learning_rate', '?')}, "
               f"batch {config.get('batch_size', '?')}")
        lines.append(
            f"| `{name}` | {ticket.model} | {ticket.keep_fraction:g} | {size / 1e6:.2f} MB | "
            f"{8 * size / weights:.2f} | {result.get('final_top1', '?')} % | "
            f"{result.get('eval_split', '?')} | {run} | {result.get('hardware', '?')}, "
            f"{result.get('precision', '?')}, JAX {result.get('jax_version', '?')} | "
            f"`python -m mpt_jax.ticket evaluate --ticket=tickets/{name} "
            f"--config=configs/{stem}.py{flags}` |")
    if not names:
        lines.append("| (none yet) | | | | | | | | | |")
    return "\n".join(lines) + "\n"


def replace_block(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    if begin not in text or end not in text:
        raise SystemExit(f"README.md has no {begin} ... {end} block to fill")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def generate(rows: list[dict], readme_text: str, tickets_dir: str = TICKETS) -> dict[str, str]:
    """{path: new text} of every generated text file (figures are written directly)."""
    text = replace_block(readme_text, "headline", headline_table(rows))
    for group in ("conv", "width", "depth"):
        if f"<!-- results:{group} -->" in text:
            text = replace_block(text, group, sweep_table(rows, group))
    return {README: text, os.path.join(tickets_dir, "README.md"): tickets_readme(tickets_dir)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a generated text file would change")
    parser.add_argument("--no_figures", action="store_true")
    args = parser.parse_args(argv)
    rows = read_rows(args.results)
    with open(README) as f:
        readme = f.read()
    outputs = generate(rows, readme)
    stale = []
    for path, text in outputs.items():
        old = open(path).read() if os.path.exists(path) else None
        if old == text:
            continue
        stale.append(os.path.relpath(path, ROOT))
        if not args.check:
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
    if args.check:
        if stale:
            print(f"out of date: {', '.join(stale)}; run python experiments/report.py")
            return 1
        print("generated files are up to date")
        return 0
    for path in stale:
        print(f"wrote {path}")
    if not args.no_figures:
        runs = os.path.join(ROOT, "experiments", "results", "runs")
        pair = [os.path.join(runs, n) for n in CURVES]
        if all(os.path.exists(os.path.join(p, "metrics.jsonl")) for p in pair):
            sys.path.insert(0, HERE)
            import plot  # noqa: PLC0415  (experiments/plot.py; matplotlib only here)
            plot.plot_curves(pair, os.path.join(FIGURES, "resnet18_curves.png"))
        for group in ("conv", "width", "depth"):
            out = os.path.join(FIGURES, f"{group}.png")
            if plot_group(rows, group, out):
                print(f"wrote {os.path.relpath(out, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
