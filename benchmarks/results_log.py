"""The raw rows behind the tables of RESULTS.md: ``benchmarks/results/<name>.jsonl``.

Every benchmark script appends one JSON object per measurement there by default (``--results
PATH`` elsewhere, ``--results=`` not at all), stamped by ``stamp()`` with when it ran (UTC),
an id shared by the rows of one invocation, the hardware (accelerator and host CPU), the
versions and the command line, so a reader can recompute any table from its rows. Rows of
runs whose raw output was not kept are transcribed from the printed table and say so in
their ``source`` field.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def default_path(name: str) -> str:
    """benchmarks/results/<name>.jsonl."""
    return os.path.join(RESULTS_DIR, f"{name}.jsonl")


def host_cpu() -> str:
    """The host CPU's model name and core count, e.g. "AMD EPYC 7B13, 2 cores"."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


_RUN = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f"-{os.getpid()}"


def stamp(**versions) -> dict:
    """When, where and with what a row was measured; ``versions``: e.g. jax=jax.__version__,
    accelerator="NVIDIA H200" (the script knows which libraries it used)."""
    return dict(date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), run=_RUN,
                host_cpu=host_cpu(), python=platform.python_version(), **versions,
                command=shlex.join([os.path.relpath(sys.argv[0]) if sys.argv[0] else "python",
                                    *sys.argv[1:]]))


def append(path: str | None, row: dict) -> None:
    """Appends ``row`` to ``path`` at once (a later row may be cut off by a time limit); no
    path: nothing."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read(path: str) -> list[dict]:
    """Every row of a results file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_partial(path: str) -> list[dict]:
    """The rows of a file a run may have left half-written (a time limit cut a line, or the
    file was never made): every complete JSON object line, nothing else."""
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    return rows
