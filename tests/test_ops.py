"""mpt_jax.ops against independent float64 NumPy references (the rules of docs/method.md).

Every reference below is written from the method's equations, not from ops.py: the kept
set is the head of a stable descending argsort of |s|, alpha the mean |W| over it, the score
gradient sign(s) * W * G. All calls go through the public ops (biprop_kernel, topk_mask, ...) so
they also check whatever mpt_jax.select uses to find the threshold.
"""
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax import masks, ops


# ---------------------------------------------------------------------------
# float64 NumPy references (mask, alpha, score gradient, global threshold)


def ref_kept(n, k):
    return n - math.floor((1.0 - k) * n)  # docs/decisions.md#kept-count; Python floats are float64


def ref_mask(scores, kept):
    a = np.abs(np.asarray(scores, np.float64)).reshape(-1)
    order = np.argsort(-a, kind="stable")  # ties: lowest flat index first
    mask = np.zeros(a.size, bool)
    mask[order[:kept]] = True
    return mask.reshape(np.shape(scores))


def ref_biprop(weight, scores, k):
    w = np.asarray(weight, np.float64)
    m = ref_mask(scores, ref_kept(w.size, k))
    alpha = np.abs(w)[m].mean()  # true kept count (docs/decisions.md#alpha)
    return alpha * np.sign(w) * m, m, alpha


def ref_edgepopup(weight, scores, k):
    w = np.asarray(weight, np.float64)
    m = ref_mask(scores, ref_kept(w.size, k))
    return w * m, m


def ref_score_grad(weight, scores, g):
    return (np.sign(np.asarray(scores, np.float64)) * np.asarray(weight, np.float64)
            * np.asarray(g, np.float64))


def ref_global_threshold(leaves, k):
    z = np.sort(np.concatenate([np.abs(np.asarray(s, np.float64)).ravel() for s in leaves]))
    p = math.floor((1.0 - k) * z.size)
    return -np.inf if p == 0 else z[p - 1]


def ref_threshold_kernel(weight, scores, tau, binarize=True):
    w = np.asarray(weight, np.float64)
    m = np.abs(np.asarray(scores, np.float64)) > tau
    if not binarize:
        return w * m
    alpha = np.abs(w)[m].mean() if m.any() else 0.0
    return alpha * np.sign(w) * m


def _draw(shape, seed, integer_scores=False):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape).astype(np.float32)
    if integer_scores:  # heavy ties in |s|, including exact zeros
        s = rng.integers(-3, 4, size=shape).astype(np.float32)
    else:
        s = rng.uniform(-1, 1, size=shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    return w, s, g


# Both top-k kernels (a Python-float keep fraction, static) and their pullbacks as one
# compiled program per (shape, k), shared by the biprop and edge-popup tests: op by op,
# every primitive of every new shape would be compiled on its own.
@functools.partial(jax.jit, static_argnums=2)
def _jit_vjps(w, s, k, g):
    found = {}
    for fn in (ops.biprop_kernel, ops.edgepopup_kernel):
        out, pullback = jax.vjp(lambda w_, s_, fn=fn: fn(w_, s_, k), w, s)
        found[fn.__name__] = (out, *pullback(g))
    return found


# The Python-float keep fraction is static (the host count); the float32 array is traced
# (the count on device). Module level, so parametrisations of one size share compiles.
_biprop_static_k = jax.jit(ops.biprop_kernel, static_argnums=2)
_biprop_traced_k = jax.jit(ops.biprop_kernel)


def _vjp(fn, w, s, k, g):
    found = _jit_vjps(jnp.asarray(w), jnp.asarray(s), k, jnp.asarray(g))
    out, dw, ds = found[fn.__name__]
    return np.asarray(out), np.asarray(dw), np.asarray(ds)


# Shapes: 2-D dense, 4-D HWIO conv, one element, tiny layers.
_rng = np.random.default_rng(1234)
CASES = [
    ((17, 9), float(_rng.uniform(0.05, 0.95))),
    ((3, 3, 4, 8), float(_rng.uniform(0.05, 0.95))),
    ((3, 3, 4, 8), 0.2),
    ((5, 3, 3, 2), float(_rng.uniform(0.05, 0.95))),
    ((1,), 1.0),
    ((1, 1), 0.3),
    ((2, 3), 0.5),
    ((1, 1, 1, 2), 0.01),
    ((7, 11), 1.0),
    ((3, 3, 3, 16), 1.0 / (2 * 3 * 3 * 3 * 16)),  # exactly one weight kept
]


@pytest.mark.parametrize("shape,k", CASES)
@pytest.mark.parametrize("integer_scores", [False, True])
def test_biprop_kernel_value_and_grad(shape, k, integer_scores):
    seed = hash((shape, integer_scores)) % 2**32
    w, s, g = _draw(shape, seed=seed, integer_scores=integer_scores)
    out, dw, ds = _vjp(ops.biprop_kernel, w, s, k, g)
    want, m, alpha = ref_biprop(w, s, k)
    np.testing.assert_array_equal(out != 0, m)  # W is never exactly 0 here
    np.testing.assert_allclose(out, want, rtol=2e-6, atol=0)
    np.testing.assert_allclose(ds, ref_score_grad(w, s, g), rtol=1e-6, atol=0)
    np.testing.assert_array_equal(dw, np.zeros_like(w))  # W gets no gradient
    # Every kept entry is +-alpha, a single alpha per layer.
    np.testing.assert_allclose(np.abs(out[m]), alpha, rtol=2e-6)


@pytest.mark.parametrize("shape,k", CASES)
@pytest.mark.parametrize("integer_scores", [False, True])
def test_edgepopup_kernel_value_and_grad(shape, k, integer_scores):
    seed = 7 + hash((shape, integer_scores)) % 2**31
    w, s, g = _draw(shape, seed=seed, integer_scores=integer_scores)
    out, dw, ds = _vjp(ops.edgepopup_kernel, w, s, k, g)
    want, m = ref_edgepopup(w, s, k)
    np.testing.assert_array_equal(out, want.astype(np.float32))  # W * {0, 1} is exact
    np.testing.assert_allclose(ds, ref_score_grad(w, s, g), rtol=1e-6, atol=0)
    np.testing.assert_array_equal(dw, np.zeros_like(w))


def test_one_weight_kept_is_the_largest_score():
    shape = (3, 3, 3, 16)
    k = 1.0 / (2 * math.prod(shape))
    assert ref_kept(math.prod(shape), k) == 1
    w, s, _ = _draw(shape, seed=3)
    # Eager on purpose (op by op, no jit): the other kernel tests compile whole programs.
    out = np.asarray(ops.biprop_kernel(jnp.asarray(w), jnp.asarray(s), k))
    (idx,) = np.flatnonzero(out)
    assert idx == np.argmax(np.abs(s))
    assert out.reshape(-1)[idx] == pytest.approx(w.reshape(-1)[idx], rel=1e-7)  # alpha = |W_i|


def test_ties_keep_above_threshold_then_lowest_indices():
    # |s| in {0, 1, 2}: 4 entries of 2, then six 1s for 6 slots -> ties resolved by index.
    s = np.array([1, 0, 2, -1, 1, 2, -2, 0, 1, -1, 1, 2, 0, -1, 1, 0], np.float32)
    kept = 8
    m = np.asarray(jax.jit(ops.topk_mask, static_argnums=1)(jnp.abs(jnp.asarray(s)), kept))
    want = np.zeros(16, bool)
    want[[2, 5, 6, 11]] = True  # |s| = 2 (strictly above the threshold 1)
    want[[0, 3, 4, 8]] = True  # first-indexed |s| = 1 entries
    np.testing.assert_array_equal(m, want)
    np.testing.assert_array_equal(m, ref_mask(s, kept))


@pytest.mark.parametrize("n,k,kept", [(1728, 0.2, 346), (36864, 0.2, 7373), (1728, 0.5, 864),
                                      (2560, 0.8, 2049), (27, 0.05, 2)])
def test_spec_9_2_kept_counts_and_alpha_divisor(n, k, kept):
    assert ops.kept_count(n, k) == kept
    rng = np.random.default_rng(n)
    # |W| = 1 everywhere: alpha over the true kept count is exactly 1; the reference's
    # floor(k n) divisor would give kept / floor(k n) (e.g. 346/345).
    w = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32)
    s = rng.standard_normal(n).astype(np.float32)
    out = np.asarray(_biprop_static_k(jnp.asarray(w), jnp.asarray(s), k))
    assert int(np.count_nonzero(out)) == kept
    np.testing.assert_array_equal(np.abs(out[out != 0]), 1.0)
    # Non-constant |W|: alpha = sum over kept / kept count.
    w2 = rng.uniform(0.5, 1.5, n).astype(np.float32)
    out2 = np.asarray(_biprop_static_k(jnp.asarray(w2), jnp.asarray(s), k))
    m = ref_mask(s, kept)
    np.testing.assert_allclose(out2[m][0], w2.astype(np.float64)[m].sum() / kept, rtol=1e-6)


def test_large_layer_with_float32_ties_is_exact():
    # 2**21 entries whose |s| take only 4097 distinct float32 values: every threshold is a
    # heavily tied value, the mask must still have exactly the kept count and the stable order.
    n = 2**21
    rng = np.random.default_rng(5)
    s = (rng.integers(-4096, 4097, n) / 4096.0).astype(np.float32)
    for k in (0.2, 0.05):
        kept = ref_kept(n, k)
        m = np.asarray(jax.jit(ops.topk_mask, static_argnums=1)(jnp.abs(jnp.asarray(s)), kept))
        assert int(m.sum()) == kept
        np.testing.assert_array_equal(m, ref_mask(s, kept))


# ---------------------------------------------------------------------------
# Transformations: jit, grad, vmap, traced keep fractions


def test_jit_grad_and_vjp_agree_with_reference():
    w, s, g = _draw((3, 3, 4, 8), seed=11)
    k = 0.3
    f = jax.jit(ops.biprop_kernel, static_argnums=2)
    np.testing.assert_allclose(np.asarray(f(w, s, k)), ref_biprop(w, s, k)[0], rtol=2e-6)
    loss = lambda s_, w_: jnp.sum(ops.biprop_kernel(w_, s_, k) * g)  # noqa: E731
    ds, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(s), jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(ds), ref_score_grad(w, s, g), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(dw), 0.0)
    # grad with a traced keep fraction (the int `kept` argument of the custom_vjp gets None)
    loss_k = lambda s_, k_: jnp.sum(ops.biprop_kernel(w, s_, k_) * g)  # noqa: E731
    ds_k = jax.jit(jax.grad(loss_k))(jnp.asarray(s), jnp.float32(0.25))
    np.testing.assert_allclose(np.asarray(ds_k),
                               ref_score_grad(w, s, g), rtol=1e-6)
    # edge-popup under jit + grad as well
    loss_e = lambda s_: jnp.sum(ops.edgepopup_kernel(w, s_, k) * g)  # noqa: E731
    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(loss_e))(jnp.asarray(s))),
                               ref_score_grad(w, s, g), rtol=1e-6)


def test_vmap_over_batched_scores():
    w, _, _ = _draw((3, 3, 2, 4), seed=12)
    rng = np.random.default_rng(13)
    s = rng.uniform(-1, 1, (5, 3, 3, 2, 4)).astype(np.float32)
    s[2] = np.round(s[2] * 2)  # one member with ties
    g = rng.standard_normal(s.shape).astype(np.float32)
    k = 0.4

    @jax.jit  # one program instead of one compile per eager primitive
    def vmapped_vjp(s_, g_):
        out_, pullback = jax.vjp(jax.vmap(lambda si: ops.biprop_kernel(w, si, k)), s_)
        return out_, pullback(g_)[0]

    out, ds = vmapped_vjp(jnp.asarray(s), jnp.asarray(g))
    for b in range(5):
        np.testing.assert_allclose(np.asarray(out[b]), ref_biprop(w, s[b], k)[0], rtol=2e-6)
        np.testing.assert_allclose(np.asarray(ds[b]), ref_score_grad(w, s[b], g[b]), rtol=1e-6)


def test_vmap_over_keep_fractions():
    w, s, _ = _draw((6, 10), seed=14)
    ks = [0.25, 0.5, 0.75, 1.0]  # exact in float32, so the float32 count is the float64 one
    out = jax.jit(jax.vmap(lambda k: ops.biprop_kernel(w, s, k)))(jnp.asarray(ks, jnp.float32))
    for i, k in enumerate(ks):
        np.testing.assert_allclose(np.asarray(out[i]), ref_biprop(w, s, k)[0], rtol=2e-6)


@pytest.mark.parametrize("n,k", [(1728, 0.2), (36864, 0.2), (1728, 0.5), (2560, 0.8),
                                 (600, 0.25), (77, 1.0), (1000, 0.05)])
def test_traced_float32_keep_fraction_matches_python_float(n, k):
    rng = np.random.default_rng(n)
    w = rng.standard_normal(n).astype(np.float32)
    s = rng.standard_normal(n).astype(np.float32)
    want = np.asarray(_biprop_static_k(w, s, k))
    got = np.asarray(_biprop_traced_k(w, s, jnp.float32(k)))
    np.testing.assert_array_equal(got, want)
    assert int(np.count_nonzero(got)) == ref_kept(n, k)


def test_traced_float32_keep_fraction_documented_one_off():
    # Known, documented limitation (masks.kept_for): float32(0.3) != float64(0.3) and
    # (1 - k) * 180 sits on an integer, so a float32 array keeps 54 where 0.3 keeps 55.
    n, k = 180, 0.3
    k32 = np.float32(k)
    f32_formula = n - int(np.floor((np.float32(1) - k32) * np.float32(n)))
    assert (ref_kept(n, k), f32_formula) == (55, 54)
    s = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    w = np.ones(n, np.float32)
    got = _biprop_traced_k(w, s, jnp.float32(k))
    assert int(np.count_nonzero(np.asarray(got))) == f32_formula
    assert int(np.count_nonzero(np.asarray(_biprop_static_k(w, s, k)))) == ref_kept(n, k)


def test_traced_float64_keep_fraction_matches_host_formula(x64):
    ks = [0.05 * i for i in range(1, 20)] + [0.3, 0.7, 0.01, 0.123456]
    ns = [1, 27, 180, 640, 1728, 2560, 5120, 36864, 9437184, 68814016]
    counts = jax.jit(jax.vmap(lambda k: jnp.stack([masks.kept_for(n, k) for n in ns])))(
        jnp.asarray(ks, jnp.float64))
    want = np.array([[ref_kept(n, k) for n in ns] for k in ks])
    np.testing.assert_array_equal(np.asarray(counts), want)


def test_no_retrace_when_traced_keep_fraction_changes():
    w, s, _ = _draw((4, 6), seed=15)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(w_, s_, k):
        return ops.biprop_kernel(w_, s_, k)

    chex.clear_trace_counter()
    for k in (0.25, 0.5, 0.75, 1.0, 0.125):
        np.testing.assert_allclose(np.asarray(f(w, s, jnp.float32(k))), ref_biprop(w, s, k)[0],
                                   rtol=2e-6)


# ---------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.0000001, 2, float("nan"), float("inf"), "0.5",
                                 "abc", None, True, [0.2], np.array([0.2, 0.3]),
                                 jnp.float32(0.0), jnp.float32(1.5)])
def test_invalid_keep_fraction_raises(bad):
    w, s, _ = _draw((3, 4), seed=16)
    for fn in (ops.biprop_kernel, ops.edgepopup_kernel):
        with pytest.raises(ValueError, match="keep_fraction"):
            fn(w, s, bad)
    with pytest.raises(ValueError, match="keep_fraction"):
        ops.global_threshold([s], bad)
    if not isinstance(bad, (jax.Array, np.ndarray, list)):
        with pytest.raises(ValueError, match="keep_fraction"):
            ops.validate_keep_fraction(bad)


def test_mismatched_shapes_and_bad_counts_raise():
    with pytest.raises(ValueError, match="same shape"):
        ops.biprop_kernel(jnp.ones((3, 4)), jnp.ones((4, 3)), 0.5)
    with pytest.raises(ValueError, match="same shape"):
        ops.edgepopup_kernel(jnp.ones((3, 4)), jnp.ones((12,)), 0.5)
    with pytest.raises(ValueError, match="same shape"):
        ops.threshold_kernel(jnp.ones((3, 4)), jnp.ones((3, 5)), 0.0)
    with pytest.raises(ValueError):
        ops.kept_count(0, 0.5)
    with pytest.raises(ValueError, match="kept"):
        ops.topk_mask(jnp.ones(5), 0)
    with pytest.raises(ValueError, match="kept"):
        ops.topk_mask(jnp.ones(5), 6)


# ---------------------------------------------------------------------------
# Binary activation and binary weights (docs/method.md#binary-activations-mpt-11)


def test_binary_activation_forward_and_surrogate_grad():
    x = np.array([-3.0, -1.0, -0.75, -0.5, -1e-8, 0.0, -0.0, 1e-8, 0.25, 0.5, 1.0, 2.0], np.float32)
    y, pullback = jax.vjp(ops.binary_activation, jnp.asarray(x))
    # +1 at x >= 0 (incl. exactly 0: docs/decisions.md#sign-zero), -1 elsewhere.
    np.testing.assert_array_equal(np.asarray(y), np.where(x >= 0, 1.0, -1.0))
    (dx,) = pullback(jnp.ones_like(jnp.asarray(x)))
    x64_ = x.astype(np.float64)
    np.testing.assert_allclose(np.asarray(dx), 2 * (1 - np.abs(np.clip(x64_, -1, 1))), atol=1e-6)
    # The ApproxSign surrogate: 2 at 0, 1 at +-0.5, 0 at +-1 and beyond.
    g = jax.grad(lambda v: ops.binary_activation(v))
    assert float(g(0.0)) == 2.0
    assert float(g(0.5)) == float(g(-0.5)) == 1.0
    assert float(g(1.0)) == float(g(-1.0)) == float(g(3.0)) == float(g(-3.0)) == 0.0


def test_binary_activation_under_jit_vmap_and_bf16():
    rng = np.random.default_rng(17)
    x = rng.uniform(-2, 2, (4, 33)).astype(np.float32)
    gout = rng.standard_normal(x.shape).astype(np.float32)
    f = jax.jit(jax.vmap(ops.binary_activation))
    y, pullback = jax.vjp(f, jnp.asarray(x))
    (dx,) = pullback(jnp.asarray(gout))
    np.testing.assert_array_equal(np.asarray(y), np.where(x >= 0, 1.0, -1.0))
    np.testing.assert_allclose(np.asarray(dx), gout * 2 * (1 - np.abs(np.clip(x, -1, 1))),
                               rtol=1e-6, atol=1e-7)
    yb = ops.binary_activation(jnp.asarray(x, jnp.bfloat16))
    assert yb.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(yb, np.float32), np.where(x >= 0, 1.0, -1.0))


def test_binary_weight_forward_and_identity_ste():
    w, _, g = _draw((3, 3, 2, 5), seed=18)
    out, pullback = jax.vjp(ops.binary_weight, jnp.asarray(w))
    w64 = w.astype(np.float64)
    np.testing.assert_allclose(np.asarray(out), np.abs(w64).mean() * np.sign(w64), rtol=1e-6)
    (dw,) = pullback(jnp.asarray(g))
    np.testing.assert_array_equal(np.asarray(dw), g)


# ---------------------------------------------------------------------------
# Global pruning (docs/method.md#global-pruning-optional)


def _global_leaves(seed, integer_scores=False):
    rng = np.random.default_rng(seed)
    shapes = [(3, 3, 3, 4), (3, 3, 4, 8), (8, 10)]
    leaves = []
    for shp in shapes:
        if integer_scores:
            leaves.append(rng.integers(-5, 6, shp).astype(np.float32))
        else:
            leaves.append((rng.uniform(-1, 1, shp) / math.sqrt(shp[-2])).astype(np.float32))
    weights = [rng.standard_normal(shp).astype(np.float32) for shp in shapes]
    return leaves, weights


@jax.jit  # one program per layer shape, shared by the parametrisations
def _threshold_vjp(w, s, tau, g):
    """threshold_kernel of one layer, its pullback of g, and the edge-popup kernel."""
    out, pullback = jax.vjp(lambda w_, s_, t_: ops.threshold_kernel(w_, s_, t_), w, s, tau)
    return (out, *pullback(g), ops.threshold_kernel(w, s, tau, binarize=False))


@pytest.mark.parametrize("k", [0.2, 0.5, 0.73, 0.05])
@pytest.mark.parametrize("integer_scores", [False, True])
def test_global_threshold_and_per_layer_kernels(k, integer_scores):
    leaves, weights = _global_leaves(19, integer_scores)
    tau = ops.global_threshold([jnp.asarray(s) for s in leaves], k)
    tau_ref = ref_global_threshold(leaves, k)
    assert float(tau) == tau_ref  # tau is one of the |s| values: exact
    total_kept = 0
    for w, s in zip(weights, leaves):
        g = np.random.default_rng(20).standard_normal(w.shape).astype(np.float32)
        out, dw, ds, dtau, out_e = _threshold_vjp(jnp.asarray(w), jnp.asarray(s), tau,
                                                  jnp.asarray(g))
        np.testing.assert_allclose(np.asarray(out), ref_threshold_kernel(w, s, tau_ref), rtol=2e-6)
        np.testing.assert_allclose(np.asarray(ds), ref_score_grad(w, s, g), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(dw), 0.0)
        assert float(dtau) == 0.0
        np.testing.assert_array_equal(np.asarray(out_e),
                                      ref_threshold_kernel(w, s, tau_ref, False).astype(np.float32))
        total_kept += int((np.abs(s) > tau_ref).sum())
    if not integer_scores:  # no ties: exactly N - floor((1 - k) N) kept network-wide
        n = sum(s.size for s in leaves)
        assert total_kept == ref_kept(n, k)


def test_global_threshold_traced_keep_fraction_and_jit():
    leaves, _ = _global_leaves(21)
    f = jax.jit(ops.global_threshold)
    for k in (0.25, 0.5, 1.0):
        tau = f([jnp.asarray(s) for s in leaves], jnp.float32(k))
        assert float(tau) == ref_global_threshold(leaves, k)


def test_global_threshold_for_count_traced_no_retrace():
    """The kept count as an int32 array (what training passes): exact float64
    global thresholds for every k, one trace for all of them, -inf when everything is kept."""
    leaves, _ = _global_leaves(23)
    n = sum(s.size for s in leaves)
    f = jax.jit(chex.assert_max_traces(ops.global_threshold_for_count, n=1))
    for k in (0.1, 0.37, 0.5, 1.0):
        kept = jnp.asarray(ref_kept(n, k), jnp.int32)
        tau = f([jnp.asarray(s) for s in leaves], kept)
        assert float(tau) == ref_global_threshold(leaves, k)
    chex.clear_trace_counter()
    with pytest.raises(ValueError, match="kept must be in"):
        ops.global_threshold_for_count([jnp.asarray(s) for s in leaves], n + 1)


def test_global_keep_fraction_one_prunes_nothing():
    leaves, weights = _global_leaves(22)
    tau = ops.global_threshold([jnp.asarray(s) for s in leaves], 1.0)
    assert float(tau) == -np.inf
    for w, s in zip(weights, leaves):
        out = np.asarray(ops.threshold_kernel(jnp.asarray(w), jnp.asarray(s), tau))
        w64 = w.astype(np.float64)
        np.testing.assert_allclose(out, np.abs(w64).mean() * np.sign(w64), rtol=2e-6)


def test_global_layer_with_nothing_kept_gives_alpha_zero_not_nan():
    w, s, g = _draw((3, 3, 2, 2), seed=23)
    tau = float(np.abs(s).max())  # strict ">": nothing in this layer survives
    out, pullback = jax.vjp(lambda s_: ops.threshold_kernel(jnp.asarray(w), s_, tau),
                            jnp.asarray(s))
    np.testing.assert_array_equal(np.asarray(out), 0.0)
    (ds,) = pullback(jnp.asarray(g))
    assert np.isfinite(np.asarray(ds)).all()
    np.testing.assert_allclose(np.asarray(ds), ref_score_grad(w, s, g), rtol=1e-6)


def test_global_keep_schedule_values():
    # The reference's cubic ramp at p = 0.2, E_p = 10 (values worked out by hand).
    want = [0.5, 0.4187, 0.3536, 0.3029, 0.2648, 0.2375, 0.2192, 0.2081, 0.2024, 0.2003, 0.2]
    got = [round(ops.global_keep_schedule(e, 0.2, 10), 4) for e in range(11)]
    assert got == want
    assert ops.global_keep_schedule(25, 0.2, 10) == 0.2
    # p > 0.5: no ramp at all.
    assert [ops.global_keep_schedule(e, 0.6, 10) for e in range(15)] == [0.6] * 15
    with pytest.raises(ValueError, match="keep_fraction"):
        ops.global_keep_schedule(0, 0.0, 10)
