"""Aggregate throughput of a member program (mpt_jax.members) against one run, same process.

    python benchmarks/members.py                                  # conv4 x 6, resnet18_cifar x 3
    python benchmarks/members.py --programs conv4=6 --batch 128 --json rows.jsonl
    python benchmarks/members.py --programs conv2=2 --width-mult 0.0625 --batch 8 \\
        --steps 2 --repeats 2 --precision float32                 # tiny, on a CPU

For every ``model=M`` of ``--programs`` it times two steps of mpt_jax, built as a run builds
them: the single run's jitted step (``train.make_parallel_steps``, the first member's config:
keep fraction 0.8, seed 0) and the member program's step (``members.parallel_steps``: jax.vmap over the M members' stacked
states, one shared batch; members at the keep fractions 0.8, 0.6, 0.5, 0.4, 0.2, 0.1, ...
and seeds 0, 1, ..., like a keep-fraction curve). Each step is compiled ahead of time
(compile seconds reported apart), run ``--warmup`` times, then ``--repeats`` blocks of
``--steps`` steps, each block synchronised with ``block_until_ready``; the median block is
reported. Inputs: one fixed random batch on the device (CIFAR-size 32x32x3).

Columns: ``members`` (1: the single run), ``images/s`` = images trained per second summed
over the members (M x batch / step time), ``per member``, ``ms/step``, ``speed-up`` =
aggregate images/s / the single run's images/s (what the program saves against running its
members one after another), ``100 epochs`` = minutes of training steps alone for 100 CIFAR-10
epochs (45,000 training images at --batch) of all members (the single run: M runs one after
another), ``step mem`` (XLA's memory analysis of the compiled step), ``compile s``. The goal
a GPU session measures: a Conv-4 keep-fraction curve (6 members, 100 epochs) in under 5
minutes on one H100 / H200.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(_HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(_HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mpt_jax import config_utils, members, models, optim, parallel, train  # noqa: E402
from mpt_jax.data import registry as datasets  # noqa: E402

sys.path.insert(0, _HERE)
import train_step  # noqa: E402  (benchmarks/train_step.py: the configs of its models)

CURVE = (0.8, 0.6, 0.5, 0.4, 0.2, 0.1)  # the paper's keep fractions
CIFAR_TRAIN = 45_000  # CIFAR-10 training images after the held-out split
DEFAULT_PROGRAMS = "conv4=6,resnet18_cifar=3"


def parse_programs(text: str) -> list[tuple[str, int]]:
    """"conv4=6,resnet18_cifar=3" -> [("conv4", 6), ("resnet18_cifar", 3)]."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        model, _, count = item.partition("=")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--programs {item!r}: expected MODEL=M with M >= 1")
        out.append((model, int(count)))
    return out


def program_config(model: str, count: int, args):
    """The model's experiment config with the benchmark's settings and ``count`` members."""
    config = train_step.load_config(model, "biprop", args.batch, args.precision, 0.2,
                                    args.mask_impl, args.mask_method)
    config = config_utils.resolve(config)
    if args.width_mult and "width_mult" in models.model_options(model):
        config.model_options.width_mult = args.width_mult
    keeps = [CURVE[i % len(CURVE)] for i in range(count)]
    config.members.keep_fraction = tuple(keeps)
    config.members.seed = tuple(range(count))
    return config


def build(config, mesh, program: bool):
    """(jitted step, its state, a random batch on the device) of one run (the first member's
    config) or of the member program."""
    info = datasets.get(config.dataset)
    named = config_utils.member_configs(config)
    tracks = [members.Track(c, "", None, name=n, index=i) for i, (n, c) in enumerate(named)]
    if not program:
        tracks = [members.Track(named[0][1], "", None)]
    run_config = tracks[0].config if not program else config
    model = train.create_model(run_config, info.num_classes)
    tx = optim.make_optimizer(run_config, 1000)
    shapes = types.SimpleNamespace(num_classes=info.num_classes, image_shape=info.image_shape)
    p_train, _ = members.parallel_steps(run_config, model, tx, mesh, tracks, shapes)
    states = members.initial_states(tracks, tx, info.num_classes, info.image_shape, model)
    state = members.stack(states, tracks, mesh)
    rng = np.random.default_rng(0)
    batch = dict(image=rng.standard_normal((config.batch_size, *info.image_shape), np.float32),
                 label=rng.integers(0, info.num_classes, config.batch_size).astype(np.int32))
    return p_train, state, jax.device_put(batch, parallel.batch_sharding(mesh))


def _step_memory_gib(compiled) -> float | None:
    """The compiled step's device memory (arguments + outputs + temporaries - donated)."""
    try:
        m = compiled.memory_analysis()
        total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                 - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001  (not every backend reports it)
        return None
    return round(total / 2 ** 30, 3)


def measure(config, mesh, count: int, program: bool, args) -> dict:
    """One row: the single run (``program`` False) or the program of ``count`` members."""
    p_train, state, batch = build(config, mesh, program)
    t0 = time.perf_counter()
    compiled = p_train.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append((time.perf_counter() - start) / args.steps)
    step_s = statistics.median(times)
    trained = count if program else 1
    steps_100 = 100 * (CIFAR_TRAIN // config.batch_size)
    return dict(model=config.model, members=trained, batch=config.batch_size,
                precision=str(jnp.dtype(train.compute_dtype(config))),
                mask_impl=train.resolved_mask_impl(config),
                images_per_s=round(trained * config.batch_size / step_s, 1),
                per_member_images_per_s=round(config.batch_size / step_s, 1),
                ms_per_step=round(step_s * 1e3, 3),
                spread=round((max(times) - min(times)) / step_s, 3),
                # all `count` members' 100 epochs: one program, or `count` runs in a row
                curve_100_epochs_min=round(steps_100 * step_s * (1 if program else count) / 60, 2),
                step_mem_gib=_step_memory_gib(compiled),
                compile_s=round(compile_s, 1),
                finite=bool(np.all(np.asarray(metrics["finite"]))),
                device=jax.devices()[0].device_kind, backend=jax.default_backend(),
                jax=jax.__version__)


COLUMNS = [("model", "model"), ("members", "members"), ("batch", "batch"),
           ("precision", "prec"), ("mask_impl", "masks"), ("images_per_s", "images/s"),
           ("per_member_images_per_s", "per member"), ("ms_per_step", "ms/step"),
           ("speedup", "speed-up"), ("curve_100_epochs_min", "100 epochs (min)"),
           ("step_mem_gib", "step mem GiB"), ("compile_s", "compile s")]


def add_speedups(rows: list[dict]) -> None:
    """speed-up of each program row against the single run of its model."""
    single = {r["model"]: r for r in rows if r.get("members") == 1 and "images_per_s" in r}
    for r in rows:
        base = single.get(r.get("model"))
        if base is not None and "images_per_s" in r:
            r["speedup"] = round(r["images_per_s"] / base["images_per_s"], 2)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [r.get(k, r.get("error", "-") if k == "images_per_s" else "-") for k, _ in COLUMNS]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--programs", default=DEFAULT_PROGRAMS,
                    help="comma list of MODEL=M (members); default %(default)s")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--mask-impl", default="auto", choices=("auto", "per_layer", "batched"))
    ap.add_argument("--mask-method", default="radix_many")
    ap.add_argument("--width-mult", type=float, default=0.0,
                    help="model_options.width_mult of the conv models (tiny CPU runs); 0: theirs")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None, help="append the rows as JSON lines to this file")
    args = ap.parse_args(argv)
    try:
        programs = parse_programs(args.programs)
    except ValueError as e:
        ap.error(str(e))
    mesh = parallel.make_mesh(jax.devices()[:1])  # one device: per-chip throughput
    print(f"# {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}",
          flush=True)
    rows = []
    for model, count in programs:
        for program in (False, True):
            try:
                row = measure(program_config(model, count, args), mesh, count, program, args)
            except Exception as e:  # noqa: BLE001  (one failed row must not lose the others)
                row = dict(model=model, members=count if program else 1,
                           error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:  # at once: a later row may be cut by a time limit
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    add_speedups(rows)
    print(markdown_table(rows), flush=True)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
