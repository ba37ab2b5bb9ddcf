"""Exact k-th largest (mpt_jax.select): every method against a float64 NumPy sort.

The threshold feeds select.topk_mask, so exactness matters bit for bit: a threshold one ulp
off changes the kept set, and the select must give exactly the kept set of the sort, ties
included (docs/method.md#the-mask-layerwise-top-k-on-s). The benchmark-only variants are
tested in test_select_variants.py.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax import ops, select

IMPLS = ("sort", "radix")
FUNCS = {"sort": select.kth_largest_sort, "radix": select.kth_largest_radix}


def _ref(values: np.ndarray, k: int) -> float:
    """Independent reference: float64 ascending sort, index n - k."""
    return float(np.sort(values.astype(np.float64))[values.size - k])


def _make(kind: str, n: int, rng) -> np.ndarray:
    if kind == "uniform":  # |kaiming-uniform scores|-like: a few exponents dominate
        return np.abs(rng.uniform(-0.1, 0.1, n)).astype(np.float32)
    if kind == "ties":  # only 5 distinct values: every threshold is a heavy tie
        return (rng.integers(0, 5, n) * 0.25).astype(np.float32)
    if kind == "zeros":  # mostly exact zeros (and one -0.0), a few ones
        v = np.zeros(n, np.float32)
        v[rng.permutation(n)[: max(1, n // 7)]] = 1.0
        v[0] = -0.0
        return v
    if kind == "wide":  # magnitudes spread over ~70 binades, incl. denormals and max float
        v = (rng.random(n) * 10.0 ** rng.integers(-44, 38, n)).astype(np.float32)
        v[rng.integers(0, n, max(1, n // 50))] = np.finfo(np.float32).max
        return np.abs(v)
    raise AssertionError(kind)


def _ks(n: int):
    return sorted({1, 2 if n >= 2 else 1, max(1, n // 5), max(1, n // 2), n})


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n", [1, 2, 3, 1000, 4099])
@pytest.mark.parametrize("kind", ["uniform", "ties", "zeros"])
def test_matches_float64_sort(impl, n, kind):
    rng = np.random.default_rng(n * 7 + len(kind))
    values = _make(kind, n, rng)
    fn = jax.jit(FUNCS[impl])
    for k in _ks(n):
        got = fn(jnp.asarray(values), jnp.int32(k))
        assert got.dtype == jnp.float32
        assert float(got) == _ref(values, k), (impl, n, kind, k)


@pytest.mark.parametrize("impl", ["radix"])
def test_wide_range_and_denormals_bit_exact(impl):
    # XLA:CPU flushes denormals in compares and sorts (DAZ), so only the radix selects,
    # which work on the bit patterns, can return the exact denormal k-th largest.
    rng = np.random.default_rng(1)
    values = _make("wide", 5000, rng)
    values[:300] = (rng.integers(1, 40, 300) * np.float32(1.4e-45)).astype(np.float32)
    assert np.sum((values > 0) & (values < np.finfo(np.float32).tiny)) >= 250
    fn = jax.jit(FUNCS[impl])
    for k in [1, 7, 2500, 4700, 4701, 4750, 5000]:
        got = np.float32(fn(jnp.asarray(values), jnp.int32(k)))
        want = np.float32(_ref(values, k))
        assert got.view(np.uint32) == want.view(np.uint32), (k, got, want)


@pytest.mark.parametrize("impl", IMPLS)
def test_large_layer(impl):
    # 2**20 + 3 entries: more than one full histogram of every digit, odd size.
    n = 2 ** 20 + 3
    rng = np.random.default_rng(2)
    values = _make("uniform", n, rng)
    values[rng.integers(0, n, 5000)] = values[123]  # a heavy tie in the middle
    fn = jax.jit(FUNCS[impl])
    order = np.sort(values.astype(np.float64))
    k_tie = n - int(np.searchsorted(order, values[123]))  # k exactly at the tied value
    for k in [1, n // 5, k_tie] + ([] if impl == "sort" else [n]):
        assert float(fn(jnp.asarray(values), jnp.int32(k))) == order[n - k], k


@pytest.mark.parametrize("impl", IMPLS)
def test_traced_k_does_not_recompile(impl):
    values = jnp.asarray(_make("uniform", 777, np.random.default_rng(3)))
    chex.clear_trace_counter()  # the counter is per code location, shared by parametrizations

    @jax.jit
    @chex.assert_max_traces(n=1)
    def threshold(v, k):
        return FUNCS[impl](v, k)

    host = np.asarray(values)
    for k in [1, 5, 300, 777]:
        assert float(threshold(values, jnp.int32(k))) == _ref(host, k)


def test_python_int_k_and_bad_arguments():
    values = jnp.asarray([0.5, 0.25, 0.75], jnp.float32)
    for impl in IMPLS:
        assert float(FUNCS[impl](values, 2)) == 0.5
        with pytest.raises(ValueError, match="k=4"):
            FUNCS[impl](values, 4)
        with pytest.raises(ValueError, match="k=0"):
            FUNCS[impl](values, 0)
    with pytest.raises(ValueError, match="flat"):
        select.kth_largest(jnp.ones((2, 2)), 1)
    with pytest.raises(ValueError, match="empty"):
        select.kth_largest(jnp.ones((0,)), 1)
    with pytest.raises(ValueError, match="float"):
        select.kth_largest(jnp.arange(4), 1)
    with pytest.raises(ValueError, match="heapsort"):
        select.kth_largest(values, 1, "heapsort")


def test_out_of_range_traced_k_is_clamped_like_the_sort():
    values = jnp.asarray([3.0, 1.0, 2.0], jnp.float32)
    for impl in IMPLS:
        fn = jax.jit(FUNCS[impl])
        assert float(fn(values, jnp.int32(0))) == 3.0
        assert float(fn(values, jnp.int32(9))) == 1.0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_inputs(dtype):
    host = np.abs(np.random.default_rng(4).normal(size=999)).astype(np.float32)
    values = jnp.asarray(host).astype(dtype)
    exact = np.asarray(values.astype(jnp.float32))
    for impl in IMPLS:
        got = FUNCS[impl](values, 100)
        assert got.dtype == dtype
        assert float(got) == _ref(exact, 100)


def test_vmap_over_layers_and_k():
    rng = np.random.default_rng(5)
    stacked = np.abs(rng.normal(size=(4, 300))).astype(np.float32)
    stacked[1, :150] = 0.5  # a tie-heavy row
    ks = np.array([1, 150, 200, 300], np.int32)
    for impl in IMPLS:
        @jax.jit  # thresholds and masks in one program (op by op: a compile per primitive)
        def vmapped(v, k):
            return (jax.vmap(FUNCS[impl])(v, k),
                    jax.vmap(lambda v_, k_: select.topk_mask(v_, k_, impl))(v, k))

        got, masks = vmapped(jnp.asarray(stacked), jnp.asarray(ks))
        want = [_ref(stacked[i], int(ks[i])) for i in range(4)]
        np.testing.assert_array_equal(np.asarray(got, np.float64), want)
        masks = np.asarray(masks)
        for row, k, mask in zip(stacked, ks, masks):  # stable descending sort's top k
            want = np.zeros(row.size, bool)
            want[np.argsort(-row.astype(np.float64), kind="stable")[:k]] = True
            np.testing.assert_array_equal(mask, want)


def test_gradient_context_is_safe():
    # Under jax.grad the threshold is a constant (the mask STE lives in ops.custom_vjp);
    # differentiating through it must neither fail nor produce NaN.
    values = jnp.asarray(np.abs(np.random.default_rng(6).normal(size=50)), jnp.float32)
    for impl in ("radix",):
        g = jax.grad(lambda v: FUNCS[impl](v, 10) * 2.0)(values)
        assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("batched", [True, False])
def test_many_matches_single(batched):
    rng = np.random.default_rng(7)
    arrays = [_make(kind, n, rng) for kind, n in
              [("uniform", 1), ("ties", 10), ("zeros", 999), ("uniform", 4096), ("ties", 37)]]
    arrays[3] = arrays[3].reshape(64, 64)  # arrays are flattened
    ks = [1, 4, 143, 820, 37]
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def thresholds(arrs, kvec):
        if batched:  # one scatter per pass for all arrays
            return select.kth_largest_many(arrs, kvec, "radix")
        return [select.kth_largest_radix(a.reshape(-1), kvec[i]) for i, a in enumerate(arrs)]

    for shift in [0, 1]:  # a new k vector must not retrace
        kvec = jnp.asarray([max(1, k - shift) for k in ks], jnp.int32)
        got = thresholds([jnp.asarray(a) for a in arrays], kvec)
        want = [_ref(a.reshape(-1), max(1, k - shift)) for a, k in zip(arrays, ks)]
        assert [float(x) for x in got] == want


def test_many_validates_lengths():
    with pytest.raises(ValueError, match="one k per array"):
        select.kth_largest_many([jnp.ones(3), jnp.ones(4)], [1])
    assert select.kth_largest_many([], []) == []


@pytest.mark.parametrize("kind", ["uniform", "ties", "zeros", "wide"])
def test_topk_mask_kept_set_identical_to_sort(kind):
    # The property the layers rely on: the kept set (ties resolved to the lowest flat
    # indices) is the same whichever method finds the threshold, and it is the set of a
    # stable descending sort (computed here in NumPy).
    rng = np.random.default_rng(8)
    n = 3001
    values = _make(kind, n, rng)
    masks = {}
    for impl in IMPLS + ("auto",):
        mask_fn = jax.jit(lambda v, k, impl=impl: select.topk_mask(v, k, impl))
        masks[impl] = [np.asarray(mask_fn(jnp.asarray(values), jnp.int32(k)))
                       for k in (1, 600, 1500, n)]
    for impl in IMPLS[1:] + ("auto",):
        for m_sort, m_other in zip(masks["sort"], masks[impl]):
            np.testing.assert_array_equal(m_sort, m_other)
    if kind != "wide":  # XLA:CPU compares flush denormals; "wide" has some
        for k, mask in zip((1, 600, 1500, n), masks["radix"]):
            order = np.argsort(-values.astype(np.float64), kind="stable")
            want = np.zeros(n, bool)
            want[order[:k]] = True
            np.testing.assert_array_equal(mask, want)
    # ops re-exports the same function (its public API)
    np.testing.assert_array_equal(np.asarray(ops.topk_mask(jnp.asarray(values), 700)),
                                  np.asarray(select.topk_mask(jnp.asarray(values), 700)))


@functools.partial(jax.jit, static_argnums=(3, 4))
def _radix_thresholds(arrays, k0, k1, digits, copies):
    """The radix select of arrays[0] alone (k0) and of both arrays at once (k0, k1), with
    the given digit plan and histogram copies: one compiled program per knob setting (the
    ks are traced, so they share it)."""
    single = select.kth_largest_radix(arrays[0], k0, digits=digits, copies=copies)
    many = select.kth_largest_many(arrays, [k0, k1], "radix", digits=digits, copies=copies)
    return single, many


def test_histogram_copies_give_identical_results():
    # The GPU default privatises the histogram into 32 copies; same answers on CPU.
    values = _make("ties", 5000, np.random.default_rng(9))
    for k in [1, 1234, 5000]:
        single, many = _radix_thresholds([jnp.asarray(values)] * 2, jnp.int32(k), jnp.int32(k),
                                         select.SCATTER_DIGITS, 32)
        assert float(single) == _ref(values, k)
        assert [float(x) for x in many] == [_ref(values, k)] * 2
    with pytest.raises(ValueError, match="copies"):
        select.kth_largest_radix(jnp.asarray(values), 1, copies=0)


@pytest.mark.parametrize("digits", [(16, 15), (8, 8, 8, 7), (1, 10, 10, 10)])
def test_scatter_digit_plans_give_identical_results(digits):
    # The digit widths only change the passes (a speed knob): the same thresholds as a
    # float64 sort, per array and batched, with privatised copies too.
    values = _make("ties", 5000, np.random.default_rng(11))
    other = _make("uniform", 777, np.random.default_rng(12))
    for copies in (1, 4):
        for k in [1, 1234, 5000]:
            single, many = _radix_thresholds([jnp.asarray(values), jnp.asarray(other)],
                                             jnp.int32(k), jnp.int32(min(k, 777)), digits, copies)
            assert float(single) == _ref(values, k)
            assert [float(x) for x in many] == [_ref(values, k), _ref(other, min(k, 777))]


@pytest.mark.parametrize("bad", [(16, 16), (11, 10), (17, 14), (0, 31)])
def test_bad_scatter_digit_plan_is_refused(bad):
    with pytest.raises(ValueError, match="sum to 31"):
        select.kth_largest_radix(jnp.ones((8,), jnp.float32), 1, digits=bad)


def test_auto_uses_radix_on_cpu():
    # "auto" lowers per platform; on CPU it must be the radix select (no sort in the HLO).
    values = jnp.ones((64,), jnp.float32)

    def compiled_hlo(method):
        fn = jax.jit(lambda v, k: select.kth_largest(v, k, method))
        return fn.lower(values, jnp.int32(3)).compile().as_text()

    hlo = compiled_hlo("auto")
    assert " scatter(" in hlo and " sort(" not in hlo
    assert " sort(" in compiled_hlo("sort")
