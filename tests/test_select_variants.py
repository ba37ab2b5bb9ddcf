"""The benchmarks' selection variants (benchmarks/select_variants.py) keep exactly the
package's kept sets: against float64 NumPy sorts, like tests/test_select.py."""
import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import select_variants  # noqa: E402

from mpt_jax import masks, select, select_many  # noqa: E402

radix_compare = select_variants.kth_largest_radix_compare


def _ref(values: np.ndarray, k: int) -> float:
    """Independent reference: float64 ascending sort, index n - k."""
    return float(np.sort(values.astype(np.float64))[values.size - k])


def _make(kind: str, n: int, rng) -> np.ndarray:
    if kind == "uniform":
        return np.abs(rng.uniform(-0.1, 0.1, n)).astype(np.float32)
    if kind == "ties":
        return (rng.integers(0, 5, n) * 0.25).astype(np.float32)
    if kind == "zeros":
        v = np.zeros(n, np.float32)
        v[rng.permutation(n)[: max(1, n // 7)]] = 1.0
        v[0] = -0.0
        return v
    if kind == "wide":
        v = (rng.random(n) * 10.0 ** rng.integers(-44, 38, n)).astype(np.float32)
        v[rng.integers(0, n, max(1, n // 50))] = np.finfo(np.float32).max
        return np.abs(v)
    raise AssertionError(kind)


def _stable_top(values, k):
    want = np.zeros(values.size, bool)
    want[np.argsort(-values.astype(np.float64), kind="stable")[:k]] = True
    return want


@pytest.mark.parametrize("n", [1, 2, 3, 1000, 4099])
@pytest.mark.parametrize("kind", ["uniform", "ties", "zeros"])
def test_radix_compare_matches_float64_sort(n, kind):
    rng = np.random.default_rng(n * 7 + len(kind))
    values = _make(kind, n, rng)
    fn = jax.jit(radix_compare)
    for k in sorted({1, 2 if n >= 2 else 1, max(1, n // 5), max(1, n // 2), n}):
        got = fn(jnp.asarray(values), jnp.int32(k))
        assert got.dtype == jnp.float32
        assert float(got) == _ref(values, k), (n, kind, k)


def test_radix_compare_wide_range_and_denormals_bit_exact():
    rng = np.random.default_rng(1)
    values = _make("wide", 5000, rng)
    values[:300] = (rng.integers(1, 40, 300) * np.float32(1.4e-45)).astype(np.float32)
    fn = jax.jit(radix_compare)
    for k in [1, 7, 2500, 4700, 4701, 4750, 5000]:
        got = np.float32(fn(jnp.asarray(values), jnp.int32(k)))
        want = np.float32(_ref(values, k))
        assert got.view(np.uint32) == want.view(np.uint32), (k, got, want)


def test_radix_compare_large_layer_traced_k_and_arguments():
    n = 2 ** 20 + 3
    rng = np.random.default_rng(2)
    values = _make("uniform", n, rng)
    values[rng.integers(0, n, 5000)] = values[123]
    order = np.sort(values.astype(np.float64))
    k_tie = n - int(np.searchsorted(order, values[123]))
    chex.clear_trace_counter()
    fn = jax.jit(chex.assert_max_traces(radix_compare, n=1))
    for k in [1, n // 5, k_tie, n]:  # traced k: one trace
        assert float(fn(jnp.asarray(values), jnp.int32(k))) == order[n - k], k
    small = jnp.asarray([0.5, 0.25, 0.75], jnp.float32)
    assert float(radix_compare(small, 2)) == 0.5
    for bad in (0, 4):
        with pytest.raises(ValueError, match=f"k={bad}"):
            radix_compare(small, bad)
    clamped = jax.jit(radix_compare)
    assert float(clamped(jnp.asarray([3.0, 1.0, 2.0]), jnp.int32(0))) == 3.0
    assert float(clamped(jnp.asarray([3.0, 1.0, 2.0]), jnp.int32(9))) == 1.0
    g = jax.jit(jax.grad(lambda v: radix_compare(v, 10) * 2.0))(jnp.asarray(values[:50]))
    assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_radix_compare_half_precision(dtype):
    host = np.abs(np.random.default_rng(4).normal(size=999)).astype(np.float32)
    values = jnp.asarray(host).astype(dtype)
    got = radix_compare(values, 100)
    assert got.dtype == dtype
    assert float(got) == _ref(np.asarray(values.astype(jnp.float32)), 100)


@pytest.mark.parametrize("kind", ["uniform", "ties", "zeros", "wide"])
def test_radix_compare_kept_set_identical_to_sort(kind):
    values = _make(kind, 3001, np.random.default_rng(8))
    for k in (1, 600, 1500, 3001):
        want = np.asarray(select.topk_mask(jnp.asarray(values), k, "sort"))
        got = select.mask_at_threshold(jnp.asarray(values),
                                       radix_compare(jnp.asarray(values), k), k)
        np.testing.assert_array_equal(np.asarray(got), want)


# Python int k (static) as whole programs, shared by the parametrisations (op by op,
# every primitive would compile on its own).
_kept_mask_static_k = jax.jit(select_variants.kept_mask, static_argnums=(1, 2))
_topk_mask_static_k = jax.jit(select.topk_mask, static_argnums=1)


@pytest.mark.parametrize("impl", ["sort", "radix", "radix_compare", "auto"])
@pytest.mark.parametrize("kind", ["uniform", "ties", "zeros"])
def test_kept_mask_is_the_stable_sort_top_k(kind, impl):
    # kept_mask finds the tie cut-off by a second radix select instead of the cumsum; it
    # must keep exactly the set of a stable descending sort (NumPy, float64).
    n = 2999
    values = _make(kind, n, np.random.default_rng(10))
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def mask_fn(v, k):
        return select_variants.kept_mask(v, k, impl)

    for k in (1, 2, 600, 1500, n - 1, n):
        np.testing.assert_array_equal(np.asarray(mask_fn(jnp.asarray(values), jnp.int32(k))),
                                      _stable_top(values, k))
    np.testing.assert_array_equal(  # and the same as select.topk_mask, for a Python int k
        np.asarray(_kept_mask_static_k(jnp.asarray(values), 700, impl)),
        np.asarray(_topk_mask_static_k(jnp.asarray(values), 700)))


def test_kept_mask_under_vmap():
    rng = np.random.default_rng(5)
    stacked = np.abs(rng.normal(size=(4, 300))).astype(np.float32)
    stacked[1, :150] = 0.5
    ks = np.array([1, 150, 200, 300], np.int32)
    for impl in ("sort", "radix", "radix_compare"):
        found = np.asarray(jax.jit(jax.vmap(lambda v, k: select_variants.kept_mask(v, k, impl)))(
            jnp.asarray(stacked), jnp.asarray(ks)))
        for row, k, mask in zip(stacked, ks, found):
            np.testing.assert_array_equal(mask, _stable_top(row, k))


def test_knobs_from_the_environment(monkeypatch):
    values = _make("ties", 5000, np.random.default_rng(9))
    for key in ("MPT_JAX_SELECT", "MPT_JAX_SELECT_COPIES", "MPT_JAX_SELECT_DIGITS",
                "MPT_JAX_MASK_BITS"):
        monkeypatch.delenv(key, raising=False)
    assert select_variants.env_select() == "auto"
    assert select_variants.env_copies() is None
    assert select_variants.env_digits() == select.SCATTER_DIGITS
    monkeypatch.setenv("MPT_JAX_SELECT", "radix_compare")
    assert select_variants.env_select() == "radix_compare"
    monkeypatch.setenv("MPT_JAX_SELECT", "bogus")
    with pytest.raises(ValueError, match="MPT_JAX_SELECT"):
        select_variants.env_select()
    monkeypatch.setenv("MPT_JAX_SELECT_COPIES", "0")
    with pytest.raises(ValueError, match="MPT_JAX_SELECT_COPIES"):
        select_variants.kth_largest_radix_env(jnp.asarray(values), 1)
    for bad in ["16,16", "11,10", "17,14", "a,b", "0,31"]:
        monkeypatch.setenv("MPT_JAX_SELECT_DIGITS", bad)
        with pytest.raises(ValueError, match="MPT_JAX_SELECT_DIGITS.*summing to 31"):
            select_variants.env_digits()
    monkeypatch.setenv("MPT_JAX_MASK_BITS", "9")
    with pytest.raises(ValueError, match="MPT_JAX_MASK_BITS"):
        select_variants.env_mask_bits()
    # Knobs change the passes only: the same thresholds as a float64 sort.
    monkeypatch.setenv("MPT_JAX_SELECT_DIGITS", "16,15")
    monkeypatch.setenv("MPT_JAX_SELECT_COPIES", "4")
    for k in [1, 1234, 5000]:
        assert float(select_variants.kth_largest_radix_env(jnp.asarray(values), k)) == \
            _ref(values, k)


def numpy_topk(x: np.ndarray, keep_fraction: float) -> np.ndarray:
    flat = np.abs(x.astype(np.float64)).ravel()
    kept = flat.size - int(np.floor((1.0 - keep_fraction) * flat.size))
    return _stable_top(flat, kept).reshape(x.shape)


@pytest.mark.parametrize("method", ["compare_bcast", "compare_bcast8", "radix_many_env",
                                    "per_leaf:sort", "per_leaf:radix", "per_leaf:radix_compare",
                                    "per_leaf:kept_mask"])
def test_registered_mask_methods_keep_the_per_layer_sets(method, monkeypatch):
    select_variants.register_mask_methods()
    monkeypatch.setenv("MPT_JAX_SELECT_DIGITS", "16,15")
    rng = np.random.default_rng(0)
    tree = {"a": jnp.asarray(rng.standard_normal((1,)), jnp.float32),
            "b": jnp.asarray(np.round(rng.standard_normal((3, 3, 3, 4)) * 2) / 2, jnp.float32),
            "c": jnp.asarray(rng.standard_normal((2500,)), jnp.float32)}
    fn = jax.jit(masks.layer_masks, static_argnums=(1, 2, 3))
    for keep, block in ((0.2, select_many.BLOCK), (0.5, 7), (1.0, 7), (0.01, 7)):
        out = fn(tree, keep, method, block)
        for x, m in zip(jax.tree.leaves(tree), jax.tree.leaves(out)):
            np.testing.assert_array_equal(np.asarray(m), numpy_topk(np.asarray(x), keep),
                                          err_msg=f"{method} {keep} {block} {x.shape}")


def test_step_variant_maps_selects_and_knobs(monkeypatch):
    for key in ("MPT_JAX_SELECT", "MPT_JAX_SELECT_COPIES", "MPT_JAX_SELECT_DIGITS",
                "MPT_JAX_MASK_BITS"):
        monkeypatch.delenv(key, raising=False)
    sv = select_variants.step_variant
    assert sv("auto", "per_layer", "compare") == ("per_layer", "compare")
    assert sv("sort", "per_layer", "compare") == ("batched", "per_leaf:sort")
    assert sv("radix", "batched", "radix_many") == ("batched", "radix_many")
    monkeypatch.setenv("MPT_JAX_MASK_BITS", "6")
    assert sv("radix", "batched", "compare") == ("batched", "compare6")
    monkeypatch.setenv("MPT_JAX_SELECT_COPIES", "8")
    assert sv("radix", "batched", "radix_many") == ("batched", "radix_many_env")
    assert sv("auto", "per_layer", "compare") == ("batched", "per_leaf:radix")
    assert masks.check_method("per_leaf:kept_mask") == "per_leaf:kept_mask"
