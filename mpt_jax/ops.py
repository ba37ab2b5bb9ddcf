"""biprop's numerical core: score masks, binarised kernels and straight-through estimators.

Public, stable names (other modules, tests and checks rely on them):

* ``biprop_kernel(weight, scores, keep_fraction)``   alpha * sign(W) * M      (SPEC 1.2-1.5)
* ``edgepopup_kernel(weight, scores, keep_fraction)`` W * M                   (paper appendix E)
* ``binary_activation(x)``                            sign with ApproxSign grad (SPEC 2.1)
* ``binary_weight(weight)``                           alpha * sign(W), identity STE to W
  (the "trained binary network" baseline)
* global pruning (SPEC 1.7): ``global_threshold``, ``threshold_kernel``, ``global_keep_schedule``
* helpers: ``kept_count``, ``validate_keep_fraction``, ``topk_mask``

Conventions (SPEC decisions table):

* ``keep_fraction`` is the fraction of weights KEPT (0.2 = "80 % pruned").
* kept count = n - floor((1 - keep_fraction) * n), evaluated in float64 on the host.
* alpha = mean |W| over the entries actually kept (NOT the reference's floor(k n)
  divisor, which inflates alpha by (D+1)/D and divides by zero for tiny layers).
* Ties in |scores| at the threshold: every entry strictly above it is kept, then the
  entries equal to it in increasing flat index order until the kept count is reached
  (the ``lax.top_k`` convention). This is exactly the kept set of a stable descending sort.
* The gradient that reaches the scores is sign(s) * W * G (the reference HEAD form); no
  gradient reaches W or alpha (alpha is a constant of the backward pass).

Cost of the mask (one pass per layer, no Python loop over elements): finding the threshold
(``mpt_jax.select.kth_largest``: an exact radix select over the float32 bit patterns, three
histogram passes; a sort on TPU), then elementwise compares and one ``cumsum`` for ties.
The largest layer of WRN-50-2 (the 3x3 1024->1024 convs of stage 4) has 9,437,184 entries.
Measured on one H200 (jax 0.11.2, benchmarks/RESULTS.md): the masks of all 54 WRN-50-2
layers (68.8 M scores) take 7.0 ms with the per-layer radix select (7.8 ms with sorts),
3 % of a 61 ms training step at batch 256; with all layers batched (``mpt_jax.masks``,
the GPU default) the step is as fast as the dense one. On CPU (jax 0.10.2, sort-based
select, 2 shared cores) the mask of the 9.4 M-entry layer alone took 0.34 s (median of 9);
the radix select is ~65x faster than XLA:CPU's sort there.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# ---------------------------------------------------------------------------
# Host-side (static) helpers


def validate_keep_fraction(keep_fraction: Any, name: str = "keep_fraction") -> float:
    """Returns ``keep_fraction`` as a float, or raises a ValueError that says how to fix it."""
    # Strings and bools are rejected even where float() would accept them ("0.5", True):
    # they are config mistakes, not keep fractions.
    if isinstance(keep_fraction, (str, bytes, bool, np.bool_)):
        raise ValueError(
            f"{name} must be a number in (0, 1] (the fraction of weights KEPT, e.g. 0.2 for "
            f"'80 % pruned'), not a {type(keep_fraction).__name__}; got {keep_fraction!r}")
    try:
        value = float(keep_fraction)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a number in (0, 1] (the fraction of weights KEPT, e.g. 0.2 for "
            f"'80 % pruned'); got {keep_fraction!r}") from None
    if not (0.0 < value <= 1.0):  # also rejects NaN
        raise ValueError(
            f"{name} must be in (0, 1] (the fraction of weights KEPT, e.g. 0.2 for "
            f"'80 % pruned'); got {keep_fraction!r}")
    return value


def kept_count(n: int, keep_fraction: float) -> int:
    """Number of entries a layer of ``n`` weights keeps: n - floor((1 - k) n) (SPEC 1.2).

    Evaluated in float64 exactly as the reference does, so e.g. (n, k) = (2560, 0.8) keeps
    2049 entries, because 1 - 0.8 = 0.19999999999999996 in float64.
    """
    keep_fraction = validate_keep_fraction(keep_fraction)
    if n <= 0:
        raise ValueError(f"a layer must have at least one weight, got n={n}")
    return int(n - math.floor((1.0 - keep_fraction) * n))


# ---------------------------------------------------------------------------
# Mask


def _kth_largest(magnitudes: Array, kept: Array | int) -> Array:
    # Indirection so the exact radix select (mpt_jax.select) can replace the sort
    # without touching the mask logic.
    from mpt_jax import select  # local import: select imports this module

    return select.kth_largest(magnitudes, kept)


def topk_mask(magnitudes: Array, kept: Array | int) -> Array:
    """Boolean mask (same shape as ``magnitudes``) of its ``kept`` largest entries.

    Exactly ``kept`` entries are True, ties at the threshold resolved to the lowest flat
    indices. ``kept`` may be a Python int or a traced int32 scalar (so a changing keep
    fraction does not recompile), with 1 <= kept <= magnitudes.size.
    """
    shape = magnitudes.shape
    if isinstance(kept, (int, np.integer)) and not 1 <= kept <= magnitudes.size:
        raise ValueError(f"kept must be in [1, {magnitudes.size}] (the number of entries to keep), "
                         f"got {kept}")
    flat = magnitudes.reshape(-1)
    threshold = _kth_largest(flat, kept)
    above = flat > threshold
    ties = flat == threshold
    missing = jnp.asarray(kept, jnp.int32) - jnp.sum(above, dtype=jnp.int32)
    tie_rank = jnp.cumsum(ties, dtype=jnp.int32)  # 1-based rank among the tied entries
    mask = above | (ties & (tie_rank <= missing))
    return mask.reshape(shape)


def _kept_as_array(n: int, keep_fraction) -> Array | int:
    """Static int kept count for host numbers; a traced int32 for jax.Array keep fractions.

    A jax.Array keep fraction (traced or not: eager and jitted calls must agree) is turned
    into a count on device, in the array's own precision. With a float64 array (x64
    enabled) that is exactly the host formula. With float32 it can differ by ONE entry
    from the Python-float count whenever (1 - k) n lies within float32 rounding of an
    integer, because float32(k) is not float64(k): e.g. (n, k) = (180, 0.3) keeps 54 with
    jnp.float32(0.3) but 55 with 0.3 (SPEC 1.2's float64 rule); about 7 % of (layer size,
    k = 0.05 ... 0.95) pairs differ. For exact SPEC 1.2 parity pass a Python float (the
    layers do) or a float64 array. Exact float64 emulation on device is not attempted:
    XLA rewrites x / c into x * (1 / c), and TPUs have no IEEE float64.
    """
    if not isinstance(keep_fraction, jax.Array):
        return kept_count(n, validate_keep_fraction(keep_fraction))
    k = keep_fraction
    if not jnp.issubdtype(k.dtype, jnp.floating):
        k = k.astype(jnp.float32)
    # Clamped to [1, n] so the mask is never empty (a traced value cannot raise).
    kept = n - jnp.floor((1.0 - k) * n).astype(jnp.int32)
    return jnp.clip(kept, 1, n)


def _check_keep_fraction(keep_fraction) -> None:
    """Validates host values and concrete (non-traced) arrays; traced values cannot raise."""
    if isinstance(keep_fraction, jax.core.Tracer):
        return
    if isinstance(keep_fraction, (jax.Array, np.ndarray)):
        if keep_fraction.shape != ():
            raise ValueError(f"keep_fraction must be a scalar, got an array of shape "
                             f"{keep_fraction.shape}")
        keep_fraction = keep_fraction.item()
    validate_keep_fraction(keep_fraction)


# ---------------------------------------------------------------------------
# Score-masked kernels with straight-through score gradients (SPEC 1.5)

# Name scopes of the biprop-specific work in the compiled step, so that a profile
# (benchmarks/profile_step.py) can tell the mask search, the kernel construction and the
# score gradient apart from the convolutions (they appear in XLA's op_name metadata).
SCOPE_MASK = "mask_search"
SCOPE_KERNEL = "kernel_build"
SCOPE_SCORE_GRAD = "score_grad"


def _sign_abs_grad(scores: Array) -> Array:
    # d|s|/ds = sign(s), with 0 at s == 0 as in PyTorch (SPEC 8 item 6).
    return jnp.sign(scores)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _masked_kernel(weight: Array, scores: Array, kept: Array, binarize: bool) -> Array:
    with jax.named_scope(SCOPE_MASK):
        mask = topk_mask(jnp.abs(scores), kept)
    return _apply_mask(weight, mask, kept, binarize)


def _apply_mask(weight, mask, kept, binarize):
    with jax.named_scope(SCOPE_KERNEL):
        maskf = mask.astype(weight.dtype)
        if binarize:
            abs_w = jnp.abs(weight)
            alpha = jnp.sum(abs_w * maskf) / jnp.asarray(kept, weight.dtype)
            return jnp.sign(weight) * (alpha * maskf)
        return weight * maskf


def _masked_kernel_fwd(weight, scores, kept, binarize):
    return _masked_kernel(weight, scores, kept, binarize), (weight, scores)


def _masked_kernel_bwd(binarize, residuals, g):
    weight, scores = residuals
    # sign(s) * |W| * sign(W) * G = sign(s) * W * G; W and alpha receive nothing.
    with jax.named_scope(SCOPE_SCORE_GRAD):
        d_scores = _sign_abs_grad(scores) * weight * g
    return jnp.zeros_like(weight), d_scores.astype(scores.dtype), None


_masked_kernel.defvjp(_masked_kernel_fwd, _masked_kernel_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _kernel_from_mask(weight, scores, mask, kept, binarize):
    return _apply_mask(weight, mask, kept, binarize)


def _kernel_from_mask_fwd(weight, scores, mask, kept, binarize):
    return _apply_mask(weight, mask, kept, binarize), (weight, scores)


def _kernel_from_mask_bwd(binarize, residuals, g):
    d_weight, d_scores, _ = _masked_kernel_bwd(binarize, residuals, g)
    return d_weight, d_scores, None, None  # nothing to the (bool) mask or the count


_kernel_from_mask.defvjp(_kernel_from_mask_fwd, _kernel_from_mask_bwd)


def kernel_from_mask(weight: Array, scores: Array, mask: Array, kept: int,
                     binarize: bool) -> Array:
    """biprop_kernel / edgepopup_kernel with the top-k ``mask`` already computed
    (mpt_jax.masks, all layers at once): same forward (alpha = sum |W| M / kept) and the
    same straight-through gradient sign(s) * W * G to ``scores``; ``kept`` is the layer's
    kept count (= mask.sum(), static)."""
    _check_shapes(weight, scores)
    if mask.shape != weight.shape or mask.dtype != jnp.bool_:
        raise ValueError(f"mask must be a bool array of shape {weight.shape}; got "
                         f"{mask.dtype}{tuple(mask.shape)}")
    return _kernel_from_mask(weight, scores, jax.lax.stop_gradient(mask), kept, binarize)


def _check_shapes(weight, scores):
    if weight.shape != scores.shape:
        raise ValueError(f"weight and scores must have the same shape, got {weight.shape} "
                         f"and {scores.shape}")


def biprop_kernel(weight: Array, scores: Array, keep_fraction) -> Array:
    """Effective biprop kernel alpha * sign(W) * M (SPEC 1.2-1.4).

    M keeps the n - floor((1 - keep_fraction) n) entries with the largest |scores|;
    alpha = mean |W| over the kept entries. The gradient w.r.t. ``scores`` is
    sign(scores) * weight * G (G = cotangent of the result); ``weight`` gets zero.
    ``keep_fraction`` is a Python float (static) or a scalar array (no recompilation when
    it changes). Works for any kernel shape, under jit, grad and vmap.
    """
    _check_shapes(weight, scores)
    _check_keep_fraction(keep_fraction)
    kept = _kept_as_array(weight.size, keep_fraction)
    return _masked_kernel(weight, scores, kept, True)


def edgepopup_kernel(weight: Array, scores: Array, keep_fraction) -> Array:
    """Edge-popup kernel W * M with the same score gradient sign(s) * W * G."""
    _check_shapes(weight, scores)
    _check_keep_fraction(keep_fraction)
    kept = _kept_as_array(weight.size, keep_fraction)
    return _masked_kernel(weight, scores, kept, False)


# ---------------------------------------------------------------------------
# Global pruning (SPEC 1.7)


def global_kept_count(total: int, keep_fraction: float) -> int:
    """Entries kept network-wide: N - floor((1 - k) N), float64 on the host."""
    return kept_count(total, keep_fraction)


def global_threshold(score_leaves: Sequence[Array], keep_fraction) -> Array:
    """One threshold tau over the |scores| of all layers (SPEC 1.7).

    tau = z[p - 1] with z the ascending |scores| of every layer and p = floor((1 - k) N)
    the number of pruned entries; layers then keep |s| > tau (strict). keep_fraction == 1
    returns -inf (nothing pruned; the reference's p = 0 case pruned everything, a bug).
    ``keep_fraction`` may be a Python float or a traced scalar (for the ramp schedule; a
    float32 one can miss the float64 count by one entry, see ``_kept_as_array``: for exact
    counts compute them on the host and call ``global_threshold_for_count``, as training
    does). No gradient flows through tau.
    """
    _check_keep_fraction(keep_fraction)
    total = _total_size(score_leaves)
    return global_threshold_for_count(score_leaves, _kept_as_array(total, keep_fraction))


def _total_size(score_leaves: Sequence[Array]) -> int:
    if not score_leaves:
        raise ValueError("global_threshold needs at least one score array, got none")
    return sum(math.prod(jnp.shape(s)) for s in score_leaves)


def global_threshold_for_count(score_leaves: Sequence[Array], kept) -> Array:
    """tau of SPEC 1.7 for a network-wide kept count ``kept`` = N - p (a Python int, or an
    int32 scalar array so that a changing count does not recompile; clamped to [1, N])."""
    total = _total_size(score_leaves)
    if isinstance(kept, (int, np.integer)) and not 1 <= kept <= total:
        raise ValueError(f"kept must be in [1, {total}] (entries kept network-wide), got {kept}")
    with jax.named_scope(SCOPE_MASK):
        z = jnp.concatenate([jnp.abs(jax.lax.stop_gradient(s)).reshape(-1)
                             for s in score_leaves])
        if isinstance(kept, (int, np.integer)):
            if kept == total:
                return jnp.array(-jnp.inf, z.dtype)
            return _kth_largest(z, int(kept) + 1)  # the p-th smallest = the (kept+1)-th largest
        kept = jnp.clip(jnp.asarray(kept, jnp.int32), 1, total)
        tau = _kth_largest(z, jnp.minimum(kept + 1, total))
        return jnp.where(kept == total, -jnp.inf, tau).astype(z.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _threshold_kernel(weight, scores, threshold, binarize):
    with jax.named_scope(SCOPE_KERNEL):
        mask = jnp.abs(scores) > threshold
        maskf = mask.astype(weight.dtype)
        if binarize:
            count = jnp.sum(maskf)
            # A layer that keeps nothing gets alpha = 0 (the reference yields 0/0 = NaN).
            alpha = jnp.sum(jnp.abs(weight) * maskf) / jnp.maximum(count, 1.0)
            return jnp.sign(weight) * (alpha * maskf)
        return weight * maskf


def _threshold_kernel_fwd(weight, scores, threshold, binarize):
    return _threshold_kernel(weight, scores, threshold, binarize), (weight, scores, threshold)


def _threshold_kernel_bwd(binarize, residuals, g):
    weight, scores, threshold = residuals
    with jax.named_scope(SCOPE_SCORE_GRAD):
        d_scores = _sign_abs_grad(scores) * weight * g
    return jnp.zeros_like(weight), d_scores.astype(scores.dtype), jnp.zeros_like(threshold)


_threshold_kernel.defvjp(_threshold_kernel_fwd, _threshold_kernel_bwd)


def threshold_kernel(weight: Array, scores: Array, threshold: Array, binarize: bool = True):
    """Kernel of one layer under a global threshold: m = |s| > tau; alpha over this layer."""
    _check_shapes(weight, scores)
    return _threshold_kernel(weight, scores, jnp.asarray(threshold, scores.dtype), binarize)


def global_keep_schedule(epoch: int, final_keep_fraction: float, ramp_epochs: int = 10,
                         current: float | None = None) -> float:
    """Keep fraction k_t at the start of ``epoch`` under the global-pruning ramp (SPEC 1.7).

    If the final keep fraction p <= 0.5, k_t decays cubically from 0.5 at epoch 0 to p at
    ``ramp_epochs``: k_t = p + (0.5 - p) (1 - e / E_p)^3. If p > 0.5 no ramp applies.
    (The reference keys the condition on the mutated current value; for p <= 0.5 the
    current value is always <= 0.5 so both readings agree.)
    """
    p = validate_keep_fraction(final_keep_fraction)
    if ramp_epochs <= 0 or p > 0.5:
        return p
    if epoch >= ramp_epochs:
        return p
    if current is not None and current > 0.5:
        return current
    decay = (1.0 - epoch / ramp_epochs) ** 3
    return p + (0.5 - p) * decay


# ---------------------------------------------------------------------------
# Binary activation (SPEC 2.1) and binarised trained weights


@jax.custom_vjp
def binary_activation(x: Array) -> Array:
    """+1 where x >= 0, -1 elsewhere; gradient 2 (1 - |clip(x, -1, 1)|) (ApproxSign).

    Project decision (SPEC 8 item 27): +1 at exactly 0, so activations are two-valued and
    bit-packable (the reference returns 0 there).
    """
    return jnp.where(x >= 0, 1, -1).astype(x.dtype)


def _binary_activation_fwd(x):
    return binary_activation(x), x


def _binary_activation_bwd(x, g):
    surrogate = 2.0 * (1.0 - jnp.abs(jnp.clip(x, -1.0, 1.0)))
    return (g * surrogate.astype(g.dtype),)


binary_activation.defvjp(_binary_activation_fwd, _binary_activation_bwd)


@jax.custom_vjp
def binary_weight(weight: Array) -> Array:
    """alpha * sign(W) with alpha = mean |W| of the layer; straight-through (identity)
    gradient to W, alpha treated as a constant (BWN / XNOR-Net weight binarisation)."""
    return jnp.mean(jnp.abs(weight)) * jnp.sign(weight)


binary_weight.defvjp(lambda w: (binary_weight(w), None), lambda _, g: (g,))
