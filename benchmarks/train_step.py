"""Throughput of the jitted training step, optionally side by side with torch_peer.py.

    python benchmarks/train_step.py --model resnet18_cifar --batch 256 --precision bfloat16 \
        --modes biprop,dense --select radix,sort --torch-peer
    python benchmarks/train_step.py --model conv4 --batch 32 --precision float32 --torch-peer \
        --peer-device cpu                                   # the CPU table of RESULTS.md

What is timed: the real step of mpt_jax.train (``make_parallel_steps``: forward, backward,
optax update, BN statistics, buffer donation) on one fixed random batch already on the
device (32x32x3 for CIFAR models, 224x224x3 for ImageNet models), keep_fraction 0.2. The
step is compiled ahead of time (the compile time is reported on its own), run ``--warmup``
times, then ``--repeats`` times ``--steps`` steps, each block synchronised with
``block_until_ready``; the table gives the median. The compiled executable rejects inputs of
other types, so a step whose output state did not match its input (which would recompile
under jit) fails loudly instead of being timed.

Columns: images/s and ms/step (median; ``spread`` = (max - min) / median of the repeats),
``vs dense`` = images/s of this row / images/s of the same model in mode=dense (target
>= 0.90 / 0.95, benchmarks/README.md), ``mask %`` = 1 - dense step time / this step time
(the share of the step the mask search and binarisation cost), ``step mem`` = the compiled
step's device memory (arguments + outputs + temporaries - donated aliases, from XLA's memory
analysis), ``peak``
= the device allocator's peak so far in this process (GPU only; rows run in order, so it
is exact for the first row and an upper bound afterwards), ``compile`` = lower + compile
seconds. ``--select`` picks the per-layer k-th-largest search of the biprop rows
(benchmarks/select_variants.py): ``auto`` is the package's own path (each layer searches its
scores); ``sort``, ``radix``, ``radix_compare`` run that select per layer, as masks computed
before the forward pass (mask_method ``per_leaf:<select>``: the same operations outside the
layers); ``noop`` replaces the select by a constant (WRONG masks, timing only: the cost of the
mask without the threshold search); ``kept_mask`` finds the tie cut-off by a second radix
select instead of the cumsum. ``--mask-impl batched`` (train.py mask_impl, all layers' masks
at once before apply, mpt_jax.masks) with ``--mask-method compare,radix_many`` adds rows
whose select column reads ``batched:<method>`` (also ``compare_bcast<D>`` of
select_variants). The speed knobs $MPT_JAX_SELECT* / $MPT_JAX_MASK_BITS of select_variants
apply to the rows they concern and are shown in the ``env`` column.

Row order: biprop with the first --select, then the other modes (dense), then biprop with
the remaining selects, so that a time limit cuts the least important rows. The torch peer
runs first, before JAX takes the GPU's memory.

``--torch-peer`` runs ../shared/bench/torch_peer.py (``--peer-path``) in subprocesses for the
same model and batch (bf16 + channels-last when ``--precision bfloat16``), eager and with
torch.compile (peer_runs.py), and prints both images/s and ours / the faster of the two.

Every row is appended to benchmarks/results/train_step.jsonl (``--results``; results_log.py)
with the date, hardware, versions and command line.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import peer_runs  # noqa: E402  (benchmarks/, this script's directory)
import results_log  # noqa: E402
from configs import common as presets  # noqa: E402  (the repository root is on sys.path)
from mpt_jax import config_fields, config_utils, masks, optim, parallel, train  # noqa: E402
from mpt_jax.data import registry as datasets  # noqa: E402

import select_variants  # noqa: E402  (benchmarks/select_variants.py, next to this script)

# model -> (config file, input size, classes). Other models: CIFAR preset if their name ends
# in _cifar / starts with conv or vgg, else the ImageNet preset.
CONFIG_FILES = {
    "conv2": "cifar10_conv2.py", "conv4": "cifar10_conv4.py", "conv6": "cifar10_conv6.py",
    "conv8": "cifar10_conv8.py", "resnet18_cifar": "cifar10_resnet18.py",
    "resnet20_cifar": "cifar10_resnet20.py", "vgg_small": "cifar10_vgg_small.py",
    "wrn50_2": "imagenet_wrn50.py", "wrn34_2_binact": "imagenet_wrn34_binact.py",
}
SELECTS = select_variants.SELECTS + ("noop", "kept_mask")


# ---------------------------------------------------------------------------
# Config and step (the one place that knows mpt_jax.train's API)


def load_config(model: str, mode: str, batch: int, precision: str, keep_fraction: float,
                mask_impl: str = "per_layer", mask_method: str = "compare"):
    """The experiment config of ``model`` with the benchmark's overrides, resolved."""
    name = CONFIG_FILES.get(model)
    if name is not None:
        path = os.path.join(_REPO, "configs", name)
        spec = importlib.util.spec_from_file_location(f"_bench_cfg_{model}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
    elif model.endswith("_cifar") or model.startswith(("conv", "vgg", "wide_vgg")):
        config = presets.cifar10_config(model)
    else:
        config = presets.imagenet_config(model)
    config = config_utils.resolve(config)  # unlocked copy
    config.resolved = False
    config.mode = mode
    config.batch_size = batch
    config.precision = precision
    config.keep_fraction = keep_fraction
    config.mask_impl = mask_impl
    config.mask_method = mask_method
    overridden = {"batch_size", "precision", "keep_fraction", "mode", "mask_impl", "mask_method"}
    return config_utils.resolve(config, overridden)


def build_step(config, mesh, seed: int = 0):
    """(jitted train step, replicated state, sharded random batch) of mpt_jax.train."""
    image_shape = datasets.get(config.dataset).image_shape
    num_classes = datasets.get(config.dataset).num_classes
    model = train.create_model(config, num_classes)
    tx = optim.make_optimizer(config, 1000)
    state = train.create_train_state(config, model, tx, jax.random.PRNGKey(seed), image_shape)
    state = parallel.replicate(state, mesh)
    p_train, _ = train.make_parallel_steps(config, model, tx, mesh)
    rng = np.random.default_rng(seed)
    batch = dict(image=rng.standard_normal((config.batch_size, *image_shape), np.float32),
                 label=rng.integers(0, num_classes, config.batch_size).astype(np.int32))
    batch = jax.device_put(batch, parallel.batch_sharding(mesh))
    return p_train, state, batch


# ---------------------------------------------------------------------------
# Timing


def select_label(select_name: str, mask_impl: str, mask_method: str, mode: str) -> str:
    """The select column: the per-layer select, or batched:<mask_method> (mpt_jax.masks)."""
    if mode not in ("biprop", "edgepopup"):
        return "-"
    if mask_impl == "batched":
        return f"batched:{mask_method}"
    return select_name


def env_tag() -> str:
    """The speed-relevant environment of this run ('' if none): $XLA_FLAGS and the
    $MPT_JAX_* knobs (e.g. MPT_JAX_SELECT_COPIES). Rows measured under different settings
    are told apart in the table and compared only with the dense row of the same settings
    (mask-only knobs aside: see dense_env)."""
    names = ["XLA_FLAGS"] + sorted(k for k in os.environ if k.startswith("MPT_JAX_"))
    return " ".join(f"{k}={os.environ[k].strip()}" for k in names
                    if os.environ.get(k, "").strip())


def _gib(nbytes) -> float | None:
    return None if nbytes is None else round(nbytes / 2 ** 30, 3)


def _step_memory(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001  (not every backend reports it)
        return None


def _peak_memory() -> int | None:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def measure(config, mesh, label: str, warmup: int, steps: int, repeats: int) -> dict:
    """Compiles and times one configuration; returns one table row (``label``: its
    select column)."""
    t0 = time.perf_counter()
    p_train, state, batch = build_step(config, mesh)
    t1 = time.perf_counter()
    compiled = p_train.lower(state, batch).compile()
    compile_s = time.perf_counter() - t1
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    loss = float(metrics["loss"])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append((time.perf_counter() - start) / steps)
    med = statistics.median(times)
    # mask_method "warm": the share of the steps that the band search served (the rest ran
    # the full search; the first step always does).
    band = (state.mask_state or {}).get("band_steps")
    total = warmup + steps * repeats
    extra = {} if band is None else dict(band_share=round(int(band) / total, 3))
    return dict(model=config.model, mode=config.mode, batch=config.batch_size,
                precision=str(jnp.dtype(train.compute_dtype(config))),
                select=label,
                images_per_s=round(config.batch_size / med, 1), ms_per_step=round(med * 1e3, 3),
                spread=round((max(times) - min(times)) / med, 3),
                step_mem_gib=_gib(_step_memory(compiled)), peak_gib=_gib(_peak_memory()),
                compile_s=round(compile_s, 1), setup_s=round(t1 - t0, 1),
                loss_after_warmup=round(loss, 4), finite=bool(np.isfinite(loss)),
                device=jax.devices()[0].device_kind, backend=jax.default_backend(),
                jax=jax.__version__, num_devices=len(mesh.devices.reshape(-1)), **extra,
                **({"env": env_tag()} if env_tag() else {}))


# ---------------------------------------------------------------------------
# Table

COLUMNS = [("model", "model"), ("mode", "mode"), ("batch", "batch"), ("precision", "prec"),
           ("select", "select"), ("images_per_s", "images/s"), ("ms_per_step", "ms/step"),
           ("spread", "spread"), ("vs_dense", "vs dense"), ("mask_pct", "mask %"),
           ("peer_eager_images_per_s", "peer eager"),
           ("peer_compile_images_per_s", "peer compile"), ("vs_peer", "ours/faster peer"),
           ("band_share", "band share"), ("step_mem_gib", "step mem GiB"),
           ("peak_gib", "peak GiB"),
           ("compile_s", "compile s"), ("env", "env")]


# Knobs that only change the mask search, which dense steps do not run: a biprop row measured
# under them pairs with the dense row of the remaining settings.
MASK_ONLY_KNOBS = ("MPT_JAX_SELECT", "MPT_JAX_MASK_")


def dense_env(env: str) -> str:
    """``env`` (an env_tag) without its mask-only knobs: the settings a dense step feels."""
    return " ".join(t for t in env.split(" ") if t and not t.startswith(MASK_ONLY_KNOBS))


def add_ratios(rows: list[dict]) -> None:
    def key(r):
        return r.get("model"), r.get("batch"), r.get("precision"), dense_env(r.get("env", ""))

    dense = {key(r): r for r in rows if r.get("mode") == "dense" and "images_per_s" in r}
    for r in rows:
        d = dense.get(key(r))
        if d is not None and r.get("mode") != "dense" and "images_per_s" in r:
            r["vs_dense"] = round(r["images_per_s"] / d["images_per_s"], 3)
            r["mask_pct"] = round(100.0 * (1.0 - d["ms_per_step"] / r["ms_per_step"]), 1)
        peer = r.get("peer_images_per_s")
        if isinstance(peer, (int, float)) and "images_per_s" in r:
            r["vs_peer"] = round(r["images_per_s"] / peer, 2)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:g}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def row_plan(modes: list[str], selects: list[str], mask_impls=("per_layer",),
             mask_methods=("compare",)) -> list[tuple[str, str, str, str]]:
    """(mode, select, mask_impl, mask_method) rows: the first masked variant, the other
    modes (dense), then the remaining variants. Masked variants: the batched mask methods
    (if "batched" is listed first, they come first) and the per-layer selects."""
    masked = [m for m in modes if m in ("biprop", "edgepopup")]
    per_layer = [(s, "per_layer", "-") for s in selects] if "per_layer" in mask_impls else []
    batched = ([(selects[0], "batched", mm) for mm in mask_methods]
               if "batched" in mask_impls else [])
    variants = batched + per_layer if mask_impls[0] == "batched" else per_layer + batched
    first = [(m, *variants[0]) for m in masked]
    others = [(m, "-", "per_layer", "-") for m in modes if m not in masked]
    rest = [(m, *v) for m in masked for v in variants[1:]]
    return first + others + rest


def measure_row(args, mesh, mode: str, sel: str, impl: str, method: str) -> dict:
    """One row of the plan, or a row saying why it failed (one failed row must not lose
    the others)."""
    label = select_label(sel, impl, method, mode)
    try:
        # The variant (and the environment's knobs) as the step's mask_impl/mask_method.
        step_impl, step_method = select_variants.step_variant(
            sel, impl, method if impl == "batched" else "compare")
        config = load_config(args.model, mode, args.batch, args.precision,
                             args.keep_fraction, step_impl, step_method)
        return measure(config, mesh, label, args.warmup, args.steps, args.repeats)
    except Exception as e:  # noqa: BLE001
        return dict(model=args.model, mode=mode, batch=args.batch, precision=args.precision,
                    select=label, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")


def arguments() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--modes", default="biprop,dense",
                    help="comma list of biprop|edgepopup|dense|binary_trained")
    ap.add_argument("--select", default="auto", help=f"comma list of {'|'.join(SELECTS)}")
    ap.add_argument("--mask-impl", default="per_layer",
                    help="comma list of per_layer|batched (train.py mask_impl); the first "
                         "one gives the main biprop row")
    ap.add_argument("--mask-method", default="compare",
                    help="comma list of mpt_jax.masks methods for the batched rows: "
                         "compare|compare<D>|radix_many|radix_pallas|warm|per_layer|"
                         "compare_bcast<D>")
    ap.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--keep-fraction", type=float, default=0.2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--torch-peer", action="store_true",
                    help="also time torch_peer.py, eager and with --compile")
    ap.add_argument("--peer-path", default=peer_runs.DEFAULT_PEER)
    ap.add_argument("--peer-device", default=None, help="cuda | cpu (default: ours)")
    ap.add_argument("--peer-python", default=sys.executable)
    ap.add_argument("--peer-steps", type=int, default=20)
    ap.add_argument("--peer-warmup", type=int, default=5)
    ap.add_argument("--peer-repeats", type=int, default=5)
    ap.add_argument("--peer-kinds", default="eager,compile",
                    help="comma list of the peer's eager|compile runs")
    ap.add_argument("--peer-timeout", type=float, default=300, help="seconds per peer run")
    ap.add_argument("--json", default=None, help="append the rows as JSON lines to this file")
    ap.add_argument("--results", default=results_log.default_path("train_step"),
                    help="append the rows, with date, hardware and versions, here ('' = no)")
    ap.add_argument("--markdown", default=None, help="write the table to this file")
    return ap


def main(argv=None) -> int:
    ap = arguments()
    args = ap.parse_args(argv)

    selects = [s.strip() for s in args.select.split(",") if s.strip()]
    for s in selects:
        if s not in SELECTS:
            ap.error(f"--select {s!r}: choose from {', '.join(SELECTS)}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    select_variants.register_mask_methods()
    mask_impls = [s.strip() for s in args.mask_impl.split(",") if s.strip()]
    for s in mask_impls:
        if s not in config_fields.MASK_IMPLS:
            ap.error(f"--mask-impl {s!r}: choose from {', '.join(config_fields.MASK_IMPLS)}")
    mask_methods = [s.strip() for s in args.mask_method.split(",") if s.strip()]
    for s in mask_methods:
        try:
            masks.check_method(s)
        except ValueError as e:
            ap.error(f"--mask-method: {e}")
    plan = row_plan(modes, selects, mask_impls, mask_methods)
    peer = None
    if args.torch_peer:  # before JAX initialises the GPU (it preallocates most of its memory)
        precision = args.precision
        if precision == "auto":
            precision = "bfloat16" if shutil.which("nvidia-smi") else "float32"
        device = args.peer_device or ("cuda" if shutil.which("nvidia-smi") else "cpu")
        kinds = tuple(k.strip() for k in args.peer_kinds.split(",") if k.strip())
        for kind in kinds:
            if kind not in peer_runs.KINDS:
                ap.error(f"--peer-kinds {kind!r}: choose from {', '.join(peer_runs.KINDS)}")
        peer = peer_runs.run_peers(args.model, args.batch, precision, device, args.peer_path,
                                   args.peer_steps, args.peer_warmup, args.peer_python,
                                   args.peer_timeout, repeats=args.peer_repeats, kinds=kinds)
        print(json.dumps(dict(peer=peer)), flush=True)
    mesh = parallel.make_mesh(jax.devices()[:1])  # one device: per-chip throughput
    print(f"# {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}",
          flush=True)
    rows = []
    for mode, sel, impl, method in plan:
        row = measure_row(args, mesh, mode, sel, impl, method)
        if peer is not None:
            row.update(peer_runs.row_fields(peer))
        rows.append(row)
        print(json.dumps(row), flush=True)
        # At once: a later row may be killed by a time limit.
        results_log.append(args.json, row)
        results_log.append(args.results, dict(row, **results_log.stamp(
            jax=jax.__version__, accelerator=jax.devices()[0].device_kind)))
    add_ratios(rows)
    table = markdown_table(rows)
    print(table, flush=True)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
