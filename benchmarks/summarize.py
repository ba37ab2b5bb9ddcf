"""Final table of a benchmark run: rows.jsonl (train_step.py) + select.jsonl (select_bench.py).

    python benchmarks/summarize.py OUT_DIR [--title TEXT]

Writes OUT_DIR/gpu_results.md and OUT_DIR/gpu_results.json and prints the markdown.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from results_log import read_partial  # noqa: E402
from train_step import add_ratios, markdown_table  # noqa: E402

TARGETS = {  # images/s on one H100 and biprop/dense (benchmarks/README.md#speed-targets)
    "conv4": (150_000, 0.90), "resnet18_cifar": (45_000, 0.90), "wrn50_2": (4_000, 0.95),
    "wrn34_2_binact": (None, 0.95)}


def summarize(out_dir: str, title: str = "") -> str:
    rows = read_partial(os.path.join(out_dir, "rows.jsonl"))
    selects = read_partial(os.path.join(out_dir, "select.jsonl"))
    meta = read_partial(os.path.join(out_dir, "meta.jsonl"))
    add_ratios(rows)
    ok = [r for r in rows if "images_per_s" in r]
    lines = [f"# {title or 'mpt_jax training-step benchmark'}", ""]
    if ok:
        r0 = ok[0]
        lines.append(f"device: {r0.get('device')} ({r0.get('backend')}), jax {r0.get('jax')}, "
                     f"keep_fraction 0.2, random data, median of repeats")
    for m in meta:
        lines.append(f"{m.get('key')}: {m.get('value')}")
    lines += ["", markdown_table(rows), ""]
    errors = [r for r in rows if "error" in r]
    for r in errors:
        lines.append(f"- ERROR {r.get('model')} {r.get('mode')} {r.get('select')}: {r['error']}")
    lines += ["", "## Targets", "", "| model | images/s (biprop, best select) | "
              "target | vs dense | target |", "|---|---|---|---|---|"]
    for model, (ips_target, ratio_target) in TARGETS.items():
        cand = [r for r in ok if r["model"] == model and r["mode"] == "biprop"
                and not r.get("env")]  # experiments under other settings: table only
        if not cand:
            lines.append(f"| {model} | not measured | {ips_target or 'report'} | - | "
                         f">= {ratio_target} |")
            continue
        best = max(cand, key=lambda r: r["images_per_s"])
        lines.append(f"| {model} | {best['images_per_s']:,.0f} ({best['select']}, b"
                     f"{best['batch']}) | {ips_target or 'report'} | "
                     f"{best.get('vs_dense', '-')} | >= {ratio_target} |")
    if selects:
        lines += ["", "## Threshold / mask alone (select_bench.py, all layers, one jit)", "",
                  "| model | variant | ms | same as sort |", "|---|---|---|---|"]
        for s in selects:
            same = s.get("same_as_sort", s.get("kept_ok", s.get("error")))
            lines.append(f"| {s.get('model')} | {s.get('variant')} | {s.get('ms', '-')} | "
                         f"{same} |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "gpu_results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, "gpu_results.json"), "w") as f:
        json.dump(dict(rows=rows, select=selects, meta=meta), f, indent=1)
    return text


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--title", default="")
    args = ap.parse_args()
    print(summarize(args.out_dir, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
