"""The blocked layout of all layers' scores, and the kept sets built on it.

The batched mask methods (``mpt_jax.select_many`` and the modules it dispatches to) search
every layer at once in one flat "blocked" copy of all codes:

* codes: the uint31 codes of |s| (float32 bit patterns, sign cleared; monotone in the
  value, exact for denormals), as int32;
* layout: every layer's codes padded with -1 to a multiple of ``block`` entries and
  concatenated into one (num_blocks, block) int32 array; every block belongs to one layer
  (a static table, ``BlockLayout``). Padding is never >= a candidate code >= 0.
* per-layer totals of per-block counts without a scatter: a cumsum over blocks and
  differences at the (static) layer boundaries (``segment_totals``).
* ties: given every layer's threshold code t (its k-th largest) and #{code > t}, per-block
  counts of entries equal to t and a cumsum over blocks find, for every layer, the block
  holding its last kept tie; only those L blocks are gathered and ranked (an (L, block)
  cumsum), giving per layer the flat index ``cut`` of the last kept tie (``tie_cuts``).
* the mask of a layer is then elementwise from its own scores and two scalars,
  (code > t) | (code == t & index <= cut) (``mask_from_cut``), which XLA fuses into the
  kernel's consumers.

The kept set is exactly ``select.topk_mask``'s: the k largest |s|, ties to the lowest flat
indices. ``blocked_masks`` puts the pieces together around a thresholds function.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax import select

Array = jax.Array


class BlockLayout:
    """Static block table of the blocked codes: layer l owns blocks [starts[l], ends[l])."""

    def __init__(self, sizes: Sequence[int], block: int):
        self.sizes = [int(n) for n in sizes]
        self.block = block
        counts = np.array([-(-n // block) for n in self.sizes], np.int64)
        self.counts = counts.astype(np.int32)
        self.ends = np.cumsum(counts).astype(np.int32)
        self.starts = (self.ends - counts).astype(np.int32)
        self.num_blocks = int(self.ends[-1])
        self.layer_of_block = np.repeat(np.arange(len(sizes), dtype=np.int32), counts)


def abs_codes(x: Array) -> Array:
    """Monotone int32 codes of |x|, flat (float32 bit pattern with the sign bit cleared)."""
    return select.float_codes(jnp.abs(x).reshape(-1)).astype(jnp.int32)


def blocked_codes(codes: Sequence[Array], layout: BlockLayout) -> Array:
    """(num_blocks, block) int32; padding is -1 (never >= a candidate >= 0, never == t >= 0)."""
    parts = []
    for c, n in zip(codes, layout.sizes):
        pad = -n % layout.block
        parts.append(jnp.pad(c, (0, pad), constant_values=-1) if pad else c)
    flat = jnp.concatenate(parts) if len(parts) > 1 else parts[0]
    return flat.reshape(layout.num_blocks, layout.block)


def segment_sums(per_row: Array, starts: np.ndarray, ends: np.ndarray) -> Array:
    """(rows, ...) -> (L, ...): sums over the static, contiguous, non-empty row ranges
    [starts[l], ends[l]), without a scatter: a cumsum over rows and differences at the
    boundaries."""
    cs = jnp.cumsum(per_row, axis=0, dtype=jnp.int32)
    end = cs[ends - 1]
    before = jnp.where((starts > 0).reshape((-1,) + (1,) * (cs.ndim - 1)),
                       cs[np.maximum(starts - 1, 0)], 0)
    return end - before


def segment_totals(per_block: Array, layout: BlockLayout) -> Array:
    """(num_blocks, ...) -> (L, ...): sums over each layer's (contiguous) blocks."""
    return segment_sums(per_block, layout.starts, layout.ends)


def count_at_or_above(blocked: Array, candidates: Array) -> Array:
    """(num_blocks, C) counts of each block's codes >= each of its C candidates, as C
    sibling reductions of the same input: XLA multi-output-fuses them into one kernel that
    reads each code once and does the C compares in registers."""
    return jnp.stack([jnp.sum(blocked >= candidates[:, j:j + 1], axis=1, dtype=jnp.int32)
                      for j in range(candidates.shape[1])], axis=1)


def tie_cuts(blocked: Array, layout: BlockLayout, t: Array, above: Array | None,
             ks: Array) -> Array:
    """Local flat index of the last kept entry equal to t, per layer (``above`` =
    #{code > t} per layer, or None to count it here)."""
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


def mask_from_cut(scores: Array, t: Array, cut: Array) -> Array:
    """The kept set of one layer from its threshold code and last kept tie index."""
    code = abs_codes(scores)
    index = jax.lax.broadcasted_iota(jnp.int32, code.shape, 0)
    keep = (code > t) | ((code == t) & (index <= cut))
    return keep.reshape(scores.shape)


def blocked_search(leaves: Sequence[Array], ks, block: int,
                   thresholds: Callable) -> tuple[list[Array], Array]:
    """(masks of every leaf, their threshold codes) from ``thresholds(blocked, layout,
    k_vec) -> (t, above)`` (the k-th largest code per layer and #{code > t}, or None to
    count it here) and the blocked tie cut-off. ``ks``: one kept count per leaf (Python
    ints, or an int32 vector)."""
    leaves = [jax.lax.stop_gradient(x) for x in leaves]
    layout = BlockLayout([x.size for x in leaves], block)
    blocked = blocked_codes([abs_codes(x) for x in leaves], layout)
    k_vec = k_vector(ks)
    t, above = thresholds(blocked, layout, k_vec)
    cut = tie_cuts(blocked, layout, t, above, k_vec)
    return [mask_from_cut(x, t[i], cut[i]) for i, x in enumerate(leaves)], t


def blocked_masks(leaves: Sequence[Array], ks, block: int, thresholds: Callable) -> list[Array]:
    """The masks of ``blocked_search``."""
    return blocked_search(leaves, ks, block, thresholds)[0]


def k_vector(ks) -> Array:
    """The kept counts as an int32 vector (static ints stay constants)."""
    if isinstance(ks, (jax.Array, np.ndarray)):
        return jnp.asarray(ks, jnp.int32)
    if all(isinstance(k, (int, np.integer)) for k in ks):
        return jnp.asarray(np.array(ks, np.int32))
    return jnp.stack([jnp.asarray(k, jnp.int32) for k in ks])
