"""Top-k masks of ALL layers in one computation: the kept sets of the batched mask path.

``topk_masks(leaves, ks, method)`` returns, for every score array, the boolean mask of its
``k`` largest |scores|: exactly ``select.topk_mask``'s kept set (entries above the k-th
largest value, then the entries equal to it in increasing flat index order).

Why: the per-layer mask (one radix select of 3 scatter-histogram passes + a tie cumsum +
compares per layer) launches ~10 small kernels per layer, i.e. hundreds per step on a GPU,
with scatter atomics that serialise on the few exponents |scores| share. Here every layer
is searched together, in one flat "blocked" copy of all codes:

* layout: the uint31 codes of |s| (float32 bit patterns, sign cleared; monotone in the
  value) of every layer, each padded with -1 to a multiple of ``block`` entries and
  concatenated into one (num_blocks, block) int32 array; every block belongs to one layer
  (static table). One copy of the scores.
* thresholds, method ``"compare"`` (no atomics, no scatter): the k-th largest code t of a
  layer is the largest c with #{code >= c} >= k. Its bits are found greedily from the top
  in digits of D bits (default 4, bits 30..0 -> 8 passes; ``"compare<D>"`` picks D in
  1..8): each pass counts, for every layer and each of the 2^D - 1 candidates
  c_d = (prefix, d, 0...), the entries >= c_d by one fused compare-and-sum over the
  blocked array -> (num_blocks, 2^D - 1), then per-layer totals by a cumsum over blocks
  and differences at the (static) layer boundaries. The digit is the number of candidates
  whose count reaches k; the count of the next candidate gives #{code > t} for free. The
  C counts are C sibling reductions of the same input, which XLA fuses into one kernel
  reading each code once.
* thresholds, method ``"radix_many"``: ``select.kth_largest_many`` (3 scatter histogram
  passes for all layers; atomics). The GPU default.
* ties, both methods: per-block counts of entries equal to t (one fused reduction, which
  also counts entries above t for radix_many), a cumsum over blocks finds for every layer
  the block holding its last kept tie; only those L blocks are gathered and ranked (an
  (L, block) cumsum), giving per layer the flat index ``cut`` of the last kept tie.
* the mask of a layer is then elementwise from its own scores and two scalars,
  (code > t) | (code == t & index <= cut), which XLA fuses into the kernel's consumers.
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
import numpy as np

from mpt_jax import select

Array = jax.Array

METHODS = ("compare", "radix_many", "per_layer")
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
    "compare6", "radix_many", "per_layer", or a registered name), else a ValueError."""
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
# Static layout


class BlockLayout:
    """Static block table of the blocked codes: layer l owns blocks [starts[l], ends[l])."""

    def __init__(self, sizes: Sequence[int], block: int):
        self.sizes = [int(n) for n in sizes]
        self.block = block
        counts = np.array([-(-n // block) for n in self.sizes], np.int64)
        self.ends = np.cumsum(counts).astype(np.int32)
        self.starts = (self.ends - counts).astype(np.int32)
        self.num_blocks = int(self.ends[-1])
        self.layer_of_block = np.repeat(np.arange(len(sizes), dtype=np.int32), counts)


def _codes(x: Array) -> Array:
    """Monotone int32 codes of |x| (float32 bit pattern with the sign bit cleared)."""
    return select.float_codes(jnp.abs(x).reshape(-1)).astype(jnp.int32)


def _blocked(codes: Sequence[Array], layout: BlockLayout) -> Array:
    """(num_blocks, block) int32; padding is -1 (never >= a candidate >= 1, never == t >= 0)."""
    parts = []
    for c, n in zip(codes, layout.sizes):
        pad = -n % layout.block
        parts.append(jnp.pad(c, (0, pad), constant_values=-1) if pad else c)
    flat = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
    return flat.reshape(layout.num_blocks, layout.block)


def segment_totals(per_block: Array, layout: BlockLayout) -> Array:
    """(num_blocks, ...) -> (L, ...): sums over each layer's (contiguous) blocks, without a
    scatter: a cumsum over blocks and differences at the static boundaries."""
    cs = jnp.cumsum(per_block, axis=0, dtype=jnp.int32)
    end = cs[layout.ends - 1]
    before = jnp.where((layout.starts > 0).reshape((-1,) + (1,) * (cs.ndim - 1)),
                       cs[np.maximum(layout.starts - 1, 0)], 0)
    return end - before


# ---------------------------------------------------------------------------
# Thresholds


def count_at_or_above(blocked: Array, candidates: Array) -> Array:
    """(num_blocks, C) counts of each block's codes >= each of its C candidates, as C
    sibling reductions of the same input: XLA multi-output-fuses them into one kernel that
    reads each code once and does the C compares in registers."""
    return jnp.stack([jnp.sum(blocked >= candidates[:, j:j + 1], axis=1, dtype=jnp.int32)
                      for j in range(candidates.shape[1])], axis=1)


def compare_select(blocked: Array, layout: BlockLayout, ks: Array, bits: int,
                   count: Callable = count_at_or_above):
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
        totals = segment_totals(per_block, layout)                      # (L, C)
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
# Ties


def _tie_cuts(blocked: Array, layout: BlockLayout, t: Array, above: Array | None,
              ks: Array) -> Array:
    """Local flat index of the last kept entry equal to t, per layer."""
    lob = layout.layer_of_block
    t_blk = t[lob][:, None]
    eq_count = jnp.sum(blocked == t_blk, axis=1, dtype=jnp.int32)        # (num_blocks,)
    if above is None:
        above = segment_totals(jnp.sum(blocked > t_blk, axis=1, dtype=jnp.int32), layout)
    missing = ks - above                       # >= 1 ties to keep, <= ties in the layer
    cs = jnp.cumsum(eq_count, dtype=jnp.int32)
    before = jnp.where(layout.starts > 0, cs[np.maximum(layout.starts - 1, 0)], 0)
    within = cs - before[lob]                  # ties of the layer up to this block, inclusive
    short = (within < missing[lob]).astype(jnp.int32)  # blocks wholly before the cut
    n_short = segment_totals(short, layout)
    cut_block = layout.starts + n_short        # absolute block holding the last kept tie
    need = missing - (within[cut_block] - eq_count[cut_block])
    rank = jnp.cumsum(blocked[cut_block] == t[:, None], axis=1, dtype=jnp.int32)  # (L, B)
    pos = jnp.sum(rank < need[:, None], axis=1, dtype=jnp.int32)
    return n_short * layout.block + pos


def _mask_from_cut(scores: Array, t: Array, cut: Array) -> Array:
    code = _codes(scores)
    index = jax.lax.broadcasted_iota(jnp.int32, code.shape, 0)
    keep = (code > t) | ((code == t) & (index <= cut))
    return keep.reshape(scores.shape)


# ---------------------------------------------------------------------------
# Masks


def blocked_masks(leaves: Sequence[Array], ks: Sequence[int], block: int,
                  thresholds: Callable) -> list[Array]:
    """Masks of every leaf from ``thresholds(blocked, layout, k_vec) -> (t, above)`` (the
    k-th largest code per layer and #{code > t}, or None to count it here) and the blocked
    tie cut-off."""
    leaves = [jax.lax.stop_gradient(x) for x in leaves]
    layout = BlockLayout([x.size for x in leaves], block)
    blocked = _blocked([_codes(x) for x in leaves], layout)
    if all(isinstance(k, (int, np.integer)) for k in ks):
        k_vec = jnp.asarray(np.array(ks, np.int32))
    else:  # traced counts (a member program's kept collection)
        k_vec = jnp.stack([jnp.asarray(k, jnp.int32) for k in ks])
    t, above = thresholds(blocked, layout, k_vec)
    cut = _tie_cuts(blocked, layout, t, above, k_vec)
    return [_mask_from_cut(x, t[i], cut[i]) for i, x in enumerate(leaves)]


def topk_masks(leaves: Sequence[Array], ks: Sequence[int], method: str = "compare",
               block: int = BLOCK) -> list[Array]:
    """Boolean masks of the ``ks[i]`` largest |leaves[i]| (Python ints, or int32 scalars that
    may be traced; the registered benchmark methods take ints only), ties to the
    lowest flat indices: leaf for leaf identical to ``select.topk_mask(abs(leaf), k)``.
    No gradient flows to the leaves."""
    check_method(method)
    if method == "per_layer":
        return [select.topk_mask(jnp.abs(jax.lax.stop_gradient(x)), k)
                for x, k in zip(leaves, ks)]
    if method in _REGISTERED:
        return _REGISTERED[method](leaves, ks, block)
    if method == "radix_many":
        return blocked_masks(leaves, ks, block,
                             lambda *_: (_radix_many_select(leaves, ks), None))
    digits = _COMPARE_RE.match(method).group(1)
    bits = int(digits) if digits else DEFAULT_DIGIT_BITS
    return blocked_masks(leaves, ks, block, lambda blocked, layout, k_vec: compare_select(
        blocked, layout, k_vec, bits))
