"""Top-k masks of ALL layers in one computation: the kept sets of the batched mask path.

``topk_masks(leaves, ks, method)`` returns, for every score array, the boolean mask of its
``k`` largest |scores|: exactly ``select.topk_mask``'s kept set (entries above the k-th
largest value, then the entries equal to it in increasing flat index order).

Why: the per-layer mask (one radix select of 3 scatter-histogram passes + a tie cumsum +
compares per layer) launches ~10 small kernels per layer, i.e. hundreds per step on a GPU,
with scatter atomics that serialise on the few exponents |scores| share. Here every layer
is searched together, in one flat "blocked" copy of all codes (``mpt_jax.select_blocks``:
the layout, the per-layer totals, the tie cut-off and the elementwise mask), and the
methods differ only in how they find every layer's threshold code t (its k-th largest):

* ``"compare"`` (no atomics, no scatter): t is the largest c with #{code >= c} >= k. Its
  bits are found greedily from the top in digits of D bits (default 4, bits 30..0 -> 8
  passes; ``"compare<D>"`` picks D in 1..8): each pass counts, for every layer and each of
  the 2^D - 1 candidates c_d = (prefix, d, 0...), the entries >= c_d by one fused
  compare-and-sum over the blocked array -> (num_blocks, 2^D - 1), then per-layer totals.
  The digit is the number of candidates whose count reaches k; the count of the next
  candidate gives #{code > t} for free. The C counts are C sibling reductions of the same
  input, which XLA fuses into one kernel reading each code once.
* ``"radix_many"``: ``select.kth_largest_many`` (3 scatter histogram passes for all
  layers; one atomic add per score in the first). The GPU default.
* ``"radix_pallas"``: the radix select with every histogram counted per program instance
  in a Pallas kernel, no atomics (``mpt_jax.select_pallas``; compiled by Triton on GPUs,
  interpreted, slowly, elsewhere).
* ``"warm"``: the search that starts from the previous step's thresholds
  (``mpt_jax.select_band``); as a stateless method it has none and runs its full select.
  The training step carries the thresholds (``mpt_jax.warm_masks``).
* ``"per_layer"``: ``select.topk_mask`` on each array (the reference).

Other methods (benchmark variants) can be added with ``register_method``.

Inputs are finite float scores (any float dtype; computed through float32 exactly). Like
``mpt_jax.select``, the codes are exact for denormals while XLA:CPU's float compares flush
them to zero: scores in the denormal range (< 1.2e-38) could then give a different tie
order than ``select.topk_mask`` (the scores of real networks are never that small).
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from mpt_jax import select, select_band, select_blocks, select_pallas

Array = jax.Array

METHODS = ("compare", "radix_many", "radix_pallas", "warm", "per_layer")
BLOCK = 2048           # entries per block of the blocked layout (a power of two is not needed)
DEFAULT_DIGIT_BITS = 4  # "compare": 2^4 - 1 = 15 candidates per pass, 8 passes
_COMPARE_RE = re.compile(r"^compare([1-8])?$")
_REGISTERED: dict[str, Callable] = {}


def register_method(name: str, fn: Callable) -> None:
    """Adds a mask method ``fn(leaves, ks, block) -> [bool mask per leaf]`` under ``name``
    (e.g. a benchmark's variant); it must keep exactly the kept sets of ``topk_masks``."""
    if name in METHODS or _COMPARE_RE.match(name):
        raise ValueError(f"{name!r} is a built-in mask method")
    _REGISTERED[name] = fn


def check_method(method: str) -> str:
    """``method`` if valid ("compare", "compare<D>" with D = 1..8 digit bits, e.g.
    "compare6", "radix_many", "radix_pallas", "warm", "per_layer", or a registered name),
    else a ValueError."""
    if isinstance(method, str) and (method in METHODS or _COMPARE_RE.match(method)
                                    or method in _REGISTERED):
        return method
    extra = f", {', '.join(sorted(_REGISTERED))}" if _REGISTERED else ""
    raise ValueError(f"unknown mask method {method!r}; valid: {', '.join(METHODS)}, "
                     f"compare<D> (D = 1..8 digit bits, e.g. compare6){extra}")


def is_builtin(method: str) -> bool:
    """Whether ``method`` is one of this module's own methods, not a registered variant."""
    return method in METHODS or bool(_COMPARE_RE.match(method))


def digit_widths(bits: int) -> tuple[int, ...]:
    """Digit widths (most significant first) covering bits 30..0 with D-bit digits."""
    full, rem = divmod(31, bits)
    return ((rem,) if rem else ()) + (bits,) * full


# ---------------------------------------------------------------------------
# Thresholds


def compare_select(blocked: Array, layout: select_blocks.BlockLayout, ks: Array, bits: int,
                   count: Callable = select_blocks.count_at_or_above):
    """k-th largest code of every layer and #{code > it}, by compare-and-count passes;
    ``count(blocked, candidates)`` -> (num_blocks, C) (default ``count_at_or_above``)."""
    num = len(layout.sizes)
    prefix = jnp.zeros((num,), jnp.int32)
    above = jnp.zeros((num,), jnp.int32)  # #{code >= the interval's upper end}; 2^31 -> 0
    shift = 31
    for width in digit_widths(bits):
        shift -= width
        num_cand = (1 << width) - 1
        digits = jnp.arange(1, num_cand + 1, dtype=jnp.int32)
        cand = ((prefix[:, None] << width) | digits[None, :]) << shift  # (L, C), all >= 1
        per_block = count(blocked, cand[layout.layer_of_block])         # (num_blocks, C)
        totals = select_blocks.segment_totals(per_block, layout)        # (L, C)
        digit = jnp.sum(totals >= ks[:, None], axis=1, dtype=jnp.int32)  # 0..C
        nxt = jnp.take_along_axis(totals, jnp.minimum(digit, num_cand - 1)[:, None], 1)[:, 0]
        above = jnp.where(digit < num_cand, nxt, above)
        prefix = (prefix << width) | digit
    return prefix, above


def _radix_many_select(leaves: Sequence[Array], ks: Sequence[int]) -> Array:
    values = [jnp.abs(jax.lax.stop_gradient(x)).reshape(-1).astype(jnp.float32)
              for x in leaves]
    thresholds = select.kth_largest_many(values, list(ks))
    return jnp.stack([select.float_codes(t).astype(jnp.int32) for t in thresholds])


# ---------------------------------------------------------------------------
# Masks


def topk_masks(leaves: Sequence[Array], ks: Sequence[int], method: str = "compare",
               block: int = BLOCK) -> list[Array]:
    """Boolean masks of the ``ks[i]`` largest |leaves[i]| (Python ints, or int32 scalars that
    may be traced; the registered benchmark methods take ints only), ties to the
    lowest flat indices: leaf for leaf identical to ``select.topk_mask(abs(leaf), k)``.
    No gradient flows to the leaves. ``block`` only changes the speed."""
    check_method(method)
    if method == "per_layer":
        return [select.topk_mask(jnp.abs(jax.lax.stop_gradient(x)), k)
                for x, k in zip(leaves, ks)]
    if method in _REGISTERED:
        return _REGISTERED[method](leaves, ks, block)
    if method == "radix_many":
        return select_blocks.blocked_masks(leaves, ks, block,
                                           lambda *_: (_radix_many_select(leaves, ks), None))
    if method == "radix_pallas":
        return select_pallas.topk_masks_pallas(leaves, ks, block)
    if method == "warm":
        return select_band.warm_topk_masks(leaves, ks, block)
    digits = _COMPARE_RE.match(method).group(1)
    bits = int(digits) if digits else DEFAULT_DIGIT_BITS
    return select_blocks.blocked_masks(
        leaves, ks, block, lambda blocked, layout, k_vec: compare_select(blocked, layout,
                                                                         k_vec, bits))
