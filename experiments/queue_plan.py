"""What the reproduction queue (reproduce.py) starts in a window: time estimates, the budget
plan, and member programs.

* ``estimate_seconds(run, rows, hardware, epochs)``: one run alone, from earlier rows.
* ``Program``: queue runs that differ only in keep_fraction and seed, trained as ONE
  member program (``python -m mpt_jax.main --config.members.keep_fraction=...
  --config.members.seed=...``, mpt_jax.members): one process, one vmapped step for all of
  them. Every member still leaves its own single-run workdir, so the queue still writes one
  results row and one ticket per run. The program's data seed is its first member's seed;
  a member with another seed trained on that data order, which its row records
  (``data_seed=<d>`` in its overrides).
* ``group(runs)``: the programs of a list of runs (reproduce.py ``--members``).
* ``plan(items, rows, hardware, budget_s, epochs)``: which runs and programs start.

A program's estimate is its members' estimates divided by ``program_speedup``: how much
faster programs trained their members than single runs would have, learnt from the
results rows of earlier programs on the same hardware (``members`` column > 1), 1 (no
speed-up) until there are any.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import statistics
import sys
import types

# Built-in guesses (seconds for 100 epochs, process start to exit) for a model with no
# earlier row on this hardware: one H100/H200, bf16, measured end-to-end runs where we
# have them (ResNet-18 150 s), scaled by multiply-accumulates for the others.
GPU_GUESS_S = {"resnet18": 160, "vgg_small": 150, "wide_vgg_small_binact": 240,
               "conv2": 60, "conv4": 70, "conv6": 80, "conv8": 90}
CPU_FACTOR = 150  # 2 CPU cores against one H100, roughly (ResNet-18: 57 vs ~48,000 images/s)
DEFAULT_SPEEDUP = 1.0  # a program's speed-up before any program row was measured


def members_of(row: dict) -> int:
    """The size of the member program a results row came from (1: a single run)."""
    try:
        return max(1, int(row.get("members") or 1))
    except (TypeError, ValueError):
        return 1


def _per_epoch(row: dict) -> float | None:
    try:
        return float(row["wall_seconds"]) / max(1, int(row["parallel"] or 1)) / max(
            1, int(row["epochs"]))
    except (KeyError, ValueError, TypeError):
        return None


def estimate_seconds(run, rows: list[dict], hardware: str, epochs: int = 100) -> float:
    """Seconds one run takes alone on ``hardware``: the median of earlier single-run rows of
    the same run key (then the same config file) on that hardware, each row's wall time
    divided by the number of runs that shared the device with it and scaled to ``epochs``.
    Rows of member programs say what a program took, not one run: they are left out."""
    singles = [r for r in rows if members_of(r) == 1 and r.get("hardware") == hardware]
    for match in (lambda r: r["run"].rsplit(",seed=", 1)[0] == run.key,
                  lambda r: r["config"] == run.config):
        values = sorted(v for r in singles if match(r) for v in [_per_epoch(r)] if v)
        if values:
            return values[len(values) // 2] * epochs
    model = run.stem.replace("cifar10_", "")
    model = re.sub(r"_binact$", "", model) if model.startswith("conv") else model
    model = "conv8" if model.startswith("conv8") else model
    guess = GPU_GUESS_S.get(model, 200) * epochs / 100
    return guess if "cpu" not in hardware.lower() else guess * CPU_FACTOR


def program_speedup(rows: list[dict], hardware: str) -> float:
    """How many times faster member programs trained their members on ``hardware`` than
    the same runs alone: the median, over the program rows, of the member's single-run
    estimate over its share of the program's wall time; DEFAULT_SPEEDUP without rows."""
    ratios = []
    for row in rows:
        count, per_epoch = members_of(row), _per_epoch(row)
        if count == 1 or row.get("hardware") != hardware or not per_epoch:
            continue
        config = row.get("config", "")
        run = types.SimpleNamespace(key=row["run"].rsplit(",seed=", 1)[0], config=config,
                                    stem=os.path.splitext(os.path.basename(config))[0])
        ratios.append(estimate_seconds(run, rows, hardware, 1) / (per_epoch / count))
    return statistics.median(ratios) if ratios else DEFAULT_SPEEDUP


# --------------------------------------------------------------------------------------
# Member programs


@dataclasses.dataclass(frozen=True)
class Program:
    """Queue runs that differ only in keep_fraction and seed, as one member program."""

    runs: tuple

    @property
    def key(self) -> str:
        """The runs' key without their keep fraction."""
        first = self.runs[0]
        return ",".join([first.stem] + [f"{k}={v}" for k, v in first.overrides
                                        if k != "keep_fraction"])

    @property
    def name(self) -> str:
        """Unique for its members (a stopped program resumes only with the same ones)."""
        digest = hashlib.sha1(" ".join(r.name for r in self.runs).encode()).hexdigest()[:8]
        return f"{self.key},members={len(self.runs)}-{digest}"

    @property
    def data_seed(self) -> int:
        return self.runs[0].seed

    def command(self, workdir: str, extra: list[str]) -> list[str]:
        """``python -m mpt_jax.main`` of the program: the shared overrides, one keep fraction
        and seed per member, the data seed as the config's seed."""
        first = self.runs[0]
        cmd = [sys.executable, "-m", "mpt_jax.main", f"--config={first.config}",
               f"--workdir={workdir}", f"--config.seed={self.data_seed}",
               "--config.progress_bar=False"]
        cmd += [f"--config.{k}={v}" for k, v in first.overrides if k != "keep_fraction"]
        keeps = [dict(r.overrides).get("keep_fraction") for r in self.runs]
        if keeps[0] is not None:
            cmd.append("--config.members.keep_fraction=" + ",".join(str(k) for k in keeps))
        seeds = [str(r.seed) for r in self.runs]
        cmd.append("--config.members.seed=" + (seeds[0] if len(set(seeds)) == 1 else
                                                ",".join(seeds)))  # one value: every member's
        return cmd + [f"--config.{item}" for item in extra]

    def member_workdirs(self, workdir: str) -> list[str]:
        """The members' workdirs in run order, from the program's members.json ([] if the
        program never started)."""
        path = os.path.join(workdir, "members.json")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [os.path.join(workdir, m["workdir"]) for m in json.load(f)["members"]]

    def estimate(self, rows: list[dict], hardware: str, epochs: int = 100) -> float:
        alone = sum(estimate_seconds(r, rows, hardware, epochs) for r in self.runs)
        return alone / program_speedup(rows, hardware)


def _identity(run) -> tuple:
    """What members of one program share: everything but keep_fraction and seed (whether
    a keep fraction is set at all included)."""
    overrides = dict(run.overrides)
    return (run.group, run.config, run.ship, "keep_fraction" in overrides,
            tuple((k, v) for k, v in run.overrides if k != "keep_fraction"))


def group(runs: list) -> list:
    """``runs`` with every set of two or more that differ only in keep_fraction and seed
    replaced by one Program, placed where its first run was."""
    sets: dict[tuple, list] = {}
    for run in runs:
        sets.setdefault(_identity(run), []).append(run)
    out, placed = [], set()
    for run in runs:
        ident = _identity(run)
        if len(sets[ident]) == 1:
            out.append(run)
        elif ident not in placed:
            placed.add(ident)
            out.append(Program(tuple(sets[ident])))
    return out


def estimate(item, rows: list[dict], hardware: str, epochs: int = 100) -> float:
    """Seconds a run or a program takes on ``hardware``."""
    if isinstance(item, Program):
        return item.estimate(rows, hardware, epochs)
    return estimate_seconds(item, rows, hardware, epochs)


def plan(items: list, rows: list[dict], hardware: str, budget_s: float | None,
         epochs: int = 100) -> tuple[list[tuple], list]:
    """(runs and programs to start with their estimates, those skipped for the budget),
    priority order; runs that have a row already are left out. One that does not fit is
    skipped and a later, shorter one may still start."""
    done = {row["run"] for row in rows}
    todo, over, committed = [], [], 0.0
    for item in items:
        if getattr(item, "name", None) in done:
            continue
        est = estimate(item, rows, hardware, epochs)
        if budget_s is not None and committed + est > budget_s:
            over.append(item)
            continue
        committed += est
        todo.append((item, est))
    return todo, over
