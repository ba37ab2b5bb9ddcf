"""Top-k masks of ALL layerwise score tensors at once (issue 6: the "batched" mask path).

``layer_masks(scores, keep_fraction, method)`` returns, for every leaf of a pytree of score
arrays, the boolean mask of its kept_count(n, keep_fraction) largest |scores| -- exactly
``ops.topk_mask``'s kept set (entries above the k-th largest value, then the entries equal
to it in increasing flat index order; SPEC 1.2). ``params_masks(params, ...)`` does the same
for the ``scores`` leaves of a Flax ``params`` tree and returns the ``masks`` collection
that ``layers._KernelLayer`` reads (``...["scores"]`` -> ``...["mask"]``).

Why: the per-layer mask (one radix select of 3 scatter-histogram passes + a tie cumsum +
compares per layer) launches ~10 small kernels per layer, i.e. hundreds per step, with
scatter atomics that serialise on the few exponents |scores| share. Here every layer is
searched together, in one flat "blocked" copy of all codes:

* layout: the uint31 codes of |s| (float32 bit patterns, sign cleared; monotone in the
  value) of every layer, each padded with -1 to a multiple of ``BLOCK`` entries and
  concatenated into one (num_blocks, BLOCK) int32 array; every block belongs to one layer
  (static table). One copy of the scores.
* thresholds, method ``"compare"`` (no atomics, no scatter): the k-th largest code t of a
  layer is the largest c with #{code >= c} >= k. Its bits are found greedily from the top
  in digits of D bits (default 4, bits 30..0 -> 8 passes): each pass counts, for every
  layer and each of the 2^D - 1 candidates c_d = (prefix, d, 0...), the entries >= c_d by
  one fused compare-and-sum over the blocked array -> (num_blocks, 2^D - 1), then per-layer
  totals by a cumsum over blocks and differences at the (static) layer boundaries. The
  digit is the number of candidates whose count reaches k. No prefix-equality test and no
  "k minus higher bins" bookkeeping is needed; the count of the next candidate gives
  #{code > t} for free. "compare" writes the C counts as C sibling reductions (XLA fuses
  them into one kernel reading each code once); "compare_bcast" as one (blocks, C, BLOCK)
  broadcast reduction (each code read C times, from cache). Which is faster is for the GPU
  benchmark to say.
* thresholds, method ``"radix_many"``: ``select.kth_largest_many(batched=True)`` (3 scatter
  histogram passes for all layers; atomics).
* ties, both methods: per-block counts of entries equal to t (one fused reduction, which
  also counts entries above t for radix_many), a cumsum over blocks finds for every layer
  the block holding its last kept tie; only those L blocks are gathered and ranked (an
  (L, BLOCK) cumsum), giving per layer the flat index ``cut`` of the last kept tie.
* the mask of a layer is then elementwise from its own scores and two scalars,
  (code > t) | (code == t & index <= cut), which XLA fuses into the kernel's consumers.
* ``"per_layer"``: ``ops.topk_mask`` on each leaf (the reference).

Inputs are finite float scores (any float dtype; computed through float32 exactly). Like
``mpt_jax.select``, the codes are exact for denormals while XLA:CPU's float compares flush
them to zero: scores in the denormal range (< 1.2e-38) could then give a different tie
order than ``ops.topk_mask`` (the scores of real networks are never that small).
"""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax import ops, select

Array = jax.Array

METHODS = ("compare", "radix_many", "per_layer")
DEFAULT_METHOD = "compare"
BLOCK = 2048           # entries per block of the blocked layout (a power of two is not needed)
DEFAULT_DIGIT_BITS = 4  # "compare": 2^4 - 1 = 15 candidates per pass, 8 passes
_BITS_ENV_VAR = "MPT_JAX_MASK_BITS"
_METHOD_RE = re.compile(r"^compare(_bcast)?([1-8])?$")


def check_method(method: str) -> str:
    """``method`` if valid ("compare", "compare_bcast", either with a digit width D in 1..8
    appended, e.g. "compare6", "radix_many", "per_layer"), else a ValueError naming them."""
    if method in METHODS or (isinstance(method, str) and _METHOD_RE.match(method)):
        return method
    raise ValueError(f"unknown mask method {method!r}; valid: {', '.join(METHODS)}, "
                     f"compare_bcast (or compare<D> / compare_bcast<D>, D = 1..8 digit bits, "
                     f"e.g. compare6)")


def _digit_bits(method: str) -> int:
    m = _METHOD_RE.match(method)
    if m and m.group(2):
        return int(m.group(2))
    text = os.environ.get(_BITS_ENV_VAR, "").strip()
    if text:
        if not text.isdigit() or not 1 <= int(text) <= 8:
            raise ValueError(f"{_BITS_ENV_VAR} must be an integer in 1..8; got {text!r}")
        return int(text)
    return DEFAULT_DIGIT_BITS


def digit_widths(bits: int) -> tuple[int, ...]:
    """Digit widths (most significant first) covering bits 30..0 with D-bit digits."""
    full, rem = divmod(31, bits)
    return ((rem,) if rem else ()) + (bits,) * full


# ---------------------------------------------------------------------------
# Static layout


class _Layout:
    """Static block table: layer l owns blocks [starts[l], ends[l])."""

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
    return select._codes(jnp.abs(x).reshape(-1)).astype(jnp.int32)


def _blocked(codes: Sequence[Array], layout: _Layout) -> Array:
    """(num_blocks, BLOCK) int32; padding is -1 (never >= a candidate >= 1, never == t >= 0)."""
    parts = []
    for c, n in zip(codes, layout.sizes):
        pad = -n % layout.block
        parts.append(jnp.pad(c, (0, pad), constant_values=-1) if pad else c)
    flat = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
    return flat.reshape(layout.num_blocks, layout.block)


def _segment_totals(per_block: Array, layout: _Layout) -> Array:
    """(num_blocks, ...) -> (L, ...): sums over each layer's (contiguous) blocks, without a
    scatter: a cumsum over blocks and differences at the static boundaries."""
    cs = jnp.cumsum(per_block, axis=0, dtype=jnp.int32)
    end = cs[layout.ends - 1]
    before = jnp.where((layout.starts > 0).reshape((-1,) + (1,) * (cs.ndim - 1)),
                       cs[np.maximum(layout.starts - 1, 0)], 0)
    return end - before


# ---------------------------------------------------------------------------
# Thresholds


def _compare_select(blocked: Array, layout: _Layout, ks: Array, bits: int,
                    split: bool = True):
    """k-th largest code of every layer and #{code > it}, by compare-and-count passes."""
    num = len(layout.sizes)
    prefix = jnp.zeros((num,), jnp.int32)
    above = jnp.zeros((num,), jnp.int32)  # #{code >= the interval's upper end}; 2^31 -> 0
    shift = 31
    for width in digit_widths(bits):
        shift -= width
        count = (1 << width) - 1
        digits = jnp.arange(1, count + 1, dtype=jnp.int32)
        cand = ((prefix[:, None] << width) | digits[None, :]) << shift  # (L, C), all >= 1
        cand_blk = cand[layout.layer_of_block]                          # (num_blocks, C)
        if split:
            # C sibling reductions of the same input: XLA multi-output-fuses them into one
            # kernel that reads each code once and does the C compares in registers.
            per_block = jnp.stack(
                [jnp.sum(blocked >= cand_blk[:, j:j + 1], axis=1, dtype=jnp.int32)
                 for j in range(count)], axis=1)
        else:
            # One (num_blocks, C, BLOCK) broadcast compare reduced over the last axis: one
            # row reduction that reads each block once per candidate (from cache).
            ge = blocked[:, None, :] >= cand_blk[:, :, None]
            per_block = jnp.sum(ge, axis=2, dtype=jnp.int32)
        totals = _segment_totals(per_block, layout)                     # (L, C)
        digit = jnp.sum(totals >= ks[:, None], axis=1, dtype=jnp.int32)  # 0..C
        nxt = jnp.take_along_axis(totals, jnp.minimum(digit, count - 1)[:, None], 1)[:, 0]
        above = jnp.where(digit < count, nxt, above)
        prefix = (prefix << width) | digit
    return prefix, above


def _radix_many_select(leaves: Sequence[Array], ks: Sequence[int]) -> Array:
    values = [jnp.abs(jax.lax.stop_gradient(x)).reshape(-1).astype(jnp.float32)
              for x in leaves]
    thresholds = select.kth_largest_many(values, list(ks), batched=True)
    return jnp.stack([select._codes(t).astype(jnp.int32) for t in thresholds])


# ---------------------------------------------------------------------------
# Ties


def _tie_cuts(blocked: Array, layout: _Layout, t: Array, above: Array | None,
              ks: Array) -> Array:
    """Local flat index of the last kept entry equal to t, per layer."""
    lob = layout.layer_of_block
    t_blk = t[lob][:, None]
    eq_count = jnp.sum(blocked == t_blk, axis=1, dtype=jnp.int32)        # (num_blocks,)
    if above is None:
        above = _segment_totals(jnp.sum(blocked > t_blk, axis=1, dtype=jnp.int32), layout)
    missing = ks - above                       # >= 1 ties to keep, <= ties in the layer
    cs = jnp.cumsum(eq_count, dtype=jnp.int32)
    before = jnp.where(layout.starts > 0, cs[np.maximum(layout.starts - 1, 0)], 0)
    within = cs - before[lob]                  # ties of the layer up to this block, inclusive
    short = (within < missing[lob]).astype(jnp.int32)  # blocks wholly before the cut
    n_short = _segment_totals(short, layout)
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
# Public API


def kept_counts(leaves: Sequence[Array], keep_fraction: float) -> list[int]:
    """Static kept count of every leaf (ops.kept_count, SPEC 1.2)."""
    return [ops.kept_count(int(np.prod(x.shape)), keep_fraction) for x in leaves]


def _leaf_masks(leaves: list, keep_fraction: float, method: str, block: int) -> list:
    ks = kept_counts(leaves, keep_fraction)
    if method == "per_layer":
        return [ops.topk_mask(jnp.abs(jax.lax.stop_gradient(x)), k) for x, k in zip(leaves, ks)]
    leaves_sg = [jax.lax.stop_gradient(x) for x in leaves]
    layout = _Layout([x.size for x in leaves_sg], block)
    blocked = _blocked([_codes(x) for x in leaves_sg], layout)
    k_vec = jnp.asarray(np.array(ks, np.int32))
    if method == "radix_many":
        t, above = _radix_many_select(leaves_sg, ks), None
    else:
        t, above = _compare_select(blocked, layout, k_vec, _digit_bits(method),
                                   split="_bcast" not in method)
    cut = _tie_cuts(blocked, layout, t, above, k_vec)
    return [_mask_from_cut(x, t[i], cut[i]) for i, x in enumerate(leaves_sg)]


def layer_masks(scores: Any, keep_fraction: float, method: str = DEFAULT_METHOD,
                block: int = BLOCK) -> Any:
    """Boolean top-k masks of every leaf of the pytree ``scores`` (same structure).

    Each leaf keeps ``ops.kept_count(leaf.size, keep_fraction)`` entries with the largest
    |scores|, ties to the lowest flat indices: leaf for leaf identical to
    ``ops.topk_mask(jnp.abs(leaf), kept)``. ``keep_fraction`` is a Python float (static;
    the layerwise keep fraction never changes during a run). No gradient flows to the
    scores. ``method``: "compare" (default; atomics-free, "compare<D>" picks D-bit digits,
    default 4 or $MPT_JAX_MASK_BITS), "radix_many" (scatter histograms), "per_layer".
    """
    check_method(method)
    keep_fraction = ops.validate_keep_fraction(keep_fraction)
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int; got {block!r}")
    leaves, treedef = jax.tree.flatten(scores)
    if not leaves:
        return scores
    for x in leaves:
        if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) or jnp.size(x) == 0:
            raise ValueError(f"layer_masks expects non-empty float score arrays; got "
                             f"{jnp.asarray(x).dtype}{tuple(jnp.shape(x))}")
    masks = _leaf_masks([jnp.asarray(x) for x in leaves], keep_fraction, method, block)
    return jax.tree.unflatten(treedef, masks)


def score_paths(params: Any) -> list[tuple]:
    """Key paths (tuples of dict keys) of the ``scores`` leaves of a Flax params tree."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [tuple(getattr(k, "key", k) for k in path) for path, _ in flat
            if getattr(path[-1], "key", None) == "scores"]


def params_masks(params: Any, keep_fraction: float, method: str = DEFAULT_METHOD,
                 block: int = BLOCK) -> dict:
    """The ``masks`` collection for ``model.apply``: for every ``params[...]["scores"]`` a
    bool ``masks[...]["mask"]`` (layer_masks of all of them together). {} if none."""
    paths = score_paths(params)
    if not paths:
        return {}
    leaves = []
    for path in paths:
        node = params
        for key in path:
            node = node[key]
        leaves.append(node)
    masks = layer_masks(leaves, keep_fraction, method, block)
    out: dict = {}
    for path, m in zip(paths, masks):
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node["mask"] = m
    return out
