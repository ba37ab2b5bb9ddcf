"""Where the score gradient sign(s) * W * G lands in the compiled step (compiles, runs nothing).

    python benchmarks/score_grad_hlo.py --model wrn34_2_binact --batch 256 --precision bfloat16

The profile of wrn34_2_binact on an H100 gave the score gradient 1.55 ms in 39 kernels
(one per layer), several times what reading s, W and G and writing the gradient costs at
the card's bandwidth. This prints, for every fused computation of the compiled training step
that holds part of the score gradient (XLA keeps the ``score_grad`` name scope of
``mpt_jax.ops`` in its op_name metadata): its kind, the other scopes fused with it (the
optimizer? the kernel build?), whether it transposes or copies (G arriving from the
convolution's weight gradient in another layout than the scores), and its operand and
result layouts. The answer says what fusing the score gradient would take
(benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import train_step  # noqa: E402  (benchmarks/train_step.py: configs and the real step)
from mpt_jax import parallel  # noqa: E402

SCOPES = ("score_grad", "kernel_build", "mask_search", "optimizer", "metrics")
_OPCODE = re.compile(r"=\s*\S+\s+([a-z][a-z0-9-]*)\(")
_CALLS = re.compile(r"calls=(%[\w.\-]+)")


def computations(hlo: str) -> dict[str, list[str]]:
    """Computation name -> its instruction lines (HLO text of a compiled module)."""
    out, name = {}, None
    for line in hlo.splitlines():
        if not line.startswith(" ") and line.rstrip().endswith("{"):
            head = line.split()[0] if not line.startswith("ENTRY") else line.split()[1]
            name = head if head.startswith("%") else "%" + head
            out[name] = []
        elif line.startswith("}"):
            name = None
        elif name is not None and line.strip():
            out[name].append(line.strip())
    return out


def report(hlo: str) -> list[str]:
    comps = computations(hlo)
    callers = {}
    for lines in comps.values():
        for line in lines:
            m = _CALLS.search(line)
            if m and " fusion(" in line:
                callers[m.group(1)] = line
    lines_out, kinds = [], collections.Counter()
    for name, lines in comps.items():
        scopes = {s for s in SCOPES for line in lines if f"/{s}/" in line or f"/{s}\"" in line}
        if "score_grad" not in scopes or name not in callers:
            continue
        ops = collections.Counter(m.group(1) for m in map(_OPCODE.search, lines) if m)
        moves = {k: v for k, v in ops.items() if k in ("transpose", "copy")}
        caller = callers[name]
        kind = re.search(r"kind=(\w+)", caller)
        kinds[("transposes" if moves else "elementwise", tuple(sorted(scopes)))] += 1
        lines_out.append(f"{name}: {kind.group(1) if kind else '?'}, scopes {sorted(scopes)}, "
                         f"moves {moves or 'none'}, ops {dict(ops.most_common(6))}")
        lines_out.append("    " + caller.split(", metadata")[0][:300])
    summary = [f"{n} fusion(s): {what}, scopes {list(scopes)}"
               for (what, scopes), n in kinds.most_common()]
    return summary + [""] + lines_out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="wrn34_2_binact")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--precision", default="bfloat16")
    ap.add_argument("--mask-method", default="radix_many")
    ap.add_argument("--out", default=None, help="also write the report here")
    args = ap.parse_args(argv)
    config = train_step.load_config(args.model, "biprop", args.batch, args.precision, 0.2,
                                    "batched", args.mask_method)
    mesh = parallel.make_mesh(jax.devices()[:1])
    p_train, state, batch = train_step.build_step(config, mesh)
    hlo = p_train.lower(state, batch).compile().as_text()
    text = "\n".join([f"# {args.model} biprop, {jax.devices()[0].device_kind}, jax "
                      f"{jax.__version__}: fusions holding the score gradient"] + report(hlo))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
