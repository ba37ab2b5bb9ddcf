"""Cost of the top-k threshold / mask alone, per implementation, on a real model's layer sizes.

    python benchmarks/select_bench.py --model resnet18_cifar --model wrn50_2

For every score tensor of the model (shapes from ``model.init`` under ``jax.eval_shape``, values
from the real score initialiser) it times, all layers in one jitted function:

* ``thr:<impl>``   the k-th largest |score| of every layer (mpt_jax.select), per layer;
* ``thr:radix_many`` the batched radix select (one scatter per pass for all layers),
  with ``copies`` = histogram privatisation factor;
* ``mask:<impl>``  the whole mask, select.topk_mask's rule (threshold + compares + tie
  cumsum); ``mask:radix kept_mask``: select_variants.kept_mask (the tie cut-off by a
  second radix select instead of the cumsum); ``mask:radix_many``: batched thresholds +
  the same tie rule.

``thr:radix_compare`` and ``kept_mask`` come from benchmarks/select_variants.py, whose
$MPT_JAX_SELECT_DIGITS / $MPT_JAX_SELECT_COPIES knobs also apply here.

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
import select_variants  # noqa: E402  (benchmarks/select_variants.py, next to this script)
from mpt_jax import layers, masks, models, select  # noqa: E402

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


def _thresholds(fn):
    return lambda mags, kk: [fn(m, k) for m, k in zip(mags, kk)]


def _radix(copies):
    return _thresholds(lambda m, k: select.kth_largest_radix(
        m, k, digits=select_variants.env_digits(), copies=copies))


def _radix_many(copies):
    return lambda mags, kk: select.kth_largest_many(
        mags, kk, "radix", digits=select_variants.env_digits(), copies=copies)


def _masks_from(thresholds):
    """The kept set of ``select.topk_mask`` after the given thresholds (same tie rule)."""
    def fn(mags, kk):
        return [select.mask_at_threshold(m, t, k)
                for m, t, k in zip(mags, thresholds(mags, kk), kk)]
    return fn


def variants():
    """[(name, "thr" | "mask", fn(magnitudes, ks))]; copies = histogram privatisation
    (default: $MPT_JAX_SELECT_COPIES, else the package's), digits from
    $MPT_JAX_SELECT_DIGITS (benchmarks/select_variants.py)."""
    env = select_variants.env_copies()
    return [("thr:sort", "thr", _thresholds(select.kth_largest_sort)),
            ("thr:radix", "thr", _radix(1)),
            ("thr:radix copies=32", "thr", _radix(32)),
            ("thr:radix_many", "thr", _radix_many(1)),
            ("thr:radix_many copies=32", "thr", _radix_many(32)),
            ("thr:radix_compare", "thr",
             _thresholds(select_variants.kth_largest_radix_compare)),
            ("mask:sort", "mask", _masks_from(_thresholds(select.kth_largest_sort))),
            ("mask:radix", "mask", _masks_from(_radix(env))),
            ("mask:radix kept_mask", "mask",
             lambda mags, kk: [select_variants.kept_mask(m, k, "radix")
                               for m, k in zip(mags, kk)]),
            ("mask:radix_many", "mask", _masks_from(_radix_many(1))),
            ("mask:radix_many copies=32", "mask", _masks_from(_radix_many(32)))]


def _check(row: dict, what: str, out, ks, refs: dict) -> None:
    """Marks ``row`` with whether its thresholds / masks equal the first variant's."""
    if what == "thr":
        values = [float(x) for x in out]
        refs.setdefault("thr", values)
        row["same_as_sort"] = values == refs["thr"]
        return
    found = [np.asarray(m) for m in out]
    refs.setdefault("mask", found)
    row["kept_ok"] = all(int(m.sum()) == int(k) for m, k in zip(found, ks)) and \
        all(np.array_equal(a, b) for a, b in zip(found, refs["mask"]))


def run_model(model_name: str, keep_fraction: float, repeats: int, only: list[str]) -> list:
    shapes = score_shapes(model_name)
    sizes = [int(np.prod(s)) for s in shapes]
    key = jax.random.PRNGKey(0)
    scores = [layers.score_init(jax.random.fold_in(key, i), s) for i, s in enumerate(shapes)]
    ks = [jnp.int32(masks.kept_count(n, keep_fraction)) for n in sizes]
    jax.block_until_ready(scores)
    print(f"# {model_name}: {len(shapes)} score tensors, {sum(sizes):,} scores, largest "
          f"{max(sizes):,}; {jax.devices()[0].device_kind}", flush=True)
    rows, refs = [], {}
    for name, what, variant in variants():
        if only and name not in only:
            continue
        try:
            def fn(sc, kk, _variant=variant):
                return _variant([jnp.abs(s).reshape(-1) for s in sc], kk)

            compiled = jax.jit(fn).lower(scores, ks).compile()
            ms, _, out = _time(compiled, (scores, ks), repeats)
            row = dict(model=model_name, variant=name, ms=round(ms, 3), layers=len(shapes),
                       scores=sum(sizes), device=jax.devices()[0].device_kind)
            _check(row, what, out, ks, refs)
        except Exception as e:  # noqa: BLE001
            row = dict(model=model_name, variant=name, error=f"{type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200]}")
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
