"""The table of benchmarks/run_gpu_speed.sh: per model, biprop with every mask method against
dense and against the faster torch peer; then the dense-step variants (XLA flags).

    python benchmarks/speed_summary.py OUT_DIR [--title TEXT]

Reads OUT_DIR/rows.jsonl (benchmarks/train_step.py rows) and OUT_DIR/peers.jsonl (one JSON
line of ../shared/bench/torch_peer.py per run, eager and --compile), writes
OUT_DIR/speed_results.md and prints it. A row that was not measured (the time budget ran
out, or it failed) says so instead of a number.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peer_runs import PEER_MODELS  # noqa: E402
from results_log import read_partial as read_jsonl  # noqa: E402
from train_step import add_ratios  # noqa: E402

MODELS = ("conv4", "resnet18_cifar", "wrn50_2", "wrn34_2_binact")
METHODS = ("radix_many", "radix_pallas", "warm")
DENSE_TARGET = {"wrn50_2": 4000}  # images/s the dense-step variants are asked about


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "not measured"
    if isinstance(x, str):
        return x
    return f"{x:,.0f}" if x >= 100 else f"{x:.{digits}g}"


def peer_figures(peers: list[dict], model: str) -> dict:
    """{"eager": images/s, "compiled": images/s} of the peer runs for our ``model``."""
    name = PEER_MODELS.get(model, (None,))[0]
    out = {}
    for p in peers:
        if p.get("model") == name and "images_per_s" in p:
            out["compiled" if p.get("compile") else "eager"] = p["images_per_s"]
    return out


def _biprop(rows: list[dict], model: str, method: str) -> dict | None:
    for r in rows:
        if (r.get("model") == model and r.get("mode") == "biprop" and not r.get("env")
                and r.get("select") == f"batched:{method}"):
            return r
    return None


def models_in(rows: list[dict]) -> list[str]:
    """MODELS, then any other model the rows measured (the dry run's stand-ins)."""
    extra = [r.get("model") for r in rows if r.get("model") not in MODELS]
    return list(MODELS) + list(dict.fromkeys(m for m in extra if m))


def model_table(rows: list[dict], peers: list[dict]) -> list[str]:
    head = ["model", "dense images/s"] + [f"{m}: images/s (/ dense)" for m in METHODS] + [
        "warm: band share", "peer eager", "peer --compile", "best ours / faster peer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in models_in(rows):
        dense = next((r for r in rows if r.get("model") == model and r.get("mode") == "dense"
                      and not r.get("env") and "images_per_s" in r), None)
        cells = [model, _fmt(dense and dense["images_per_s"])]
        best = None
        for method in METHODS:
            r = _biprop(rows, model, method)
            if r is None or "images_per_s" not in r:
                cells.append("error: " + r["error"][:60] if r else "not measured")
                continue
            best = max(best or 0, r["images_per_s"])
            ratio = f" ({r['vs_dense']:.3f})" if "vs_dense" in r else ""
            cells.append(f"{_fmt(r['images_per_s'])}{ratio}")
        warm = _biprop(rows, model, "warm")
        cells.append(_fmt(warm.get("band_share")) if warm else "not measured")
        figures = peer_figures(peers, model)
        if model not in PEER_MODELS:
            cells += ["no peer model", "no peer model", "-"]
        else:
            cells += [_fmt(figures.get("eager")), _fmt(figures.get("compiled"))]
            faster = max(figures.values()) if figures else None
            cells.append(f"{best / faster:.2f}x" if best and faster else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def variant_table(rows: list[dict]) -> list[str]:
    """The dense rows of every model measured under XLA flags, with its default dense row."""
    lines = ["| model | XLA_FLAGS | dense images/s | vs default dense | target |",
             "|---|---|---|---|---|"]
    flagged = list(dict.fromkeys(r.get("model") for r in rows
                                 if r.get("mode") == "dense" and r.get("env")))
    for model in flagged:
        target = DENSE_TARGET.get(model)
        dense = [r for r in rows if r.get("model") == model and r.get("mode") == "dense"]
        base = next((r for r in dense if not r.get("env") and "images_per_s" in r), None)
        for r in dense:
            ips = r.get("images_per_s")
            ratio = f"{ips / base['images_per_s']:.3f}" if ips and base else "-"
            flags = r.get("env", "").replace("XLA_FLAGS=", "") or "(default)"
            verdict = ("-" if not target or ips is None else
                       f"{target:,} {'met' if ips >= target else 'missed'}")
            lines.append(f"| {model} | {flags} | {_fmt(ips) if ips else r.get('error', '')[:80]}"
                         f" | {ratio} | {verdict} |")
    return lines


def summarize(out_dir: str, title: str = "") -> str:
    rows = read_jsonl(os.path.join(out_dir, "rows.jsonl"))
    peers = read_jsonl(os.path.join(out_dir, "peers.jsonl"))
    meta = read_jsonl(os.path.join(out_dir, "meta.jsonl"))
    add_ratios(rows)
    ok = [r for r in rows if "images_per_s" in r]
    lines = [f"# {title or 'mpt_jax speed benchmark'}", ""]
    if ok:
        r0 = ok[0]
        lines.append(f"device: {r0.get('device')} ({r0.get('backend')}), jax {r0.get('jax')}, "
                     f"batch {r0.get('batch')}, {r0.get('precision')}, keep_fraction 0.2, "
                     f"random data, median of repeats")
    lines += [f"{m.get('key')}: {m.get('value')}" for m in meta]
    lines += ["", "## biprop by mask method, dense, and the torch peer (bf16, channels-last)", ""]
    lines += model_table(rows, peers)
    lines += ["", "## The dense step under XLA flag variants", ""] + variant_table(rows)
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "Errors:"] + [f"- {r.get('model')} {r.get('mode')} {r.get('select')} "
                                    f"{r.get('env', '')}: {r['error']}" for r in errors]
    lines += ["", "Every row (JSON):", "", "```"]
    lines += [json.dumps(r) for r in rows + peers] + ["```"]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "speed_results.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    print(summarize(args.out_dir, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
