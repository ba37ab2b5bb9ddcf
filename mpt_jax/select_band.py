"""Exact top-k thresholds of all layers that start from the previous step's thresholds.

Scores move little from one training step to the next, and so does every layer's k-th
largest |score| t. Knowing last step's t_prev, the search here needs one atomic add per
score only in the rare steps where t moved far:

1. count: for every layer, the entries >= each of E edges around t_prev (t_prev plus the
   fixed code offsets ``EDGE_OFFSETS``: 0 and 2^8 ... 2^20 ulps either side, i.e. up to
   ~12 % of the value), in
   one fused compare-and-sum pass over all codes (``select_blocks.count_at_or_above``),
   no atomics;
2. locate: t lies in [edge_j, edge_j+1) for the j with #{>= edge_j} >= k > #{>= edge_j+1};
   if that interval exists for every layer (the "band" case),
3. band: a radix select of the offsets code - edge_j of the entries inside the interval
   only (two 10-bit scatter passes: the interval is narrower than 2^20 code units), for
   the rank k - #{>= edge_j+1} among them; only the (few) entries inside the interval
   add to a histogram, every other entry is dropped by the scatter;
4. else (some layer's t left the widest interval, or there is no previous t, e.g. the
   first step): the full radix select of all codes (three scatter passes, every entry
   adding in the first), chosen by one ``lax.cond`` for all layers.

Both branches return the exact k-th largest code and #{code > t} per layer, so the kept
sets are exactly ``select.topk_mask``'s (ties to the lowest flat index) whatever the
previous thresholds were: they only decide the speed. The edges are clipped into the
code range, so any int32 vector (zeros for "none") is a valid ``previous``.

* ``warm_thresholds(blocked, layout, ks, previous)``: (t, above, in_band) on a
  ``select_blocks`` layout;
* ``warm_search(leaves, ks, previous, block)``: (masks, thresholds, in_band) of all leaves;
  the training step carries ``thresholds`` to the next step (``mpt_jax.warm_masks``);
* ``warm_topk_masks(leaves, ks, block)``: the stateless batched mask method "warm" of
  ``mpt_jax.select_many`` (no previous thresholds: always the full select).

The GPU cost of the ``lax.cond`` (XLA reads its predicate on the host) is measured by
benchmarks/run_gpu_speed.sh, not known yet.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax import select, select_blocks

Array = jax.Array

# Edges around the previous threshold code, in code units (ulps of float32: 2^8 ulps are
# ~3e-5 of the value, 2^14 ~2e-3, 2^20 ~0.12), a factor 4 apart so that the interval
# holding t, and so the band search's atomics, shrink with t's move. Measured on CPU
# (conv4 and resnet20_cifar, random batches, SGD lr 0.1): per-step moves of a median 560 /
# 4,100 and at most 5,700 / 150,000 ulps. The widest interval between neighbours is below
# 2^20, so the band search needs 20 bits (two 10-bit passes).
EDGE_OFFSETS = tuple(-(1 << b) for b in range(20, 7, -2)) + (0,) + tuple(
    1 << b for b in range(8, 21, 2))
FULL_DIGITS = select.SCATTER_DIGITS
CODE_LIMIT = 0x7FFFFFFF  # above every finite code (NaN patterns are not inputs)


def edges_around(previous: Array, offsets: Sequence[int] = EDGE_OFFSETS) -> Array:
    """(L, E) ascending int32 edges: ``previous`` (clipped so every edge is a valid code
    in [0, 2^31 - 1]) plus ``offsets``."""
    offsets = np.asarray(offsets, np.int64)
    if np.any(np.diff(offsets) <= 0):
        raise ValueError(f"edge offsets must be strictly increasing; got {offsets.tolist()}")
    low, high = int(-offsets[0]), int(CODE_LIMIT - offsets[-1])
    centre = jnp.clip(jnp.asarray(previous, jnp.int32), max(low, 0), high)
    return centre[:, None] + jnp.asarray(offsets.astype(np.int32))[None, :]


def band_bits(offsets: Sequence[int] = EDGE_OFFSETS) -> int:
    """Bits the band search needs: the widest interval between neighbouring edges."""
    return int(np.max(np.diff(np.asarray(offsets, np.int64)))).bit_length()


def _band_plan(digits: Sequence[int]) -> list[tuple[int, int]]:
    shift, plan = sum(digits), []
    for width in digits:
        shift -= width
        plan.append((shift, width))
    return plan


def band_radix(blocked: Array, layout: select_blocks.BlockLayout, ks: Array, lo: Array,
               hi: Array, digits: Sequence[int]):
    """(t, #{code > t} among the codes in [lo, hi)) per layer: the ks-th largest code among
    each layer's codes in [lo[l], hi[l]) (there must be at least ks of them), by a radix
    select of their offsets code - lo (< 2^sum(digits)) with one segmented scatter-add per
    digit; entries outside the interval are dropped by the scatter."""
    num = len(layout.sizes)
    lob = layout.layer_of_block
    lo_b, hi_b = lo[lob][:, None], hi[lob][:, None]
    inside = (blocked >= lo_b) & (blocked < hi_b)
    offset = blocked - lo_b
    segment = jnp.asarray(lob)[:, None]
    prefix = jnp.zeros((num,), jnp.int32)
    above = jnp.zeros((num,), jnp.int32)
    for shift, width in _band_plan(digits):
        bins = 1 << width
        match = inside & ((offset >> (shift + width)) == prefix[lob][:, None])
        digit = (offset >> shift) & (bins - 1)
        index = jnp.where(match, segment * bins + digit, num * bins)
        hist = select.histogram(index.reshape(-1), num * bins).reshape(num, bins)
        chosen, higher = select.pick_digit(select.suffix_counts(hist), ks)
        ks = ks - higher
        above = above + higher
        prefix = (prefix << width) | chosen
    return lo + prefix, above


def full_thresholds(blocked: Array, layout: select_blocks.BlockLayout, ks: Array):
    """(t, #{code > t}) per layer by the full radix select of all codes."""
    num = len(layout.sizes)
    return band_radix(blocked, layout, ks, jnp.zeros((num,), jnp.int32),
                      jnp.full((num,), CODE_LIMIT, jnp.int32), FULL_DIGITS)


def locate(totals: Array, edges: Array, ks: Array):
    """From totals[l, j] = #{code >= edges[l, j]}: (in_band per layer, lo, hi, #{>= hi})
    of the interval [lo, hi) between neighbouring edges that holds the k-th largest."""
    num_edges = edges.shape[1]
    j = jnp.sum(totals >= ks[:, None], axis=1, dtype=jnp.int32)   # edges with >= k above
    in_band = (j >= 1) & (j < num_edges)
    lo_i, hi_i = jnp.clip(j - 1, 0, num_edges - 1), jnp.clip(j, 0, num_edges - 1)
    pick = lambda a, i: jnp.take_along_axis(a, i[:, None], axis=1)[:, 0]  # noqa: E731
    return in_band, pick(edges, lo_i), pick(edges, hi_i), pick(totals, hi_i)


def warm_thresholds(blocked: Array, layout: select_blocks.BlockLayout, ks: Array,
                    previous: Array | None, offsets: Sequence[int] = EDGE_OFFSETS):
    """(t, above, in_band): every layer's k-th largest code, #{code > t}, and whether the
    band search served all layers (else the full select ran)."""
    if previous is None:
        t, above = full_thresholds(blocked, layout, ks)
        return t, above, jnp.array(False)
    edges = edges_around(previous, offsets)
    per_block = select_blocks.count_at_or_above(blocked, edges[layout.layer_of_block])
    totals = select_blocks.segment_totals(per_block, layout)           # (L, E)
    in_band, lo, hi, above_hi = locate(totals, edges, ks)
    all_in = jnp.all(in_band)
    bits = band_bits(offsets)
    digits = (bits - bits // 2, bits // 2)

    def band(operands):
        blk, k_vec = operands
        t, above = band_radix(blk, layout, k_vec - above_hi, lo, hi, digits)
        return t, above + above_hi

    def full(operands):
        return full_thresholds(operands[0], layout, operands[1])

    t, above = jax.lax.cond(all_in, band, full, (blocked, ks))
    return t, above, all_in


def warm_search(leaves: Sequence[Array], ks, previous: Array | None, block: int = 2048,
                offsets: Sequence[int] = EDGE_OFFSETS):
    """(masks, thresholds, in_band) of all leaves: the masks exactly
    ``select_many.topk_masks``'; ``thresholds`` (int32 codes, one per leaf) to pass as
    ``previous`` next time; ``in_band``: whether the band search served every leaf."""
    found = {}

    def thresholds(blocked, layout, k_vec):
        t, above, found["in_band"] = warm_thresholds(blocked, layout, k_vec, previous,
                                                     offsets)
        return t, above

    masks, t = select_blocks.blocked_search(leaves, ks, block, thresholds)
    return masks, t, found["in_band"]


def warm_topk_masks(leaves: Sequence[Array], ks, block: int = 2048) -> list[Array]:
    """The batched mask method "warm" without carried thresholds: the full select."""
    return warm_search(leaves, ks, None, block)[0]
