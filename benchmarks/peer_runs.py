"""The PyTorch peer of a throughput row: ../shared/bench/torch_peer.py (the original method
done the original way) for the same model and batch, run eager and with ``--compile``
(torch.compile), each the median of its repeats; the faster of the two is the one to beat.
With ``--precision bfloat16`` both run bf16 + channels-last, the peer's strongest settings.
"""
from __future__ import annotations

import json
import os
import subprocess

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PEER = os.path.join(_REPO, "..", "shared", "bench", "torch_peer.py")
# our model name -> torch_peer.py --model (and its extra flags)
PEER_MODELS = {"conv4": ("conv4", []), "resnet18_cifar": ("cifar_resnet18", []),
               "wrn50_2": ("wrn50_2", ["--size", "224"]),
               "resnet50": ("resnet50", ["--size", "224"])}
KINDS = ("eager", "compile")


def run_peer(model: str, batch: int, precision: str, device: str, peer_path: str,
             steps: int, warmup: int, python: str, timeout: float, compiled: bool = False,
             repeats: int = 5) -> dict:
    """images/s of one torch_peer.py run (or why there is none)."""
    if model not in PEER_MODELS:
        return dict(status="report", note=f"torch_peer has no {model}")
    if not os.path.exists(peer_path):
        return dict(status="missing", note=f"no torch_peer.py at {peer_path} (--peer-path)")
    name, extra = PEER_MODELS[model]
    cmd = [python, peer_path, "--model", name, "--batch", str(batch), "--device", device,
           "--steps", str(steps), "--warmup", str(warmup), "--repeats", str(repeats), *extra]
    if precision == "bfloat16":
        cmd += ["--bf16", "--channels-last"]
    if compiled:
        cmd += ["--compile"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(status="timeout", note=f"torch_peer exceeded {timeout:.0f} s")
    for line in reversed(out.stdout.strip().splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            result["status"] = "ok"
            result["command"] = " ".join(cmd[1:])
            return result
    tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
    return dict(status="failed", note=tail[0][:200], command=" ".join(cmd[1:]))


def run_peers(*args, kinds=KINDS, **kwargs) -> dict:
    """``run_peer`` eager and compiled: {"eager": ..., "compile": ..., "status", and where one
    ran: "images_per_s" and "best" (the faster kind)}."""
    results = {kind: run_peer(*args, compiled=kind == "compile", **kwargs) for kind in kinds}
    ran = {kind: r for kind, r in results.items() if r["status"] == "ok"}
    if not ran:
        first = results[kinds[0]]
        return dict(results, status=first["status"], note=first.get("note", ""))
    best = max(ran, key=lambda kind: ran[kind]["images_per_s"])
    return dict(results, status="ok", best=best, images_per_s=ran[best]["images_per_s"])


def row_fields(peer: dict) -> dict:
    """The peer's columns of a throughput row: the faster kind's images/s (or why there is
    none), and each kind's own."""
    fields = dict(peer_status=peer["status"],
                  peer_images_per_s=(peer["images_per_s"] if peer["status"] == "ok"
                                     else peer["status"]))  # report | failed | timeout ...
    if peer.get("best"):
        fields["peer_best"] = peer["best"]
    for kind in KINDS:
        result = peer.get(kind)
        if result is not None:
            fields[f"peer_{kind}_images_per_s"] = (result["images_per_s"]
                                                   if result["status"] == "ok"
                                                   else result["status"])
    if peer.get("note"):
        fields["peer_note"] = peer["note"]
    return fields
