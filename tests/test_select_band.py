"""The warm-started top-k search (mpt_jax.select_band, mask_method "warm", mpt_jax.warm_masks):
over a simulated run of small and large score updates, ties and all-equal layers, every
step's kept sets and thresholds equal a float64 NumPy sort's, whether the band search or the
full-select fallback served the step; the training step carries the thresholds, trains
exactly as radix_many, and keeps them out of checkpoints."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization
from test_select_pallas import kth_code, make, stable_topk, training_is_identical

from mpt_jax import masks, select_band, select_blocks, select_many, warm_masks

SHAPES = [(1,), (2,), (7,), (3, 3, 3, 4), (1031,), (2500,), (300, 17)]


def _update(leaves, draw, rng):
    """The next step's scores: mostly small moves of every size, sometimes a jump, a frozen
    step, a layer made of ties or of one value."""
    scale = [0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.3][draw % 8]
    out = [x + scale * rng.standard_normal(x.shape).astype(np.float32) for x in leaves]
    if draw % 5 == 3:
        out[5] = np.round(out[5] * 8) / 8                 # heavy ties
    if draw % 7 == 4:
        out[4] = np.full_like(out[4], 0.25)               # all equal
    if draw % 11 == 6:
        out[6] = out[6] * 50.0                            # one layer jumps
    return [x.astype(np.float32) for x in out]


def test_warm_sequence_matches_the_full_select():
    rng = np.random.default_rng(0)
    leaves = [make("uniform", s, rng) for s in SHAPES]
    sizes = [x.size for x in leaves]
    fn = jax.jit(lambda ls, ks, prev: select_band.warm_search(ls, ks, prev, 128))
    previous = jnp.zeros((len(SHAPES),), jnp.int32)
    served = []
    for draw in range(40):
        keep = [0.2, 0.5, 0.01, 1.0][draw // 10]           # the kept counts change too
        ks = [masks.kept_count(n, keep) for n in sizes]
        out, previous, in_band = fn([jnp.asarray(x) for x in leaves], jnp.asarray(ks), previous)
        for x, k, m, t in zip(leaves, ks, out, np.asarray(previous)):
            np.testing.assert_array_equal(np.asarray(m), stable_topk(x, k),
                                          err_msg=f"draw {draw} {x.shape} k={k}")
            assert int(t) == kth_code(x, k), (draw, x.shape, k)
        served.append(bool(in_band))
        leaves = _update(leaves, draw, rng)
    # Both branches ran: the band search on most steps, the fallback on the first, after
    # jumps and when the kept counts change.
    print("band search served", "".join("B" if s else "f" for s in served))
    assert not served[0] and sum(served) >= 15 and sum(not s for s in served) >= 10, served


def test_any_previous_thresholds_give_the_same_masks():
    # Hints far below, far above, at the extremes of the code range, or exact.
    rng = np.random.default_rng(1)
    leaves = [jnp.asarray(make(kind, s, rng)) for kind, s in
              zip(("ties", "uniform", "denormal", "wide"), [(1000,), (7,), (300,), (2049,)])]
    ks = [250, 7, 10, 1]
    exact = [kth_code(np.asarray(x), k) for x, k in zip(leaves, ks)]
    fn = jax.jit(lambda prev: select_band.warm_search(leaves, ks, prev))
    for previous, band in [(exact, True), ([0] * 4, False), ([2 ** 31 - 1] * 4, False),
                           ([-5] * 4, False), ([c + 3000 for c in exact], True),
                           ([c - 2 ** 21 for c in exact], False)]:
        out, t, in_band = fn(jnp.asarray(previous, jnp.int32))
        assert bool(in_band) == band, previous
        assert np.asarray(t).tolist() == exact
        for x, k, m in zip(leaves, ks, out):
            np.testing.assert_array_equal(np.asarray(m), stable_topk(np.asarray(x), k))


def test_edges_and_locate():
    edges = np.asarray(select_band.edges_around(jnp.asarray([0, 5, 2 ** 31 - 1, -7, 2 ** 28])))
    assert edges.min() >= 0 and edges.max() <= 2 ** 31 - 1
    assert np.all(np.diff(edges, axis=1) > 0)
    assert np.all(np.diff(edges, axis=1) < 2 ** select_band.band_bits())
    assert edges[4, len(select_band.EDGE_OFFSETS) // 2] == 2 ** 28  # centred on the hint
    with pytest.raises(ValueError, match="strictly increasing"):
        select_band.edges_around(jnp.zeros((1,), jnp.int32), (0, 8, 8))
    # totals[l, j] = #{code >= edge j}; k = 5: layer 0 between edges 1 and 2, layer 1 below
    # the lowest edge, layer 2 at or above the highest.
    totals = jnp.asarray([[9, 6, 4, 0], [4, 3, 1, 0], [9, 9, 9, 9]])
    edges = jnp.asarray([[10, 20, 30, 40]] * 3)
    in_band, lo, hi, above_hi = select_band.locate(totals, edges, jnp.asarray([5, 5, 5]))
    assert np.asarray(in_band).tolist() == [True, False, False]
    assert (int(lo[0]), int(hi[0]), int(above_hi[0])) == (20, 30, 4)


def test_band_radix_counts_only_its_interval():
    rng = np.random.default_rng(2)
    x = np.abs(make("ties", (500,), rng))
    codes = x.view(np.int32)
    layout = select_blocks.BlockLayout([x.size], 64)
    blocked = select_blocks.blocked_codes([jnp.asarray(codes)], layout)
    lo, hi = int(np.sort(codes)[100]), int(np.sort(codes)[400])
    inside = np.sort(codes[(codes >= lo) & (codes < hi)])
    for k in (1, inside.size // 2, inside.size):
        t, above = select_band.band_radix(blocked, layout, jnp.asarray([k]), jnp.asarray([lo]),
                                          jnp.asarray([hi]), (10, 11, 10))
        assert int(t[0]) == int(inside[inside.size - k])
        assert int(above[0]) == int(np.sum(inside > inside[inside.size - k]))


def test_stateless_warm_method():
    rng = np.random.default_rng(3)
    leaves = [jnp.asarray(make(kind, s, rng)) for kind, s in zip(("ties", "equal"), SHAPES[3:5])]
    for m, x, k in zip(select_many.topk_masks(leaves, [30, 500], "warm", 7), leaves, [30, 500]):
        np.testing.assert_array_equal(np.asarray(m), stable_topk(np.asarray(x), k))


def test_training_carries_the_thresholds_and_trains_as_radix_many():
    state = training_is_identical("warm")
    carried = state.mask_state
    assert carried["thresholds"].shape == (len(masks.score_paths(state.params)),)
    assert int(carried["band_steps"]) == 2  # steps 2 and 3 started from step 1's thresholds
    for path, t in zip(masks.score_paths(state.params), np.asarray(carried["thresholds"])):
        node = state.params
        for key in path:
            node = node[key]
        # the thresholds of the scores that step 3 saw (before its update): close to now
        assert abs(int(t) - kth_code(np.asarray(node), masks.kept_count(node.size, 0.3))) < 2 ** 20
    # Checkpoints leave the hint out, and restore without it.
    saved = serialization.to_state_dict(state)
    assert "mask_state" not in saved and "params" in saved
    restored = serialization.from_state_dict(state.replace(mask_state=warm_masks.initial_state(
        state.params)), saved)
    assert int(restored.mask_state["band_steps"]) == 0
    assert all(np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params)))
