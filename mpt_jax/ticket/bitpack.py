"""Bit-packed XNOR-popcount inference for MPT-1/1 tickets (binary activations, ternary kernels).

For a binary input a in {-1, +1}^K and a ticket kernel column alpha * sign(W) * M, the
pre-activation is

    y = alpha * sum_i m_i s_i a_i = alpha * (2 * popcount(~(a XOR s) & m) - popcount(m))

where a, s, m are bit vectors (a_i = +1 <-> bit 1, s_i = sign(W_i) > 0 <-> bit 1, m the
mask). Bits are packed into uint32 words along the reduction axis K (zero-padded to a
multiple of 32: padded words have m = 0 and never count). The integer part
``2 * agree - kept`` is exact; the result is that integer times alpha, one float32 multiply.

Convolutions (explicit symmetric padding like ``layers.BipropConv``): zero padding of a
+-1 map makes padded taps contribute 0, which is not a +-1 value. Two exact treatments:

* C >= 32 (the usual case): bits packed along the channels, one XNOR-popcount per kernel
  tap on a shifted view of the packed map; padded positions are zero words (read as -1)
  and the batch-independent integer correction sum_{padded taps} sum_c t is added back.
* C < 32: im2col (``lax.conv_general_dilated_patches``) with a validity bit v per tap
  (the patch value is non-zero exactly at real taps, since activations are +-1 and padding
  is 0), ANDed into the mask per output position:
  y = alpha * (2 * popcount(~(a XOR s) & m & v) - popcount(m & v)).

Inputs must be exactly +-1 (the sign activation, which maps 0 to +1); ``is_binary`` checks
that. The first layer (image input) and layers fed by ReLU or averages are not binary and
run in float.

``packed_apply_fn(ticket)`` runs a whole ``_binact`` ticket with every binary-input layer
through this path and the others in float32; ``binary_layer_counts`` exposes the integer
counts of both paths for exactness checks.
"""
from __future__ import annotations

import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax import layers
from mpt_jax.models import probe
from mpt_jax.ticket import inference
from mpt_jax.ticket.core import SEP, Ticket

WORD_BITS = 32
_SHIFTS = np.arange(WORD_BITS, dtype=np.uint32)


@jax.jit
def pack_bits(bits: jax.Array) -> jax.Array:
    """Packs a boolean array along its last axis into uint32 words (bit j of word w = entry
    32 w + j), zero-padding the axis to a multiple of 32. Jitted: packing a kernel outside
    a compiled forward is one compilation per shape, not one per op."""
    k = bits.shape[-1]
    words = -(-k // WORD_BITS)
    pad = words * WORD_BITS - k
    b = jnp.asarray(bits, jnp.uint32)
    if pad:
        b = jnp.pad(b, [(0, 0)] * (b.ndim - 1) + [(0, pad)])
    b = b.reshape(*b.shape[:-1], words, WORD_BITS)
    # Distinct bit positions: the sum is an OR (no carries).
    return jnp.sum(b << _SHIFTS, axis=-1, dtype=jnp.uint32)


def popcount_sum(words: jax.Array) -> jax.Array:
    """Sum over the last axis of the per-word popcounts (int32)."""
    return jnp.sum(jax.lax.population_count(words).astype(jnp.int32), axis=-1)


def is_binary(x) -> bool:
    """True when every entry is exactly +1 or -1 (a valid input of the packed path)."""
    return bool(jnp.all(jnp.abs(x) == 1))


# ---------------------------------------------------------------------------
# Packed kernels


def pack_dense_kernel(ternary: np.ndarray) -> dict:
    """Packs a (K, N) kernel in {-1, 0, +1} into sign/mask words of shape (N, words)."""
    t = np.asarray(ternary)
    return dict(signs=pack_bits(jnp.asarray(t.T > 0)), mask=pack_bits(jnp.asarray(t.T != 0)),
                kept=jnp.asarray((t != 0).sum(0), jnp.int32))


def _conv_rows(ternary_hwio: np.ndarray) -> np.ndarray:
    # conv_general_dilated_patches orders patch features channel-major: (C, kh, kw).
    kh, kw, c, o = ternary_hwio.shape
    return np.transpose(ternary_hwio, (3, 2, 0, 1)).reshape(o, c * kh * kw)


def pack_conv_kernel(ternary_hwio: np.ndarray) -> dict:
    """Packs an HWIO kernel in {-1, 0, +1}.

    ``signs``/``mask``: (O, words) over the im2col patch order (C, kh, kw), used when C < 32;
    ``tap_signs``/``tap_mask``: (kh, kw, O, words) over the channels of each tap, used when
    C >= 32 (no im2col copy of the activations); ``tap_sum``: (kh, kw, O) sum of the ternary
    kernel per tap (the zero-padding correction); ``kept``: kept weights per output.
    """
    t = np.asarray(ternary_hwio)
    rows = _conv_rows(t)
    taps = np.transpose(t, (0, 1, 3, 2))  # (kh, kw, O, C)
    return dict(signs=pack_bits(jnp.asarray(rows > 0)), mask=pack_bits(jnp.asarray(rows != 0)),
                kept=jnp.asarray((rows != 0).sum(1), jnp.int32),
                tap_signs=pack_bits(jnp.asarray(taps > 0)),
                tap_mask=pack_bits(jnp.asarray(taps != 0)),
                tap_sum=jnp.asarray(taps.astype(np.int32).sum(-1), jnp.int32))


# ---------------------------------------------------------------------------
# Integer counts (sum_i m_i s_i a_i) and scaled outputs


def dense_counts(x: jax.Array, packed: Mapping[str, jax.Array]) -> jax.Array:
    """Integer pre-activations (..., N) of a +-1 input x (..., K) and a packed kernel."""
    a = pack_bits(x > 0)  # (..., words)
    agree = ~(a[..., None, :] ^ packed["signs"]) & packed["mask"]  # (..., N, words)
    return 2 * popcount_sum(agree) - packed["kept"]


def _pads(kernel_size, padding):
    return [((k - 1) // 2,) * 2 for k in kernel_size] if padding is None else \
        [(padding, padding)] * 2


def conv_counts(x: jax.Array, packed: Mapping[str, jax.Array], kernel_size, strides=(1, 1),
                padding=None) -> jax.Array:
    """Integer pre-activations (B, Ho, Wo, O) of a +-1 NHWC input and a packed HWIO kernel,
    with the explicit symmetric zero padding of ``layers.BipropConv``.

    C >= 32: activation bits are packed along the channels once, and each kernel tap XNORs
    a shifted (strided) view of the packed map with that tap's sign/mask words. Padded words
    are all-zero bits, i.e. read as -1, so they contribute -(sum of the tap's ternary
    weights); that batch-independent integer map is added back (exact). C < 32: im2col
    (``conv_general_dilated_patches``) packs C*kh*kw taps densely and a validity bit per tap
    (patch value != 0) is ANDed into the mask.
    """
    ks = tuple(kernel_size)
    st = tuple(strides)
    pads = _pads(ks, padding)
    if x.shape[-1] < WORD_BITS or "tap_signs" not in packed:
        return _conv_counts_im2col(x, packed, ks, st, pads)
    b, h, w, _ = x.shape
    ho = (h + sum(pads[0]) - ks[0]) // st[0] + 1
    wo = (w + sum(pads[1]) - ks[1]) // st[1] + 1
    a = jnp.pad(pack_bits(x > 0), ((0, 0), pads[0], pads[1], (0, 0)))  # zero words = padding
    real = jnp.pad(jnp.ones((h, w), jnp.int32), (pads[0], pads[1]))
    agree = jnp.zeros((b, ho, wo, packed["tap_signs"].shape[2]), jnp.int32)
    padded_sum = jnp.zeros((ho, wo, packed["tap_signs"].shape[2]), jnp.int32)
    for dy in range(ks[0]):
        for dx in range(ks[1]):
            rows = slice(dy, dy + (ho - 1) * st[0] + 1, st[0])
            cols = slice(dx, dx + (wo - 1) * st[1] + 1, st[1])
            view = a[:, rows, cols, None, :]  # (B, Ho, Wo, 1, words)
            hit = ~(view ^ packed["tap_signs"][dy, dx]) & packed["tap_mask"][dy, dx]
            agree = agree + popcount_sum(hit)
            is_pad = (1 - real[rows, cols])[..., None]  # (Ho, Wo, 1)
            padded_sum = padded_sum + is_pad * packed["tap_sum"][dy, dx]
    # Padded taps were read as -1 and contributed -tap_sum; they must contribute 0.
    return 2 * agree - packed["kept"] + padded_sum


def _conv_counts_im2col(x, packed, ks, st, pads):
    patches = jax.lax.conv_general_dilated_patches(
        x.astype(jnp.float32), ks, st, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    a = pack_bits(patches > 0)[..., None, :]  # (B, Ho, Wo, 1, words)
    valid = pack_bits(patches != 0)[..., None, :]
    m = packed["mask"] & valid  # (B, Ho, Wo, O, words)
    agree = ~(a ^ packed["signs"]) & m
    return 2 * popcount_sum(agree) - popcount_sum(m)


@jax.jit
def packed_dense(x, packed, alpha):
    """alpha * counts: the packed dense layer (jit-compiled)."""
    return jnp.float32(alpha) * dense_counts(x, packed).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("kernel_size", "strides", "padding"))
def packed_conv(x, packed, alpha, kernel_size, strides=(1, 1), padding=None):
    """alpha * counts: the packed conv layer (jit-compiled)."""
    counts = conv_counts(x, packed, kernel_size, strides, padding)
    return jnp.float32(alpha) * counts.astype(jnp.float32)


def float_counts(x, ternary, module) -> jax.Array:
    """The float path's integer pre-activations: the same conv/dot with the {-1,0,1} kernel
    in float32 (exact: every partial sum is an integer below 2**24)."""
    t = jnp.asarray(ternary, jnp.float32)
    if isinstance(module, layers.BipropConv):
        ks, st = _conv_geometry(module)
        return jax.lax.conv_general_dilated(
            x.astype(jnp.float32), t, st, _pads(ks, module.padding),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST)
    return jnp.dot(x.astype(jnp.float32), t, precision=jax.lax.Precision.HIGHEST)


def _conv_geometry(module):
    ks = module.kernel_size
    ks = (ks, ks) if isinstance(ks, int) else tuple(ks)
    st = module.strides
    st = (st, st) if isinstance(st, int) else tuple(st)
    return ks, st


# ---------------------------------------------------------------------------
# Whole tickets


def pack_ticket(ticket: Ticket, binary_layers=None) -> dict:
    """Packed kernels of the ticket's binary-input layers: name -> dict(signs, mask, kept,
    alpha). ``binary_layers`` defaults to the layers whose input is a sign activation."""
    if binary_layers is None:
        probed = inference.probe_layers(ticket)
        binary_layers = [n for n, p in probed.items() if p["binary_input"]]
    out = {}
    for lt in ticket.layers:
        if lt.name not in binary_layers:
            continue
        t = lt.ternary()
        packed = pack_conv_kernel(t) if t.ndim == 4 else pack_dense_kernel(t)
        out[lt.name] = dict(packed, alpha=jnp.float32(lt.alpha))
    return out


def _layer_call(module, x, p):
    if isinstance(module, layers.BipropConv):
        ks, st = _conv_geometry(module)
        counts = conv_counts(x, p, ks, st, module.padding)
    else:
        lead = x.shape[:-1]
        counts = dense_counts(x.reshape(-1, x.shape[-1]), p).reshape(*lead, -1)
    return counts


def _packed_and_ternary(ticket: Ticket):
    packed = pack_ticket(ticket)
    ternary = {lt.name: jnp.asarray(lt.ternary(), jnp.float32) for lt in ticket.layers
               if lt.name in packed}
    return packed, ternary


def packed_apply_fn(ticket: Ticket, path: str = "packed"):
    """jitted ``images -> logits`` running the binary-input layers of ``ticket`` through
    the XNOR-popcount path (``path="packed"``) or through the float ternary-kernel
    integer path (``path="float"``, the exact float reference of the same computation).
    Other layers run in float32 as in ``inference.predict_fn``."""
    if path not in ("packed", "float"):
        raise ValueError(f"path must be 'packed' or 'float', got {path!r}")
    model, variables = inference.inference_model(ticket)
    packed, ternary = _packed_and_ternary(ticket)

    def run(variables, packed, ternary, images):
        def replace(module, call, args, kwargs):
            name = SEP.join(module.path)
            if name not in packed:
                return call(*args, **kwargs)
            x = args[0]
            if path == "packed":
                counts = _layer_call(module, x, packed[name]).astype(jnp.float32)
            else:
                counts = float_counts(x, ternary[name], module)
            return (packed[name]["alpha"] * counts).astype(module.dtype)

        with probe.intercept_layers(replace):
            return model.apply(variables, images, train=False)

    jitted = jax.jit(run)
    return lambda images: jitted(variables, packed, ternary, images)


def binary_layer_counts(ticket: Ticket, images) -> dict[str, tuple[jax.Array, jax.Array]]:
    """For every binary-input layer: (packed integer counts, float-path counts), both
    computed on the inputs the layer receives in the ticket's (float) forward pass."""
    model, variables = inference.inference_model(ticket)
    packed, ternary = _packed_and_ternary(ticket)

    @jax.jit
    def run(variables, packed, ternary, images):
        found = {}

        def record(module, call, args, kwargs):
            name = SEP.join(module.path)
            if name in packed:
                x = args[0]
                found[name] = (_layer_call(module, x, packed[name]),
                               float_counts(x, ternary[name], module))
            return call(*args, **kwargs)

        with probe.intercept_layers(record):
            model.apply(variables, images, train=False)
        return found

    return run(variables, packed, ternary, images)


def packed_weight_bytes(ticket: Ticket) -> dict:
    """Bytes in memory of the binary-input layers' weights: packed (sign + mask words +
    alpha) vs float32."""
    packed = pack_ticket(ticket)
    pk = sum(int(p["signs"].nbytes + p["mask"].nbytes + 4) for p in packed.values())
    fl = sum(4 * int(np.prod(lt.shape)) for lt in ticket.layers if lt.name in packed)
    return dict(packed_bytes=pk, float32_bytes=fl, layers=len(packed))
