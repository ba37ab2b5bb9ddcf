"""Where the training step's device time goes: explains the gap between biprop and dense.

    python benchmarks/profile_step.py --model conv4 --batch 256 --precision bfloat16 \
        --mask-impl batched --mask-method radix_many          # on a GPU
    python benchmarks/profile_step.py --model conv4 --batch 8  # on this machine's CPU

Runs the real jitted step of mpt_jax.train (the same one benchmarks/train_step.py times)
under ``jax.profiler.trace``, reads the Perfetto trace it writes, and matches every device
event to the instruction of the compiled step it executed (GPU kernels carry the HLO
instruction in ``args.hlo_op``; XLA:CPU names its thunk events after the instruction). Each
instruction is put in one category from the ``op_name`` metadata of the ops it contains (for
a fusion: of every op fused into it), i.e. from the JAX name stack:

* ``mask search``   -- ops under the ``mask_search`` scope (mpt_jax.ops.SCOPE_MASK: the
  top-k / radix select, the batched masks, the global threshold),
* ``kernel build``  -- ``kernel_build`` (alpha = mean |W| over the kept entries, sign(W) * M),
* ``score grad``    -- ``score_grad`` (the straight-through sign(s) * W * G),
* ``conv/matmul`` -- convolutions and dot products, forward and backward (cuDNN / cuBLAS
  custom calls and Triton GEMM fusions on a GPU),
* ``batchnorm``, ``optimizer`` (the ``optimizer`` scope of train_step: optax update, the
  finite check and the select that keeps the old state on NaN), ``metrics``, ``other``
  (activations, pooling, loss), ``unattributed`` (instructions XLA created without a JAX
  name stack: copies, layout changes, cumsums expanded into reduce-windows; compare their
  count between biprop and dense to see how many belong to the mask).

Printed: per category the device milliseconds per step, its share of the busy device time
and the number of kernels (events) per step; then the top instructions; then the step's
wall time against the summed device time (on a GPU the difference is idle time between
kernels: launch latency that a fused kernel would remove). Percentages are of device time,
so they hold on a busy or quiet host alike; the wall figures need a quiet one.

XLA's GPU command buffers (CUDA graphs) are switched off while profiling unless
``--command-buffers`` is given: the kernels a graph replays are not traced one by one, and
on an H200 the first profile lost most of the step that way (conv4's mask search showed 2
kernels, resnet18_cifar's summed device time was 2.1 of 4.9 ms).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

NO_COMMAND_BUFFERS = "--xla_gpu_enable_command_buffer="
CATEGORIES = ("mask search", "kernel build", "score grad", "conv/matmul", "batchnorm",
              "optimizer", "metrics", "other", "unattributed")

# ---------------------------------------------------------------------------
# HLO text -> op_names of every instruction (fusions: of their fused computations)

_COMP_RE = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")
_INSTR_RE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPNAME_RE = re.compile(r'op_name="([^"]*)"')
_CALLS_RE = re.compile(r"(?:calls|to_apply|body|condition|branch_computations)="
                       r"(\{[^}]*\}|%?[\w.\-]+)")
_OPCODE_RE = re.compile(r"^[^=]*?\s([a-z][\w\-]*)\(")
_TARGET_RE = re.compile(r'custom_call_target="([^"]*)"')


def parse_hlo(text: str) -> dict[str, dict]:
    """{instruction name: dict(op_names=[...], opcode=str, opcodes={...})} for the whole
    module; op_names and opcodes of an instruction that calls computations (fusion, while,
    conditional) include those of the instructions it calls. A custom call's opcode is
    ``custom-call:<target>`` (e.g. cuDNN convolutions, cuBLAS GEMMs)."""
    comps: dict[str, list[str]] = {}  # computation -> instruction names
    info: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        m = _COMP_RE.match(line)
        if m and "=" not in line.split("(")[0]:
            current = m.group(1)
            comps[current] = []
            continue
        m = _INSTR_RE.match(line)
        if not m or current is None:
            continue
        name, rest = m.group(1), m.group(2)
        op = _OPCODE_RE.match(" " + rest)
        opcode = op.group(1) if op else ""
        target = _TARGET_RE.search(rest)
        if opcode == "custom-call" and target:
            opcode = f"custom-call:{target.group(1)}"
        calls = []
        for group in _CALLS_RE.findall(rest):
            calls += [c.strip(" {}%") for c in group.split(",") if c.strip(" {}%")]
        info[name] = dict(op_names=_OPNAME_RE.findall(rest), calls=calls, opcode=opcode)
        comps[current].append(name)

    def collect(instr: str, seen: set) -> tuple[list[str], set]:
        names, opcodes = list(info[instr]["op_names"]), {info[instr]["opcode"]}
        for comp in info[instr]["calls"]:
            if comp in seen or comp not in comps:
                continue
            seen.add(comp)
            for sub in comps[comp]:
                n, o = collect(sub, seen)
                names += n
                opcodes |= o
        return names, opcodes

    out = {}
    for name, v in info.items():
        names, opcodes = collect(name, set())
        out[name] = dict(op_names=names, opcode=v["opcode"], opcodes=opcodes)
    return out


_MATMUL = re.compile(r"^(convolution|dot)$|^custom-call:.*(cudnn|cublas|conv|gemm|matmul)",
                     re.IGNORECASE)


def categorize(op_names: list[str], opcodes=()) -> str:
    """One category of CATEGORIES for an instruction with these op_name metadata strings and
    (fused) opcodes. Convolutions and GEMMs count as "conv/matmul" also where XLA dropped
    their metadata (it does for some rewritten backward convolutions)."""
    joined = " ".join(op_names)
    if "mask_search" in joined:
        return "mask search"
    if "score_grad" in joined:
        return "score grad"
    if "kernel_build" in joined:
        return "kernel build"
    if ("conv_general_dilated" in joined or "dot_general" in joined
            or any(_MATMUL.search(o) for o in opcodes)):
        return "conv/matmul"
    if "optimizer" in joined:
        return "optimizer"
    if "metrics" in joined:
        return "metrics"
    if re.search(r"BatchNorm|/bn\w*[/.]|batch_norm", joined):
        return "batchnorm"
    if not any("/" in n for n in op_names):
        # No JAX name stack: an op XLA created (copies, layout changes, the expansion of a
        # cumsum into reduce-windows, ...) whose origin the metadata does not say.
        return "unattributed"
    return "other"


# ---------------------------------------------------------------------------
# Trace -> per-instruction device time


def load_trace_events(trace_dir: str) -> list[dict]:
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"),
                             recursive=True))
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir} (jax.profiler "
                                "needs create_perfetto_trace=True)")
    with gzip.open(paths[-1], "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def device_time(events: list[dict], hlo: dict[str, dict]) -> dict:
    """Summed duration (us) and count of trace events per HLO instruction.

    Only complete events ("X") that name an instruction of ``hlo`` count: on a GPU the kernel
    events (``args.hlo_op``) on the device's stream threads, on the CPU the thunk events.
    Where a device has both per-kernel stream events and an "XLA Ops" summary line, the
    stream events are used (else each op would count twice).
    """
    threads = {}
    procs = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e.get("pid"), e.get("tid"))] = e.get("args", {}).get("name", "")
        if e.get("ph") == "M" and e.get("name") == "process_name":
            procs[e.get("pid")] = e.get("args", {}).get("name", "")
    per_thread: dict = collections.defaultdict(list)
    for e in events:
        if e.get("ph") != "X":
            continue
        args = e.get("args") or {}
        name = args.get("hlo_op") or e.get("name", "")
        if name not in hlo:
            continue
        per_thread[(e.get("pid"), e.get("tid"))].append((name, float(e.get("dur", 0.0))))
    on_gpu = {k for k in per_thread if "gpu" in procs.get(k[0], "").lower()
              or "tpu" in procs.get(k[0], "").lower()}
    streams = {k for k in on_gpu if "stream" in threads.get(k, "").lower()}
    chosen = streams or on_gpu or set(per_thread)
    out: dict = collections.defaultdict(lambda: [0.0, 0])
    for key in chosen:
        for name, dur in per_thread[key]:
            out[name][0] += dur
            out[name][1] += 1
    return dict(out)


# ---------------------------------------------------------------------------
# Report


def summarize(times: dict, hlo: dict[str, dict], steps: int) -> dict:
    cats = {c: dict(us=0.0, kernels=0) for c in CATEGORIES}
    ops = []
    for name, (us, count) in times.items():
        cat = categorize(hlo[name]["op_names"], hlo[name]["opcodes"])
        cats[cat]["us"] += us
        cats[cat]["kernels"] += count
        ops.append(dict(instruction=name, category=cat, opcode=hlo[name]["opcode"],
                        us_per_step=us / steps, kernels_per_step=count / steps))
    total = sum(c["us"] for c in cats.values())
    rows = [dict(category=c, ms_per_step=v["us"] / steps / 1e3,
                 share=(v["us"] / total if total else 0.0), kernels_per_step=v["kernels"] / steps)
            for c, v in cats.items()]
    ops.sort(key=lambda r: -r["us_per_step"])
    return dict(categories=rows, top_ops=ops, device_ms_per_step=total / steps / 1e3)


def format_report(summary: dict, wall_ms: float, title: str, top: int = 15) -> str:
    lines = [f"## {title}", "",
             "| category | device ms/step | share of device time | kernels/step |",
             "|---|---|---|---|"]
    for r in summary["categories"]:
        lines.append(f"| {r['category']} | {r['ms_per_step']:.3f} | {100 * r['share']:.1f} % "
                     f"| {r['kernels_per_step']:.1f} |")
    dev = summary["device_ms_per_step"]
    kernels = sum(r["kernels_per_step"] for r in summary["categories"])
    lines.append(f"| **all** | **{dev:.3f}** | 100 % | {kernels:.1f} |")
    lines += ["", f"Step wall time {wall_ms:.3f} ms (median, traced steps); summed device "
              f"time {dev:.3f} ms; wall - device = {wall_ms - dev:.3f} ms "
              "(GPU: idle between kernels and launch latency; CPU: thunks run in parallel "
              "on several threads, so device time can exceed wall time).", "",
              f"Top {top} instructions:", "",
              "| instruction | opcode | category | us/step | kernels/step |", "|---|---|---|---|---|"]
    for r in summary["top_ops"][:top]:
        lines.append(f"| {r['instruction']} | {r['opcode']} | {r['category']} | "
                     f"{r['us_per_step']:.1f} | {r['kernels_per_step']:.1f} |")
    return "\n".join(lines)


def profile(config, steps: int, warmup: int, trace_dir: str | None = None) -> dict:
    """Compiles the step of ``config``, traces ``steps`` steps, returns the summary."""
    import jax  # noqa: PLC0415
    import train_step as ts  # noqa: PLC0415  (benchmarks/train_step.py)
    from mpt_jax import parallel  # noqa: PLC0415

    mesh = parallel.make_mesh(jax.devices()[:1])
    p_train, state, batch = ts.build_step(config, mesh)
    compiled = p_train.lower(state, batch).compile()
    hlo = parse_hlo(compiled.as_text())
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    trace_dir = trace_dir or tempfile.mkdtemp(prefix="mpt_jax_profile_")
    walls = []
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(steps):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
            walls.append(time.perf_counter() - t0)
    times = device_time(load_trace_events(trace_dir), hlo)
    if not times:
        raise RuntimeError(f"the trace in {trace_dir} has no events naming an instruction of "
                           "the compiled step (unknown trace format for this backend)")
    summary = summarize(times, hlo, steps)
    walls.sort()
    summary.update(wall_ms_per_step=1e3 * walls[len(walls) // 2], trace_dir=trace_dir,
                   device=jax.devices()[0].device_kind, backend=jax.default_backend(),
                   jax=jax.__version__)
    return summary


def main(argv=None) -> int:
    import train_step as ts  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--mode", default="biprop")
    ap.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--keep-fraction", type=float, default=0.2)
    ap.add_argument("--mask-impl", default="per_layer", choices=("per_layer", "batched"))
    ap.add_argument("--mask-method", default="radix_many")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--trace-dir", default=None, help="keep the raw trace here (TensorBoard "
                    "profile plugin / ui.perfetto.dev); default a temporary folder")
    ap.add_argument("--json", default=None, help="append the summary as one JSON line")
    ap.add_argument("--markdown", default=None, help="append the printed tables to this file")
    ap.add_argument("--command-buffers", action="store_true",
                    help="keep XLA's GPU command buffers (CUDA graphs). By default they are "
                         "switched off: the kernels a graph runs do not appear in the trace "
                         "one by one (seen on an H200: the mask search vanished from it), so "
                         "the attribution would be incomplete. Without them every kernel is "
                         "launched on its own, so the wall time includes the launch gaps that "
                         "graphs would hide")
    args = ap.parse_args(argv)
    if not args.command_buffers:  # read when the backend starts, i.e. after this line
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                                   NO_COMMAND_BUFFERS).strip()
    config = ts.load_config(args.model, args.mode, args.batch, args.precision,
                            args.keep_fraction, args.mask_impl, args.mask_method)
    summary = profile(config, args.steps, args.warmup, args.trace_dir)
    if args.mode not in ("biprop", "edgepopup"):
        label = "no mask"
    else:
        label = f"batched:{args.mask_method}" if args.mask_impl == "batched" else "per-layer"

    title = (f"{args.model} {args.mode} ({label}), batch {args.batch}, "
             f"{summary['device']} ({summary['backend']}), jax {summary['jax']}"
             f"{'' if args.command_buffers else ', command buffers off'}")
    report = format_report(summary, summary["wall_ms_per_step"], title, args.top)
    print(report, flush=True)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(report + "\n\n")
    if args.json:
        summary.update(model=args.model, mode=args.mode, batch=args.batch, mask=label,
                       top_ops=summary["top_ops"][:args.top])
        with open(args.json, "a") as f:
            f.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
