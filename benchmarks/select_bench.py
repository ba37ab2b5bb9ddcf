"""Cost of the top-k threshold / mask alone, per implementation, on a real model's layer sizes.

    python benchmarks/select_bench.py --model resnet18_cifar --model wrn50_2

For every score tensor of the model (shapes from ``model.init`` under ``jax.eval_shape``, values
from the real score initialiser) it times, all layers in one jitted function:

* ``thr:<impl>``   the k-th largest |score| of every layer (mpt_jax.select), per layer;
* ``thr:radix_many`` the batched radix select (one scatter per pass for all layers),
  with ``copies`` = histogram privatisation factor (MPT_JAX_SELECT_COPIES);
* ``mask:<impl>``  the whole mask, ops.topk_mask (threshold + compares + tie cumsum);
  ``mask:radix kept_mask``: select.kept_mask (the tie cut-off by a second radix select
  instead of the cumsum); ``mask:radix_many``: batched thresholds + ops' tie rule.

Prints one JSON line per variant and a table (median ms over ``--repeats`` calls), and
checks that every variant returns the same thresholds (masks) as the sort. Every row is
appended to benchmarks/results/select_bench.jsonl (``--results``; results_log.py) with the
date, hardware, versions and command line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import results_log  # noqa: E402  (benchmarks/, this script's directory)
from mpt_jax import layers, models, ops, select  # noqa: E402

IMAGE = {"cifar": (32, 32, 3), "imagenet": (224, 224, 3)}


def score_shapes(model_name: str) -> list[tuple[int, ...]]:
    imagenet = not (model_name.endswith("_cifar") or model_name.startswith(("conv", "vgg",
                                                                             "wide_vgg", "mlp")))
    model = models.get_model(model_name, num_classes=1000 if imagenet else 10)
    shape = IMAGE["imagenet" if imagenet else "cifar"]
    variables = jax.eval_shape(lambda k: model.init({"params": k}, jnp.zeros((1, *shape)),
                                                    train=False), jax.random.PRNGKey(0))
    flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    return [tuple(x.shape) for path, x in flat if getattr(path[-1], "key", "") == "scores"]


def _time(fn, args, repeats: int) -> tuple[float, float, list]:
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3, compile_s, out


def variants():
    """name -> (implementation, copies or None, batched, what)"""
    return [("thr:sort", "sort", None, False, "thr"),
            ("thr:radix", "radix", "1", False, "thr"),
            ("thr:radix copies=32", "radix", "32", False, "thr"),
            ("thr:radix_many", "radix", "1", True, "thr"),
            ("thr:radix_many copies=32", "radix", "32", True, "thr"),
            ("thr:radix_compare", "radix_compare", None, False, "thr"),
            ("mask:sort", "sort", None, False, "mask"),
            ("mask:radix", "radix", None, False, "mask"),
            ("mask:radix kept_mask", "radix", None, False, "kept_mask"),
            ("mask:radix_many", "radix", "1", True, "mask"),
            ("mask:radix_many copies=32", "radix", "32", True, "mask")]


def _mask_from_threshold(flat, threshold, kept):
    # ops.topk_mask after its threshold (same tie rule), for the batched-threshold variant.
    above = flat > threshold
    ties = flat == threshold
    missing = kept - jnp.sum(above, dtype=jnp.int32)
    return above | (ties & (jnp.cumsum(ties, dtype=jnp.int32) <= missing))


def run_model(model_name: str, keep_fraction: float, repeats: int, only: list[str]) -> list:
    shapes = score_shapes(model_name)
    sizes = [int(np.prod(s)) for s in shapes]
    key = jax.random.PRNGKey(0)
    scores = [layers.score_init(jax.random.fold_in(key, i), s) for i, s in enumerate(shapes)]
    ks = [jnp.int32(ops.kept_count(n, keep_fraction)) for n in sizes]
    jax.block_until_ready(scores)
    print(f"# {model_name}: {len(shapes)} score tensors, {sum(sizes):,} scores, largest "
          f"{max(sizes):,}; {jax.devices()[0].device_kind}", flush=True)
    rows, reference, mask_reference = [], None, None
    for name, impl, copies, batched, what in variants():
        if only and name not in only:
            continue
        old = os.environ.get("MPT_JAX_SELECT_COPIES")
        try:
            if copies is not None:
                os.environ["MPT_JAX_SELECT_COPIES"] = copies
            select.set_implementation(impl)

            def fn(sc, kk, _what=what, _batched=batched):
                mags = [jnp.abs(s).reshape(-1) for s in sc]
                if _what == "kept_mask":
                    return [select.kept_mask(m, k) for m, k in zip(mags, kk)]
                if _what == "mask" and _batched:  # batched thresholds, then ops' tie rule
                    thr = select.kth_largest_many(mags, kk, batched=True)
                    return [_mask_from_threshold(m, t, k) for m, t, k in zip(mags, thr, kk)]
                if _what == "mask":
                    return [ops.topk_mask(m, k) for m, k in zip(mags, kk)]
                if _batched:
                    return select.kth_largest_many(mags, kk, batched=True)
                return [select.kth_largest(m, k) for m, k in zip(mags, kk)]

            compiled = jax.jit(fn).lower(scores, ks).compile()
            ms, _, out = _time(compiled, (scores, ks), repeats)
            row = dict(model=model_name, variant=name, ms=round(ms, 3), layers=len(shapes),
                       scores=sum(sizes), device=jax.devices()[0].device_kind)
            if what == "thr":
                values = [float(x) for x in out]
                if reference is None:
                    reference = values
                row["same_as_sort"] = values == reference
            else:
                masks = [np.asarray(m) for m in out]
                if mask_reference is None:
                    mask_reference = masks
                row["kept_ok"] = all(int(m.sum()) == int(k) for m, k in zip(masks, ks)) and \
                    all(np.array_equal(a, b) for a, b in zip(masks, mask_reference))
        except Exception as e:  # noqa: BLE001
            row = dict(model=model_name, variant=name, error=f"{type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200]}")
        finally:
            select.set_implementation(None)
            if old is None:
                os.environ.pop("MPT_JAX_SELECT_COPIES", None)
            else:
                os.environ["MPT_JAX_SELECT_COPIES"] = old
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", default=None)
    ap.add_argument("--keep-fraction", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--only", default="", help="comma list of variant names (default all)")
    ap.add_argument("--json", default=None, help="append rows as JSON lines here")
    ap.add_argument("--results", default=results_log.default_path("select_bench"),
                    help="append the rows, with date, hardware and versions, here ('' = no)")
    args = ap.parse_args(argv)
    only = [o for o in args.only.split(",") if o]
    rows = []
    for m in args.model or ["resnet18_cifar"]:
        rows += run_model(m, args.keep_fraction, args.repeats, only)
    print("| model | variant | ms (median) | same thresholds as sort / kept count ok |")
    print("|---|---|---|---|")
    for r in rows:
        ok = r.get("same_as_sort", r.get("kept_ok", r.get("error")))
        print(f"| {r['model']} | {r['variant']} | {r.get('ms', '-')} | {ok} |")
    for r in rows:
        results_log.append(args.json, r)
        results_log.append(args.results, dict(r, **results_log.stamp(
            jax=jax.__version__, accelerator=jax.devices()[0].device_kind)))
    return 0 if all("error" not in r and r.get("same_as_sort", True) and r.get("kept_ok", True)
                    for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
