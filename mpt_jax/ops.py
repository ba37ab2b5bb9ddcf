"""biprop's straight-through estimator and the kernels built from it.

One estimator, ``ste_kernel(weight, scores, mask, count, binarize)``: a mask rule
(``mpt_jax.masks``) gives the kept set M (bool, the kernel's shape) and the count alpha
divides by; the forward pass is

* biprop (``binarize=True``):  alpha * sign(W) * M, alpha = sum(|W| M) / count, i.e. the
  mean |W| over the kept entries (NOT the reference's floor(k n) divisor, which inflates
  alpha by (D+1)/D and divides by zero for tiny layers);
* edge-popup (``binarize=False``): W * M;

and the backward pass gives the scores sign(s) * W * G (G the cotangent of the kernel;
d|s|/ds = sign(s), 0 at s == 0 as in PyTorch) and nothing to W, M or alpha (alpha is a
constant of the backward pass).

Public, stable names (other modules, tests and checks rely on them):

* ``biprop_kernel(weight, scores, keep_fraction)``   alpha * sign(W) * M, top-k rule
* ``edgepopup_kernel(weight, scores, keep_fraction)`` W * M, top-k rule (paper appendix E)
* ``threshold_kernel(weight, scores, tau, binarize)`` one layer under a global threshold
* ``masked_kernel(weight, mask, count, binarize)``   the forward alone (no estimator)
* ``binary_activation(x)``                            sign with ApproxSign grad
* ``binary_weight(weight)``                           alpha * sign(W), identity STE to W
  (the "trained binary network" baseline)
* mask rules and counts, from ``mpt_jax.masks`` / ``mpt_jax.select``: ``kept_count``,
  ``validate_keep_fraction``, ``topk_mask``, ``global_threshold``,
  ``global_threshold_for_count``, ``global_kept_count``, ``global_keep_schedule``

Ties in |scores| at the threshold: every entry strictly above it is kept, then the
entries equal to it in increasing flat index order until the kept count is reached (the
``lax.top_k`` convention); exactly the kept set of a stable descending sort.

Cost of the mask (one pass per layer, no Python loop over elements): finding the threshold
(``mpt_jax.select``: an exact radix select over the float32 bit patterns, three histogram
passes; a sort on TPU), then elementwise compares and one ``cumsum`` for ties. The
largest layer of WRN-50-2 (the 3x3 1024->1024 convs of stage 4) has 9,437,184 entries.
Measured on one H200 (jax 0.11.2, benchmarks/RESULTS.md): the masks of all 54 WRN-50-2
layers (68.8 M scores) take 7.0 ms with the per-layer radix select (7.8 ms with sorts),
3 % of a 61 ms training step at batch 256; with all layers batched (``mpt_jax.masks``,
the GPU default) the step is as fast as the dense one. On CPU (jax 0.10.2, sort-based
select, 2 shared cores) the mask of the 9.4 M-entry layer alone took 0.34 s (median of 9);
the radix select is ~65x faster than XLA:CPU's sort there.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mpt_jax import masks
# Mask rules and counts, re-exported: ``ops`` is the package's numerical core API.
from mpt_jax.masks import (SCOPE_MASK, check_keep_fraction, global_keep_schedule,  # noqa: F401
                           global_kept_count, global_threshold, global_threshold_for_count,
                           kept_count, validate_keep_fraction)
from mpt_jax.select import topk_mask  # noqa: F401

Array = jax.Array

# Name scopes of the biprop-specific work in the compiled step, so that a profile
# (benchmarks/profile_step.py) can tell the mask search (SCOPE_MASK), the kernel
# construction and the score gradient apart from the convolutions (XLA op_name metadata).
SCOPE_KERNEL = "kernel_build"
SCOPE_SCORE_GRAD = "score_grad"


# ---------------------------------------------------------------------------
# The straight-through estimator


def masked_kernel(weight: Array, mask: Array, count, binarize: bool = True) -> Array:
    """The forward pass alone: alpha * sign(W) * M with alpha = sum(|W| M) / count
    (``binarize``), else W * M. The one place alpha is computed."""
    with jax.named_scope(SCOPE_KERNEL):
        maskf = mask.astype(weight.dtype)
        if binarize:
            alpha = jnp.sum(jnp.abs(weight) * maskf) / jnp.asarray(count, weight.dtype)
            return jnp.sign(weight) * (alpha * maskf)
        return weight * maskf


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ste(weight, scores, mask, count, binarize):
    return masked_kernel(weight, mask, count, binarize)


def _ste_fwd(weight, scores, mask, count, binarize):
    return masked_kernel(weight, mask, count, binarize), (weight, scores)


def _ste_bwd(binarize, residuals, g):
    del binarize  # the same rule for biprop and edge-popup
    weight, scores = residuals
    # sign(s) * |W| * sign(W) * G = sign(s) * W * G; W, the mask, the count and alpha get
    # nothing.
    with jax.named_scope(SCOPE_SCORE_GRAD):
        d_scores = jnp.sign(scores) * weight * g
    return jnp.zeros_like(weight), d_scores.astype(scores.dtype), None, None


_ste.defvjp(_ste_fwd, _ste_bwd)


def _check_shapes(weight, scores):
    if weight.shape != scores.shape:
        raise ValueError(f"weight and scores must have the same shape, got {weight.shape} "
                         f"and {scores.shape}")


def ste_kernel(weight: Array, scores: Array, mask: Array, count, binarize: bool = True) -> Array:
    """``masked_kernel(weight, mask, count, binarize)`` with the straight-through gradient
    sign(s) * W * G to ``scores``. ``mask``: bool, the kernel's shape, from a mask rule
    (``mpt_jax.masks``); ``count``: the kept count alpha divides by (a Python int, static,
    or a traced scalar). Works for any kernel shape, under jit, grad and vmap."""
    _check_shapes(weight, scores)
    if mask.shape != weight.shape or mask.dtype != jnp.bool_:
        raise ValueError(f"mask must be a bool array of shape {weight.shape}; got "
                         f"{mask.dtype}{tuple(mask.shape)}")
    return _ste(weight, scores, jax.lax.stop_gradient(mask), count, binarize)


# ---------------------------------------------------------------------------
# Kernels under the two rules


def _topk_kernel(weight, scores, keep_fraction, binarize):
    _check_shapes(weight, scores)
    check_keep_fraction(keep_fraction)
    with jax.named_scope(SCOPE_MASK):
        mask, count = masks.topk(scores, keep_fraction)
    return ste_kernel(weight, scores, mask, count, binarize)


def biprop_kernel(weight: Array, scores: Array, keep_fraction) -> Array:
    """Effective biprop kernel alpha * sign(W) * M.

    M keeps the n - floor((1 - keep_fraction) n) entries with the largest |scores|;
    alpha = mean |W| over the kept entries. The gradient w.r.t. ``scores`` is
    sign(scores) * weight * G (G = cotangent of the result); ``weight`` gets zero.
    ``keep_fraction`` is a Python float (static) or a scalar array (no recompilation when
    it changes). Works for any kernel shape, under jit, grad and vmap.
    """
    return _topk_kernel(weight, scores, keep_fraction, True)


def edgepopup_kernel(weight: Array, scores: Array, keep_fraction) -> Array:
    """Edge-popup kernel W * M with the same score gradient sign(s) * W * G."""
    return _topk_kernel(weight, scores, keep_fraction, False)


def threshold_kernel(weight: Array, scores: Array, threshold: Array, binarize: bool = True):
    """Kernel of one layer under a global threshold: M = |s| > tau; alpha over this layer
    (0 if the layer keeps nothing). No gradient reaches tau."""
    _check_shapes(weight, scores)
    mask, count = masks.above_threshold(scores, threshold)
    return ste_kernel(weight, scores, mask, count, binarize)


# ---------------------------------------------------------------------------
# Binary activation and binarised trained weights


@jax.custom_vjp
def binary_activation(x: Array) -> Array:
    """+1 where x >= 0, -1 elsewhere; gradient 2 (1 - |clip(x, -1, 1)|) (ApproxSign).

    Project decision: +1 at exactly 0, so activations are two-valued and bit-packable (the
    reference returns 0 there).
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
