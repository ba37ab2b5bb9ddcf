"""Freezing a ticket: masks and alphas against float64 references, exactness against the
training-time model, and the requests make_ticket refuses."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax import ops
from mpt_jax import ticket as T
from mpt_jax.ticket import freeze, seed
from ticket_cases import CASES, KEEP, all_runs, training_logits


@jax.jit
def _biprop_kernels(weights, scores):
    """The training-time op on every layer, in one compiled program (as training runs it),
    rather than op by op."""
    return [ops.biprop_kernel(w, s, KEEP) for w, s in zip(weights, scores)]


@pytest.fixture(scope="module")
def runs():
    return all_runs()


def reference_mask(scores):
    """Float64 reference: the kept count n - floor((1 - k) n) of the largest |s|, ties to
    the lowest flat index. Returns (flat mask, descending flat order, kept count)."""
    n = scores.size
    kept = n - math.floor((1.0 - KEEP) * n)
    order = np.argsort(-np.abs(scores).reshape(-1), kind="stable")
    mask = np.zeros(n, bool)
    mask[order[:kept]] = True
    return mask, order, kept


def test_mask_and_alpha_match_float64_reference(runs):
    """Independent NumPy float64 reference (kept count, top-|s|, mean |W|)."""
    name, opts, shape, key, variables = runs["conv2_binact"]
    ticket = T.make_ticket(name, opts, variables, shape, mode="signs")
    params = variables["params"]
    frozen = variables["frozen"]
    assert len(ticket.layers) == 5
    effective = _biprop_kernels([frozen[lt.path[0]]["weight"] for lt in ticket.layers],
                                [params[lt.path[0]]["scores"] for lt in ticket.layers])
    for lt, eff in zip(ticket.layers, effective):
        s = np.asarray(params[lt.path[0]]["scores"], np.float64)
        w = np.asarray(frozen[lt.path[0]]["weight"], np.float64)
        mask = reference_mask(s)[0].reshape(s.shape)
        np.testing.assert_array_equal(lt.mask, mask)
        alpha = np.abs(w)[mask].mean()
        np.testing.assert_allclose(float(lt.alpha), alpha, rtol=2e-6)
        np.testing.assert_array_equal(lt.ternary(), np.sign(w) * mask)
        # The effective kernel equals the training-time op's.
        np.testing.assert_allclose(lt.kernel(), np.asarray(eff), rtol=1e-6, atol=0)


def test_kept_weight_that_is_exactly_zero(runs, tmp_path):
    """sign(0) = 0: a kept weight of exactly 0 contributes nothing, so the ticket stores it
    as pruned, with alpha still the mean |W| over the whole kept set (the zeros included,
    float64 reference), and reproduces the model's logits bit for bit. (PyTorch's normal_
    draws exact zeros; reference checkpoints of big models have some.)"""
    name, opts, shape, key, variables = runs["conv2_binact"]
    layer = "conv1"
    params, frozen = variables["params"], dict(variables["frozen"])
    mask, order, kept = reference_mask(np.asarray(params[layer]["scores"], np.float64))
    w = np.array(frozen[layer]["weight"], np.float32)
    zeroed = order[[0, 5, kept - 1]]  # three kept entries, the last one at the threshold
    w.reshape(-1)[zeroed] = 0.0
    frozen[layer] = dict(weight=jnp.asarray(w))
    variables = dict(variables, frozen=frozen)
    images = np.random.default_rng(5).standard_normal((4, *shape)).astype(np.float32)
    ref = training_logits(name, opts, variables, images)
    ticket = T.make_ticket(name, opts, variables, shape, mode="signs")
    lt = ticket.layer(layer)
    alpha = np.abs(w.astype(np.float64)).reshape(-1)[mask].mean()  # zeros included
    np.testing.assert_allclose(float(lt.alpha), alpha, rtol=2e-6)
    mask[zeroed] = False
    np.testing.assert_array_equal(lt.mask.reshape(-1), mask)
    assert lt.kept == kept - 3
    T.save_ticket(ticket, tmp_path / "z.mptk")
    out = T.predict_fn(T.load_ticket(tmp_path / "z.mptk"))(images)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def test_ticket_for_another_model_is_refused(runs):
    name, opts, shape, key, variables = runs["mlp_binact"]
    ticket = T.make_ticket(name, opts, variables, shape, mode="signs")
    ticket.model_options = dict(ticket.model_options, hidden=[48, 33])
    with pytest.raises(T.TicketError, match="shape"):
        T.inference_model(ticket)
    with pytest.raises(T.TicketError, match="biprop"):
        T.make_ticket(name, dict(opts, mode="edgepopup"), variables, shape)
    with pytest.raises(T.TicketError, match="init key"):
        T.make_ticket(name, opts, variables, shape, mode="seed", init_key=T.run_init_key(99))


@pytest.mark.parametrize("case", list(CASES))
def test_inexact_ticket_has_the_exported_sizes(runs, case, monkeypatch):
    """exact=False (the end-of-run summary) gives the exported ticket's masks, signs, byte
    size and summary rows, alpha to float32 rounding, and compiles neither check."""
    name, opts, shape, key, variables = runs[case]
    full = T.make_ticket(name, opts, variables, shape, mode="seed", init_key=key)

    def refuse(*args, **kwargs):
        raise AssertionError("exact=False must not run the compiled exactness checks")

    # Patched where make_ticket looks them up (the package's re-exports are other names).
    monkeypatch.setattr(freeze, "training_kernels", refuse)
    monkeypatch.setattr(seed, "regenerate_frozen", refuse)
    fast = T.make_ticket(name, opts, variables, shape, mode="seed", init_key=key, exact=False)
    assert [lt.name for lt in fast.layers] == [lt.name for lt in full.layers]
    for a, b in zip(fast.layers, full.layers):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.signs[a.mask], b.signs[b.mask])
        assert float(a.alpha) == pytest.approx(float(b.alpha), rel=1e-6)
    assert len(T.ticket_bytes(fast)) == len(T.ticket_bytes(full))
    assert T.summary(fast)["layers"] == T.summary(full)["layers"]
    with pytest.raises(AssertionError, match="exactness checks"):
        T.make_ticket(name, opts, variables, shape, mode="seed", init_key=key)


def test_global_pruning_ticket_matches_model():
    name, shape = "mlp_binact", (8, 8, 1)
    opts = dict(hidden=(24,), keep_fraction=0.4, pruning="global", num_classes=10)
    key = T.run_init_key(1)
    variables = dict(T.init_variables(name, opts, shape, key))
    scores = [variables["params"][m]["scores"] for m in ("dense0", "classifier")]
    tau = jax.jit(ops.global_threshold, static_argnums=(1,))(scores, 0.4)
    variables["pruning"] = jax.tree_util.tree_map(lambda _: tau, variables["pruning"])
    images = np.random.default_rng(2).standard_normal((3, *shape)).astype(np.float32)
    ref = training_logits(name, opts, variables, images)
    ticket = T.make_ticket(name, opts, variables, shape, mode="signs")
    total_kept = sum(lt.kept for lt in ticket.layers)
    n = sum(int(np.prod(lt.shape)) for lt in ticket.layers)
    assert total_kept == n - math.floor(0.6 * n)  # one global threshold
    out = T.predict_fn(T.ticket_from_bytes(T.ticket_bytes(ticket)))(images)
    chex.assert_trees_all_close(out, ref, rtol=1e-6, atol=1e-6)
