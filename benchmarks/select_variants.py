"""Variants of the top-k search that only the benchmarks measure, and their speed knobs.

The package (mpt_jax.select / select_many) holds the methods its default paths and config
values use. The alternatives measured against them live here, built from the package's
public pieces, and keep exactly the same kept sets (tests/test_select_variants.py):

* ``kth_largest_radix_compare``: the radix select with 4-bit digits (8 passes) whose
  16-bin counts come from comparisons and a reduction instead of a scatter (no atomics;
  for backends where scatters are slow).
* ``kept_mask``: the whole top-k mask with the tie cut-off (the index of the last kept
  entry equal to the threshold) found by a second radix select over the codes n - index
  of the tied entries, instead of a cumsum over the layer.
* ``noop``: a constant threshold (WRONG masks; the cost of the mask without its search).
* ``compare_bcast_count``: the batched "compare" counts as one (blocks, C, block)
  broadcast reduction (each code read C times, from cache) instead of C sibling ones.

Speed knobs, read from the environment when a benchmark builds its step (results are
identical for every value; a benchmark row carries them in its ``env`` column):

* ``MPT_JAX_SELECT=auto|sort|radix|radix_compare``: the per-layer select;
* ``MPT_JAX_SELECT_COPIES=N``: privatised copies of the scatter histograms (default 32 on
  GPU, 1 elsewhere);
* ``MPT_JAX_SELECT_DIGITS=16,15``: the scatter passes' digit widths (default 11,10,10);
* ``MPT_JAX_MASK_BITS=D``: the digit width of the batched ``compare`` method (default 4).

``register_mask_methods()`` makes the variants usable as ``mask_method`` of the training
step (``mpt_jax.select_many.register_method``), see ``step_variant``.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from mpt_jax import masks, select, select_blocks, select_many

SELECTS = ("auto", "sort", "radix", "radix_compare")
COMPARE_DIGITS = (3, 4, 4, 4, 4, 4, 4, 4)
SELECT_ENV, COPIES_ENV, DIGITS_ENV, BITS_ENV = (
    "MPT_JAX_SELECT", "MPT_JAX_SELECT_COPIES", "MPT_JAX_SELECT_DIGITS", "MPT_JAX_MASK_BITS")


# ---------------------------------------------------------------------------
# Knobs from the environment


def env_select() -> str:
    """$MPT_JAX_SELECT (default "auto")."""
    name = os.environ.get(SELECT_ENV, "auto").strip().lower() or "auto"
    if name not in SELECTS:
        raise ValueError(f"environment variable {SELECT_ENV} must be one of "
                         f"{', '.join(SELECTS)}; got {name!r}")
    return name


def env_copies() -> int | None:
    """$MPT_JAX_SELECT_COPIES, or None (the package default)."""
    text = os.environ.get(COPIES_ENV, "").strip()
    if not text:
        return None
    try:
        copies = int(text)
    except ValueError:
        copies = 0
    if copies < 1:
        raise ValueError(f"{COPIES_ENV} must be a positive integer; got {text!r}")
    return copies


def env_digits() -> tuple[int, ...]:
    """$MPT_JAX_SELECT_DIGITS (comma-separated widths, 1..16 bits each, summing to 31) or
    the default (11, 10, 10)."""
    text = os.environ.get(DIGITS_ENV, "").strip()
    if not text:
        return select.SCATTER_DIGITS
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if not widths or sum(widths) != 31 or not all(1 <= w <= 16 for w in widths):
        raise ValueError(f"{DIGITS_ENV} must be comma-separated digit widths of 1..16 bits "
                         f"summing to 31 (e.g. 16,15 or 11,10,10); got {text!r}")
    return widths


def env_mask_bits() -> int | None:
    """$MPT_JAX_MASK_BITS (1..8), or None (the default 4)."""
    text = os.environ.get(BITS_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 8:
        raise ValueError(f"{BITS_ENV} must be an integer in 1..8; got {text!r}")
    return int(text)


# ---------------------------------------------------------------------------
# Per-array variants


def compare_counts(digit, match, bins: int):
    """The radix select's counting step by comparisons: ge[d] = #{matching, digit >= d}."""
    edges = jnp.arange(bins, dtype=jnp.int32)
    ge = digit[None, :] >= edges[:, None]  # (bins, n), fused into the reduction
    if match is not None:
        ge = ge & match[None, :]
    return jnp.sum(ge, axis=1, dtype=jnp.int32)


def _prepared(values, k):
    values = select.check_values(values)
    return values, jnp.asarray(select.check_k(k, values.shape[0]), jnp.int32)


def kth_largest_radix_compare(values, k):
    """Exact radix select (8 passes of 16-bin compare-and-count, no scatter)."""
    values, k = _prepared(values, k)
    if values.dtype == jnp.float64:
        return select.kth_largest_sort(values, k)
    codes = select.radix_select(select.float_codes(values), k, COMPARE_DIGITS, compare_counts)
    return select.from_codes(codes, values.dtype)


def kth_largest_radix_env(values, k):
    """The scatter radix select with $MPT_JAX_SELECT_DIGITS / $MPT_JAX_SELECT_COPIES."""
    return select.kth_largest_radix(values, k, digits=env_digits(), copies=env_copies())


def noop_select(values, k):
    """A constant "threshold" (the first entry): wrong masks, timing only."""
    del k
    return jax.lax.stop_gradient(values[0])


def kth_largest_variant(values, k, name: str):
    """The k-th largest by the select ``name`` (SELECTS or "noop"), knobs from the env."""
    if name == "noop":
        return noop_select(values, k)
    if name == "radix_compare":
        return kth_largest_radix_compare(values, k)
    if name == "radix":
        return kth_largest_radix_env(values, k)
    return select.kth_largest(values, k, name)


def _mask_with_cutoff(values, k, kth, digits, count):
    """The kept set with the last kept tie found by a second radix select (no cumsum)."""
    n = values.shape[0]
    threshold = kth(values, k)
    above = values > threshold
    ties = values == threshold
    missing = k - jnp.sum(above, dtype=jnp.int32)  # >= 1: threshold is the k-th largest
    index = jax.lax.broadcasted_iota(jnp.int32, (n,), 0)
    codes = (n - index).astype(jnp.uint32)  # larger code = earlier index
    last = n - select.radix_select(codes, missing, digits, count, valid=ties).astype(jnp.int32)
    return above | (ties & (index <= last))


def kept_mask(values, k, name: str = "auto"):
    """Boolean mask of the k largest entries of flat ``values``: exactly
    ``select.topk_mask``'s set, the tie cut-off found by a second radix select over the
    codes n - index of the tied entries only (every other entry is dropped from the
    histograms) instead of a cumsum over the whole layer: ~3.5x less mask time on CPU
    (benchmarks/RESULTS.md). With "sort" (and "auto" on TPU) it is the cumsum rule."""
    values, k = _prepared(values, k)

    def sort_rule(v, kk):
        return select.mask_at_threshold(v, select.kth_largest_sort(v, kk), kk)

    def radix_rule(v, kk):
        return _mask_with_cutoff(v, kk, kth_largest_radix_env, env_digits(),
                                 select.scatter_counts(env_copies()))

    if name == "sort":
        return sort_rule(values, k)
    if name == "radix":
        return radix_rule(values, k)
    if name == "radix_compare":
        return _mask_with_cutoff(values, k, kth_largest_radix_compare, COMPARE_DIGITS,
                                 compare_counts)
    return jax.lax.platform_dependent(values, k, tpu=sort_rule, default=radix_rule)


# ---------------------------------------------------------------------------
# All layers at once: mask methods for the training step


def compare_bcast_count(blocked, candidates):
    """The batched compare counts as one (num_blocks, C, block) broadcast compare reduced
    over the last axis: one row reduction reading each block once per candidate."""
    ge = blocked[:, None, :] >= candidates[:, :, None]
    return jnp.sum(ge, axis=2, dtype=jnp.int32)


def _compare_bcast_method(bits: int | None):
    def method(leaves, ks, block):
        d = bits or env_mask_bits() or select_many.DEFAULT_DIGIT_BITS
        return select_blocks.blocked_masks(
            leaves, ks, block, lambda blocked, layout, k_vec: select_many.compare_select(
                blocked, layout, k_vec, d, compare_bcast_count))
    return method


def _per_leaf_method(name: str):
    """Per-layer masks by the select ``name`` (or kept_mask), computed before apply."""
    def method(leaves, ks, block):
        del block
        out = []
        for x, k in zip(leaves, ks):
            flat = jnp.abs(jax.lax.stop_gradient(x)).reshape(-1)
            if name == "kept_mask":
                mask = kept_mask(flat, k, "radix")
            else:
                mask = select.mask_at_threshold(flat, kth_largest_variant(flat, k, name), k)
            out.append(mask.reshape(x.shape))
        return out
    return method


def _radix_many_env(leaves, ks, block):
    """radix_many with the scatter knobs of the environment."""
    def thresholds(blocked, layout, k_vec):
        del blocked, layout, k_vec
        values = [jnp.abs(jax.lax.stop_gradient(x)).reshape(-1).astype(jnp.float32)
                  for x in leaves]
        found = select.kth_largest_many(values, list(ks), "radix", digits=env_digits(),
                                        copies=env_copies())
        return jnp.stack([select.float_codes(t).astype(jnp.int32) for t in found]), None
    return select_blocks.blocked_masks(leaves, ks, block, thresholds)


PER_LEAF = ("sort", "radix", "radix_compare", "noop", "kept_mask")


def register_mask_methods() -> None:
    """Registers the variants as training-step mask methods (idempotent): "compare_bcast",
    "compare_bcast<D>", "radix_many_env", "per_leaf:<select>" (``PER_LEAF``)."""
    methods = {"compare_bcast": _compare_bcast_method(None), "radix_many_env": _radix_many_env}
    methods.update({f"compare_bcast{d}": _compare_bcast_method(d) for d in range(1, 9)})
    methods.update({f"per_leaf:{name}": _per_leaf_method(name) for name in PER_LEAF})
    for name, fn in methods.items():
        select_many.register_method(name, fn)


def step_variant(select_name: str, mask_impl: str, mask_method: str) -> tuple[str, str]:
    """(mask_impl, mask_method) of the training step that measures ``select_name`` /
    ``mask_impl`` / ``mask_method`` under the environment's knobs.

    The package's own paths where they apply: per-layer rows with the "auto" select and no
    knob run the layers' own search; batched rows run the package's method unless a knob
    changes it ($MPT_JAX_MASK_BITS -> compare<D>, the scatter knobs -> radix_many_env).
    Other per-layer selects run as masks computed per layer before the forward pass
    ("per_leaf:<select>": the same operations, outside the layers).
    """
    register_mask_methods()
    mask_impl = masks.resolve_mask_impl(mask_impl)
    knobs = bool(os.environ.get(COPIES_ENV, "").strip() or os.environ.get(DIGITS_ENV, "").strip())
    if mask_impl == "batched":
        if mask_method == "compare" and env_mask_bits():
            return "batched", f"compare{env_mask_bits()}"
        if mask_method == "radix_many" and knobs:
            return "batched", "radix_many_env"
        return "batched", mask_method
    name = env_select() if select_name == "auto" else select_name
    if name == "auto" and not knobs:
        return "per_layer", mask_method
    return "batched", f"per_leaf:{'radix' if name == 'auto' else name}"
