"""Exact k-th largest value of a flat array: the threshold of the top-k score mask.

``kth_largest(values, k)`` returns the value of the k-th largest entry (1-based) of a
flat array of non-negative floats (|scores|); ``k`` may be a Python int or a traced int32
scalar (a changing keep fraction then never recompiles, issue 6).
``kth_largest_many(arrays, ks)`` does the same for several arrays (all layers of a
network) in one batched computation. ``kept_mask(values, k)`` is the whole top-k mask
(ops.topk_mask's kept set) with the tie cut-off found by a second radix select instead of
a cumsum.

Implementations (all exact; they return the same float, so ``ops.topk_mask`` keeps exactly
the kept set of a stable descending sort, ties included — SPEC 1.2):

* ``"sort"``   one ascending ``jnp.sort`` per array, then an index (the reference).
* ``"radix"``  exact radix select over the uint32 bit patterns. For non-negative IEEE
  float32 the bit pattern is a monotone integer code of the value, so the k-th largest
  value is the k-th largest code. Three passes of 11/10/10 bits (bits 30..0; the sign bit
  is 0): each pass takes a histogram of the current digit over the entries whose higher
  bits equal the prefix found so far (one scatter-add), counts from the top, picks the
  digit holding the k-th largest entry and lowers k by the entries above that digit.
  Cost: 3 reads of the array and 3 small (<= 2048-bin) histograms, no sort.
  ``kth_largest_many`` runs one scatter per pass for *all* arrays together (segment
  offset + digit), i.e. ~3 fused kernels per network instead of one sort per layer.
* ``"radix_compare"`` the same select with 4-bit digits (8 passes) whose 16-bin counts are
  computed by comparisons and a reduction instead of a scatter (no atomics; for backends
  where scatter is slow, e.g. TPU).
* ``"auto"``  (default) per lowering platform: ``radix`` on CPU and GPU, ``sort`` on TPU
  (CPU: the radix select measured 50-200x faster than XLA:CPU's sort, see
  benchmarks/RESULTS.md; GPU: to be confirmed by benchmarks/run_gpu.sh; TPU: scatters
  serialise there, untested).

Choose with ``set_implementation(name)`` or the environment variable
``MPT_JAX_SELECT=sort|radix|radix_compare|auto``. The choice is read when a function is
*traced*: set it before the first call of a jitted step (an already compiled step keeps
the implementation it was traced with).

Inputs must be finite and >= 0 (the mask is taken on |scores|); -0.0 counts as 0.0. NaN
and inf are not supported (scores are finite). float16/bfloat16 inputs are handled
exactly through float32; float64 inputs fall back to the sort. Denormals: the radix
select returns the exact denormal k-th largest, while XLA:CPU flushes denormals to zero
in its sort and compares; the kept set (decided by compares) is the same either way.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

IMPLEMENTATIONS = ("auto", "sort", "radix", "radix_compare")
_ENV_VAR = "MPT_JAX_SELECT"

# Digit widths (most significant first) covering bits 30..0 of a non-negative float32.
_SCATTER_DIGITS = (11, 10, 10)
_COMPARE_DIGITS = (3, 4, 4, 4, 4, 4, 4, 4)

_implementation: str | None = None  # set_implementation() overrides the environment

# Histogram privatisation for the scatter passes: entry i adds into copy i % copies, so
# neighbouring GPU threads never hit the same counter (|scores| of one layer share a few
# exponents, so a single 2048-bin histogram would serialise on a handful of atomics).
# Only a speed knob (results are identical); $MPT_JAX_SELECT_COPIES overrides it.
_COPIES_ENV_VAR = "MPT_JAX_SELECT_COPIES"
# The scatter passes' digit widths, another speed knob: e.g. "16,15" (two passes; the first
# one's 65,536 bins per layer spread the hot exponent bins ~32x more thinly) instead of the
# default 11,10,10. Results are identical for every plan.
_DIGITS_ENV_VAR = "MPT_JAX_SELECT_DIGITS"


def _check_name(name: str, source: str) -> str:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"{source} must be one of {', '.join(IMPLEMENTATIONS)}; got {name!r}")
    return name


def set_implementation(name: str | None) -> None:
    """Selects the k-th-largest implementation for functions traced from now on.

    ``None`` returns to the environment variable MPT_JAX_SELECT (default "auto").
    """
    global _implementation
    _implementation = None if name is None else _check_name(name, "set_implementation(name)")


def get_implementation() -> str:
    """The implementation name in force: set_implementation() > $MPT_JAX_SELECT > "auto"."""
    if _implementation is not None:
        return _implementation
    return _check_name(os.environ.get(_ENV_VAR, "auto").strip().lower() or "auto",
                       f"environment variable {_ENV_VAR}")


# ---------------------------------------------------------------------------
# Argument handling


def _check_values(values: Array) -> Array:
    values = jnp.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"kth_largest expects a flat (1-D) array; got shape {values.shape} "
                         f"(reshape(-1) it first)")
    if values.shape[0] == 0:
        raise ValueError("kth_largest needs at least one value; got an empty array")
    if not jnp.issubdtype(values.dtype, jnp.floating):
        raise ValueError(f"kth_largest expects a float array; got dtype {values.dtype}")
    return values


def _check_k(k, n: int):
    """Python ints are validated; traced k is clamped to [1, n] on device (like the sort's
    index clamping, so every implementation returns the same value for any k)."""
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        if not 1 <= int(k) <= n:
            raise ValueError(f"k must satisfy 1 <= k <= n = {n}; got k={int(k)}")
        return int(k)
    return jnp.clip(jnp.asarray(k).astype(jnp.int32), 1, n)


# ---------------------------------------------------------------------------
# Sort


def kth_largest_sort(values: Array, k) -> Array:
    """Reference implementation: one ascending sort, then an index."""
    values = _check_values(values)
    n = values.shape[0]
    k = _check_k(k, n)
    ordered = jnp.sort(values)
    return jax.lax.dynamic_index_in_dim(ordered, n - jnp.asarray(k, jnp.int32), keepdims=False)


# ---------------------------------------------------------------------------
# Radix select


def _codes(values: Array) -> Array:
    """Monotone uint32 codes of non-negative floats (float32 bit patterns, sign cleared).

    Clearing the sign bit maps -0.0 to +0.0; for x >= 0 the float order equals the
    integer order of the bit patterns (IEEE 754: exponent above mantissa, biased).
    """
    f32 = jax.lax.stop_gradient(values).astype(jnp.float32)  # exact for f16/bf16
    bits = jax.lax.bitcast_convert_type(f32, jnp.uint32)
    return bits & jnp.uint32(0x7FFFFFFF)


def _from_codes(codes: Array, dtype) -> Array:
    return jax.lax.bitcast_convert_type(codes.astype(jnp.uint32), jnp.float32).astype(dtype)


def _pick_digit(at_or_above: Array, k: Array):
    """Given counts ge[..., d] = #entries with digit >= d (non-increasing in d, ge[0] >= k),
    returns the digit holding the k-th largest entry and the number of entries in higher
    digits (by which k is lowered for the next pass)."""
    digit = jnp.sum(at_or_above >= k[..., None], axis=-1, dtype=jnp.int32) - 1
    higher = jnp.take_along_axis(
        jnp.concatenate([at_or_above[..., 1:], jnp.zeros_like(at_or_above[..., :1])], -1),
        digit[..., None], axis=-1)[..., 0]
    return digit, higher


def _digit_plan(widths: Sequence[int]):
    """(shift, width) of each digit, most significant first, covering bits 30..0."""
    shift = 31
    plan = []
    for w in widths:
        shift -= w
        plan.append((shift, w))
    assert shift == 0, widths
    return plan


def _suffix_counts(hist: Array) -> Array:
    """ge[d] = sum_{d' >= d} hist[d'] along the last axis."""
    return jnp.flip(jnp.cumsum(jnp.flip(hist, -1), axis=-1, dtype=jnp.int32), -1)


def _scatter_digits() -> tuple[int, ...]:
    """$MPT_JAX_SELECT_DIGITS (comma-separated widths, 1..16 bits each, summing to 31) or the
    default (11, 10, 10)."""
    text = os.environ.get(_DIGITS_ENV_VAR, "").strip()
    if not text:
        return _SCATTER_DIGITS
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if not widths or sum(widths) != 31 or not all(1 <= w <= 16 for w in widths):
        raise ValueError(f"{_DIGITS_ENV_VAR} must be comma-separated digit widths of 1..16 bits "
                         f"summing to 31 (e.g. 16,15 or 11,10,10); got {text!r}")
    return widths


def _histogram_copies() -> int:
    text = os.environ.get(_COPIES_ENV_VAR, "").strip()
    if text:
        try:
            copies = int(text)
        except ValueError:
            copies = 0
        if copies < 1:
            raise ValueError(f"{_COPIES_ENV_VAR} must be a positive integer; got {text!r}")
        return copies
    return 32 if jax.default_backend() == "gpu" else 1


def _histogram(index: Array, num_bins: int) -> Array:
    """Counts of ``index`` values in [0, num_bins); other values (== num_bins) are dropped."""
    copies = min(_histogram_copies(), index.shape[0])
    if copies > 1:
        lane = jax.lax.broadcasted_iota(jnp.int32, index.shape, 0) % copies
        index = jnp.where(index < num_bins, index + lane * num_bins, copies * num_bins)
    hist = jnp.zeros((copies * num_bins,), jnp.int32).at[index].add(1, mode="drop")
    return hist.reshape(copies, num_bins).sum(0, dtype=jnp.int32) if copies > 1 else hist


def _radix_scatter(codes: Array, k: Array, valid: Array | None = None) -> Array:
    """k-th largest of ``codes`` (31-bit) among the entries where ``valid`` (default all)."""
    prefix = jnp.zeros((), jnp.uint32)
    for i, (shift, width) in enumerate(_digit_plan(_scatter_digits())):
        bins = 1 << width
        digit = ((codes >> shift) & jnp.uint32(bins - 1)).astype(jnp.int32)
        match = valid
        if i > 0:
            same = (codes >> (shift + width)) == prefix
            match = same if match is None else match & same
        # Entries that do not match get an out-of-range bin, which the scatter drops.
        index = digit if match is None else jnp.where(match, digit, bins)
        chosen, higher = _pick_digit(_suffix_counts(_histogram(index, bins)), k)
        k = k - higher
        prefix = (prefix << width) | chosen.astype(jnp.uint32)
    return prefix


def _radix_compare(codes: Array, k: Array, valid: Array | None = None) -> Array:
    prefix = jnp.zeros((), jnp.uint32)
    for i, (shift, width) in enumerate(_digit_plan(_COMPARE_DIGITS)):
        bins = 1 << width
        digit = ((codes >> shift) & jnp.uint32(bins - 1)).astype(jnp.int32)
        edges = jnp.arange(bins, dtype=jnp.int32)
        ge = digit[None, :] >= edges[:, None]  # (bins, n), fused into the reduction
        if valid is not None:
            ge = ge & valid[None, :]
        if i > 0:
            ge = ge & ((codes >> (shift + width)) == prefix)[None, :]
        at_or_above = jnp.sum(ge, axis=1, dtype=jnp.int32)
        chosen, higher = _pick_digit(at_or_above, k)
        k = k - higher
        prefix = (prefix << width) | chosen.astype(jnp.uint32)
    return prefix


def _radix(values: Array, k, method: str) -> Array:
    values = _check_values(values)
    n = values.shape[0]
    k = jnp.asarray(_check_k(k, n), jnp.int32)
    if values.dtype == jnp.float64:  # 64-bit codes would need 64-bit scatter indices
        return kth_largest_sort(values, k)
    codes = _codes(values)
    fn = _radix_scatter if method == "radix" else _radix_compare
    return _from_codes(fn(codes, k), values.dtype)


def kth_largest_radix(values: Array, k) -> Array:
    """Exact radix select (3 scatter-add histogram passes)."""
    return _radix(values, k, "radix")


def kth_largest_radix_compare(values: Array, k) -> Array:
    """Exact radix select (8 passes of 16-bin compare-and-count, no scatter)."""
    return _radix(values, k, "radix_compare")


def _mask_with_cumsum(values: Array, k: Array, kth) -> Array:
    """ops.topk_mask's rule: entries above the threshold, then the first ``missing`` ties
    (rank among the ties by a cumsum)."""
    threshold = kth(values, k)
    above = values > threshold
    ties = values == threshold
    missing = k - jnp.sum(above, dtype=jnp.int32)
    return above | (ties & (jnp.cumsum(ties, dtype=jnp.int32) <= missing))


def _mask_with_cutoff(values: Array, k: Array, kth, select_codes) -> Array:
    """Same set; the last kept tie is found by a second radix select (no cumsum)."""
    n = values.shape[0]
    threshold = kth(values, k)
    above = values > threshold
    ties = values == threshold
    missing = k - jnp.sum(above, dtype=jnp.int32)  # >= 1: threshold is the k-th largest
    index = jax.lax.broadcasted_iota(jnp.int32, (n,), 0)
    codes = (n - index).astype(jnp.uint32)  # larger code = earlier index
    last = n - select_codes(codes, missing, ties).astype(jnp.int32)
    return above | (ties & (index <= last))


def kept_mask(values: Array, k) -> Array:
    """Boolean mask of the k largest entries of flat ``values``: every entry above the
    k-th largest value, then the entries equal to it in increasing index order until k are
    kept — exactly ``ops.topk_mask``'s set (a stable descending sort's top k).

    With the radix implementations the tie cut-off (the index of the ``missing``-th entry
    equal to the threshold) is found by a second radix select over the codes n - index of
    the tied entries only (every other entry is dropped from the histograms), instead of a
    cumsum over the whole layer: ~3.5x less mask time on CPU (benchmarks/RESULTS.md).
    With "sort" (and "auto" on TPU) it is ops' cumsum rule after the sort.
    ``ops.topk_mask(m, k)`` can be ``kept_mask(m.reshape(-1), k).reshape(m.shape)``.
    """
    values = _check_values(values)
    k = jnp.asarray(_check_k(k, values.shape[0]), jnp.int32)
    name = get_implementation()
    sort_rule = lambda v, kk: _mask_with_cumsum(v, kk, kth_largest_sort)  # noqa: E731
    radix_rule = lambda v, kk: _mask_with_cutoff(  # noqa: E731
        v, kk, kth_largest_radix, _radix_scatter)
    if name == "sort":
        return sort_rule(values, k)
    if name == "radix":
        return radix_rule(values, k)
    if name == "radix_compare":
        return _mask_with_cutoff(values, k, kth_largest_radix_compare, _radix_compare)
    return jax.lax.platform_dependent(values, k, tpu=sort_rule, default=radix_rule)


# ---------------------------------------------------------------------------
# Dispatch


def kth_largest(values: Array, k) -> Array:
    """Value of the k-th largest entry of ``values`` (flat, finite, >= 0), 1 <= k <= n.

    Exact for every implementation (see the module docstring); ``k`` may be traced.
    """
    name = get_implementation()
    if name == "sort":
        return kth_largest_sort(values, k)
    if name == "radix":
        return kth_largest_radix(values, k)
    if name == "radix_compare":
        return kth_largest_radix_compare(values, k)
    values = _check_values(values)
    k = jnp.asarray(_check_k(k, values.shape[0]), jnp.int32)
    # "auto": resolved per lowering platform. XLA:CPU's sort is 50-200x slower than the
    # radix select on layers of 0.6-2.4 M entries (benchmarks/RESULTS.md); on TPU scatters
    # serialise, so the sort stays there until measured.
    return jax.lax.platform_dependent(values, k, tpu=kth_largest_sort,
                                      default=kth_largest_radix)


# ---------------------------------------------------------------------------
# All layers at once


def _radix_scatter_many(codes: Sequence[Array], ks: Array) -> Array:
    """Segmented radix select: one scatter per pass for all arrays (L segments of B bins)."""
    num = len(codes)
    prefix = jnp.zeros((num,), jnp.uint32)
    for i, (shift, width) in enumerate(_digit_plan(_scatter_digits())):
        bins = 1 << width
        parts = []
        for j, c in enumerate(codes):
            digit = ((c >> shift) & jnp.uint32(bins - 1)).astype(jnp.int32) + j * bins
            if i > 0:
                digit = jnp.where((c >> (shift + width)) == prefix[j], digit, num * bins)
            parts.append(digit)
        index = jnp.concatenate(parts) if num > 1 else parts[0]
        hist = _histogram(index, num * bins).reshape(num, bins)
        chosen, higher = _pick_digit(_suffix_counts(hist), ks)
        ks = ks - higher
        prefix = (prefix << width) | chosen.astype(jnp.uint32)
    return prefix


def _many_batched(arrays: list, ks: list) -> list:
    if any(a.dtype == jnp.float64 for a in arrays):
        return [kth_largest_sort(a, k) for a, k in zip(arrays, ks)]
    k_vec = jnp.stack([jnp.asarray(k, jnp.int32) for k in ks])
    codes = _radix_scatter_many([_codes(a) for a in arrays], k_vec)
    return [_from_codes(codes[j], a.dtype) for j, a in enumerate(arrays)]


def _many_each(fn):
    return lambda arrays, ks: [fn(a, k) for a, k in zip(arrays, ks)]


def kth_largest_many(arrays: Sequence[Array], ks, batched: bool | None = None) -> list[Array]:
    """``[kth_largest(a.reshape(-1), k) for a, k in zip(arrays, ks)]``, possibly batched.

    ``ks`` holds one k per array (Python ints or traced int32 scalars, or one int32
    vector). With the radix implementations and ``batched=True`` all arrays share one
    scatter-add per pass (segment offset + digit): ~3 fused passes over all scores however
    many layers there are, instead of one sort (or select) per layer. ``batched=None``
    (default) batches on GPU only (on CPU the per-array select measured faster: the
    concatenation costs more than it saves). The sort implementation (and "auto" on TPU)
    sorts each array separately.
    """
    arrays = [_check_values(jnp.asarray(a).reshape(-1)) for a in arrays]
    if isinstance(ks, (jax.Array, np.ndarray)):
        if np.ndim(ks) != 1:
            raise ValueError(f"ks must be a sequence or a 1-D vector; got shape {np.shape(ks)}")
        ks = [ks[i] for i in range(ks.shape[0])]
    ks = list(ks)
    if len(ks) != len(arrays):
        raise ValueError(f"kth_largest_many needs one k per array; got {len(ks)} ks for "
                         f"{len(arrays)} arrays")
    if not arrays:
        return []
    ks = [jnp.asarray(_check_k(k, a.shape[0]), jnp.int32) for a, k in zip(arrays, ks)]
    name = get_implementation()
    if name == "sort":
        return _many_each(kth_largest_sort)(arrays, ks)
    if name == "radix_compare":
        return _many_each(kth_largest_radix_compare)(arrays, ks)
    radix = {True: _many_batched, False: _many_each(kth_largest_radix)}
    if batched is not None:
        radix_fn = radix[bool(batched)]
        if name == "radix":
            return radix_fn(arrays, ks)
        return jax.lax.platform_dependent(arrays, ks, tpu=_many_each(kth_largest_sort),
                                          default=radix_fn)
    if name == "radix":
        return jax.lax.platform_dependent(arrays, ks, cpu=radix[False], default=radix[True])
    return jax.lax.platform_dependent(arrays, ks, cpu=radix[False],
                                      tpu=_many_each(kth_largest_sort), default=radix[True])
