"""Exact radix select whose histograms are counted block by block in a Pallas kernel.

The scatter radix select (``mpt_jax.select``, method "radix_many") spends most of its time in
its first pass: one global atomic add per score (2.2 of 3.4 ms of WRN-34-2's mask search on
an H100, benchmarks/RESULTS.md). Here every histogram pass is one Pallas kernel in which a
program instance counts its own share of one layer's codes into a local histogram, with no
atomics at all, and writes it once; a cumsum over the (few) program histograms of each
layer gives the layer's histogram. The digit search around it is the radix select's.

Counting without scatters: a D-bit digit d is split into a high part h (ceil(D/2) bits) and
a low part l; then

    hist[h, l] = #{entries with digit (h, l)} = (onehot(h_i) over i)^T @ onehot(l_i)

an (H x chunk) @ (chunk x L) matrix product of 0/1 matrices, which runs on the tensor cores
(bf16 operands, float32 accumulation: exact, every partial sum is an integer below 2^24).
An entry costs H + L compares (32 for an 8-bit digit) instead of an atomic; entries that do
not match the prefix found so far get an all-zero row. Default digits: 7, 8, 8, 8 bits
(bits 30..0 of the code, four passes).

* ``digit_histograms(codes, plan, prefix, shift, width)``: the kernel, for a program table
  (``ProgramPlan``: program p counts ``chunks[p]`` chunks of ``CHUNK`` codes from ``start[p]``);
* ``pallas_thresholds(blocked, layout, ks, digits)``: k-th largest code of every layer of a
  ``select_blocks`` layout and #{code > it} (for the tie cut);
* ``topk_masks_pallas(leaves, ks, block)``: the kept sets of all layers (the batched mask
  method "radix_pallas" of ``mpt_jax.select_many``);
* ``kth_largest_pallas(values, k)``: the select method for one flat array.

Backends: on a GPU the kernel is compiled by Pallas' Triton backend (chosen explicitly:
newer JAX defaults to Mosaic GPU); everywhere else it runs in Pallas' interpret mode (an
XLA loop over the program instances: exact, for tests, slow). Results are identical on
every backend and for every knob (digits, chunk, block, group): only the speed changes.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from mpt_jax import select, select_blocks

Array = jax.Array

DIGITS = (7, 8, 8, 8)   # bits 30..0, most significant first
CHUNK = 512             # codes per one-hot tile (a power of two >= 16)
GROUP = 64              # chunks per program instance (at most; a program stays in one layer)
MIN_SIDE = 16           # the tensor cores' smallest matrix side
NUM_WARPS = 4


def check_digits(digits: Sequence[int]) -> tuple[int, ...]:
    """``digits`` if they cover bits 30..0 with 1..12-bit digits, else a ValueError."""
    digits = tuple(int(d) for d in digits)
    if sum(digits) != 31 or not all(1 <= d <= 12 for d in digits):
        raise ValueError(f"pallas digit widths must be 1..12 bits each and sum to 31; "
                         f"got {digits}")
    return digits


def _split(width: int) -> tuple[int, int]:
    """(high bits, low bits) of a digit."""
    high = (width + 1) // 2
    return high, width - high


class ProgramPlan:
    """Static program table over flat codes laid out in CHUNK-multiples per layer: program
    p counts ``chunks[p]`` chunks from ``start[p]``, all of layer ``layer[p]``."""

    def __init__(self, layout: select_blocks.BlockLayout, chunk: int = CHUNK,
                 group: int = GROUP):
        if layout.block % chunk:
            raise ValueError(f"the layout block ({layout.block}) must be a multiple of the "
                             f"chunk ({chunk})")
        if chunk * group > 1 << 24:  # a program's float32 counts must stay exact
            raise ValueError(f"chunk * group must be at most 2^24; got {chunk} * {group}")
        per_block = layout.block // chunk
        start, chunks, layer = [], [], []
        for l, (b0, nb) in enumerate(zip(layout.starts, layout.counts)):
            first, total = int(b0) * per_block, int(nb) * per_block
            for c in range(0, total, group):
                start.append((first + c) * chunk)
                chunks.append(min(group, total - c))
                layer.append(l)
        self.chunk = chunk
        self.start = np.array(start, np.int32)
        self.chunks = np.array(chunks, np.int32)
        self.layer = np.array(layer, np.int32)
        # Programs of a layer are contiguous: layer l owns programs [first[l], end[l]).
        self.end = np.cumsum(np.bincount(self.layer, minlength=len(layout.sizes))).astype(np.int32)
        self.first = np.concatenate([[0], self.end[:-1]]).astype(np.int32)


def _kernel(codes_ref, start_ref, chunks_ref, prefix_ref, out_ref, *, shift: int,
            width: int, chunk: int, rows: int, cols: int):
    """One program: the (rows x cols) histogram of the digit (code >> shift) & (2^width - 1)
    over its codes that are >= 0 and whose bits above the digit equal its prefix."""
    p = pl.program_id(0)
    start, num_chunks, prefix = start_ref[p], chunks_ref[p], prefix_ref[p]
    low = _split(width)[1]
    row_ids = jax.lax.broadcasted_iota(jnp.int32, (rows, chunk), 0)
    col_ids = jax.lax.broadcasted_iota(jnp.int32, (chunk, cols), 1)

    def body(c, acc):
        x = codes_ref[pl.ds(pl.multiple_of(start + c * chunk, chunk), chunk)]
        # 31 - (shift + width) >= 0; for x >= 0 the shift is exact (no sign bits).
        match = (x >= 0) & ((x >> (shift + width)) == prefix)
        digit = (x >> shift) & ((1 << width) - 1)
        hi = jnp.where(match, digit >> low, -1)  # -1: an all-zero one-hot row
        lo = digit & ((1 << low) - 1)
        onehot_hi = (row_ids == hi[None, :]).astype(jnp.bfloat16)          # (rows, chunk)
        onehot_lo = (lo[:, None] == col_ids).astype(jnp.bfloat16)          # (chunk, cols)
        return acc + jnp.dot(onehot_hi, onehot_lo, preferred_element_type=jnp.float32)

    acc = jax.lax.fori_loop(0, num_chunks, body, jnp.zeros((rows, cols), jnp.float32))
    out_ref[0] = acc.astype(jnp.int32)


def digit_histograms(codes: Array, plan: ProgramPlan, prefix: Array, shift: int,
                     width: int, interpret: bool | None = None) -> Array:
    """(num_programs, 2^width) int32: every program's histogram of the digit at ``shift``
    over its codes (flat int32, padding < 0) whose higher bits equal ``prefix[p]``."""
    high, low = _split(width)
    rows, cols = max(1 << high, MIN_SIDE), max(1 << low, MIN_SIDE)
    num = len(plan.start)
    kernel = functools.partial(_kernel, shift=shift, width=width, chunk=plan.chunk,
                               rows=rows, cols=cols)

    def call(interpreted: bool, *args):
        params = None if interpreted else pltriton.CompilerParams(num_warps=NUM_WARPS,
                                                                  num_stages=1)
        return pl.pallas_call(
            kernel, grid=(num,), in_specs=[pl.no_block_spec] * 4,
            out_specs=pl.BlockSpec((1, rows, cols), lambda p: (p, 0, 0)),
            out_shape=jax.ShapeDtypeStruct((num, rows, cols), jnp.int32),
            interpret=interpreted, compiler_params=params, name=f"digit_histogram_{shift}",
        )(*args)

    args = (codes, jnp.asarray(plan.start), jnp.asarray(plan.chunks), prefix.astype(jnp.int32))
    if interpret is None:  # per lowering platform: Triton on GPUs, the interpreter elsewhere
        out = jax.lax.platform_dependent(*args, cuda=functools.partial(call, False),
                                         rocm=functools.partial(call, False),
                                         default=functools.partial(call, True))
    else:
        out = call(interpret, *args)
    return out[:, :1 << high, :1 << low].reshape(num, 1 << width)


def pallas_thresholds(blocked: Array, layout: select_blocks.BlockLayout, ks: Array,
                      digits: Sequence[int] = DIGITS, chunk: int = CHUNK,
                      group: int = GROUP, interpret: bool | None = None):
    """(t, above): the k-th largest code of every layer of the blocked codes and the number
    of its codes above it, one Pallas histogram kernel per digit."""
    plan = ProgramPlan(layout, chunk, group)
    codes = blocked.reshape(-1)
    num = len(layout.sizes)
    prefix = jnp.zeros((num,), jnp.int32)
    above = jnp.zeros((num,), jnp.int32)
    for shift, width in select.digit_plan(check_digits(digits)):
        hist = digit_histograms(codes, plan, prefix[plan.layer], shift, width, interpret)
        totals = select_blocks.segment_sums(hist, plan.first, plan.end)  # (L, 2^width)
        digit, higher = select.pick_digit(select.suffix_counts(totals), ks)
        ks = ks - higher
        above = above + higher
        prefix = (prefix << width) | digit
    return prefix, above


def layout_block(block: int, chunk: int = CHUNK) -> int:
    """The blocked layout's block for this method: ``block`` rounded up to a power of two
    and at least one chunk (the kernel reads whole chunks of one layer)."""
    return max(chunk, 1 << max(int(block) - 1, 0).bit_length())


def topk_masks_pallas(leaves: Sequence[Array], ks, block: int = 2048) -> list[Array]:
    """The kept sets of every leaf (``select_many.topk_masks`` semantics: the ks[i] largest
    |leaves[i]|, ties to the lowest flat indices), thresholds by ``pallas_thresholds``."""
    return select_blocks.blocked_masks(
        leaves, ks, layout_block(block),
        lambda blocked, layout, k_vec: pallas_thresholds(blocked, layout, k_vec))


def kth_largest_pallas(values: Array, k, *, digits: Sequence[int] = DIGITS,
                       interpret: bool | None = None) -> Array:
    """Value of the k-th largest entry of flat, finite, non-negative ``values`` (the
    ``select.kth_largest`` contract: exact; ``k`` a Python int or a traced int32)."""
    values = select.check_values(values)
    n = values.shape[0]
    k = jnp.asarray(select.check_k(k, n), jnp.int32)
    if values.dtype == jnp.float64:  # 64-bit codes: not this kernel's
        return select.kth_largest_sort(values, k)
    layout = select_blocks.BlockLayout([n], CHUNK)
    blocked = select_blocks.blocked_codes([select.float_codes(values).astype(jnp.int32)],
                                          layout)
    t, _ = pallas_thresholds(blocked, layout, k[None], digits, interpret=interpret)
    return select.from_codes(t[0], values.dtype)
