"""Optimizers, schedules, trainable sets and the loss (mpt_jax.optim)."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpt_jax import config_utils, optim, train


def _config(**kw):
    c = config_utils.base_config()
    c.update(kw)
    return c


# ---------------------------------------------------------------------------
# Schedules: the reference's per-epoch values, worked out by hand


SPE = 7  # steps per epoch; the epoch schedule must be a step function of step // SPE


def _lr_at_epoch(config, epoch):
    sched = optim.make_schedule(config, SPE)
    values = [float(sched(epoch * SPE + j)) for j in (0, SPE // 2, SPE - 1)]
    assert values[0] == values[1] == values[2], "epoch schedule changed inside an epoch"
    return values[0]


@pytest.mark.parametrize("epoch,expected", [(0, 0.1), (50, 0.05), (99, 2.467e-5)])
def test_cifar_cosine_values(epoch, expected):
    c = _config(learning_rate=0.1, num_epochs=100, warmup_epochs=0, schedule="cosine")
    assert _lr_at_epoch(c, epoch) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("epoch,expected", [(0, 0.0512), (1, 0.1024), (2, 0.1536), (3, 0.2048),
                                            (4, 0.256), (6, 0.25593), (99, 6.998e-5)])
def test_imagenet_warmup_cosine_values(epoch, expected):
    c = _config(learning_rate=0.256, num_epochs=100, warmup_epochs=5, schedule="cosine")
    assert _lr_at_epoch(c, epoch) == pytest.approx(expected, rel=1e-3)


def test_imagenet_120_epochs_last_value():
    c = _config(learning_rate=0.256, num_epochs=120, warmup_epochs=5, schedule="cosine")
    assert _lr_at_epoch(c, 119) == pytest.approx(4.776e-5, rel=1e-3)


def test_constant_with_warmup():
    c = _config(learning_rate=0.2, num_epochs=10, warmup_epochs=4, schedule="constant")
    got = [_lr_at_epoch(c, e) for e in range(10)]
    want = [0.05, 0.1, 0.15, 0.2] + [0.2] * 6
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_step_granularity_interpolates():
    base, E, W = 0.256, 20, 2
    c = _config(learning_rate=base, num_epochs=E, warmup_epochs=W, schedule="cosine",
                schedule_granularity="step")
    sched = optim.make_schedule(c, SPE)
    # Warmup: base * (step + 1) / (W * SPE); then the cosine at the fractional epoch.
    for step in (0, 3, W * SPE - 1):
        assert float(sched(step)) == pytest.approx(base * (step + 1) / (W * SPE), rel=1e-5)
    for step in (W * SPE, W * SPE + 3, 11 * SPE + 5, E * SPE - 1):
        t = step / SPE
        want = base * 0.5 * (1 + math.cos(math.pi * (t - W) / (E - W)))
        assert float(sched(step)) == pytest.approx(want, rel=1e-4)


# ---------------------------------------------------------------------------
# SGD (coupled decay, first step v = g + wd p) / Adam (no decay), frozen leaves


def _params():
    rng = np.random.default_rng(0)
    return {"dense0": {"scores": jnp.asarray(rng.normal(size=(3, 4)))},
            "bn0": {"scale": jnp.asarray(1.0 + rng.normal(size=(4,))),
                    "bias": jnp.asarray(rng.normal(size=(4,)))}}


def _grads(seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), _params())


def test_sgd_coupled_decay_and_momentum(x64):
    lr, mu, wd = 0.1, 0.9, 1e-2
    c = _config(optimizer="sgd", learning_rate=lr, momentum=mu, weight_decay=wd,
                num_epochs=100, mode="biprop")
    tx = optim.make_optimizer(c, steps_per_epoch=10)
    params = _params()
    state = tx.init(params)
    g1, g2 = _grads(1), _grads(2)
    upd, state = tx.update(g1, state, params)
    p1 = optax.apply_updates(params, upd)
    upd, state = tx.update(g2, state, p1)
    p2 = optax.apply_updates(p1, upd)
    # float64 NumPy hand computation: v1 = g1 + wd p0; v2 = mu v1 + g2 + wd p1.
    p0 = np.asarray(params["dense0"]["scores"], np.float64)
    v1 = np.asarray(g1["dense0"]["scores"]) + wd * p0
    q1 = p0 - lr * v1
    v2 = mu * v1 + np.asarray(g2["dense0"]["scores"]) + wd * q1
    q2 = q1 - lr * v2
    np.testing.assert_allclose(np.asarray(p1["dense0"]["scores"]), q1, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(p2["dense0"]["scores"]), q2, rtol=1e-12, atol=1e-14)
    # Frozen BN leaves (no learn_batchnorm): exactly unchanged (no update, no decay).
    for name in ("scale", "bias"):
        np.testing.assert_array_equal(np.asarray(p2["bn0"][name]), np.asarray(params["bn0"][name]))


def test_adam_has_no_weight_decay(x64):
    lr, wd, eps = 1e-3, 0.5, 1e-8
    c = _config(optimizer="adam", learning_rate=lr, weight_decay=wd, num_epochs=10)
    params = _params()
    g = _grads(3)
    tx = optim.make_optimizer(c, steps_per_epoch=10)
    upd, _ = tx.update(g, tx.init(params), params)
    gs = np.asarray(g["dense0"]["scores"])
    # First Adam step: m_hat = g, v_hat = g^2 => update = -lr g / (|g| + eps); no wd * p term.
    np.testing.assert_allclose(np.asarray(upd["dense0"]["scores"]), -lr * gs / (np.abs(gs) + eps),
                               rtol=1e-10)
    # The optional coupled L2 adds wd * p to the gradient before Adam.
    c.adam_weight_decay = True
    tx = optim.make_optimizer(c, steps_per_epoch=10)
    upd, _ = tx.update(g, tx.init(params), params)
    gd = gs + wd * np.asarray(params["dense0"]["scores"])
    np.testing.assert_allclose(np.asarray(upd["dense0"]["scores"]), -lr * gd / (np.abs(gd) + eps),
                               rtol=1e-10)


def test_learn_batchnorm_trains_bn_with_decay(x64):
    lr, wd = 0.1, 1e-2
    c = _config(optimizer="sgd", learning_rate=lr, momentum=0.9, weight_decay=wd,
                learn_batchnorm=True, num_epochs=10)
    params, g = _params(), _grads(4)
    tx = optim.make_optimizer(c, steps_per_epoch=10)
    upd, _ = tx.update(g, tx.init(params), params)
    want = -lr * (np.asarray(g["bn0"]["scale"]) + wd * np.asarray(params["bn0"]["scale"]))
    np.testing.assert_allclose(np.asarray(upd["bn0"]["scale"]), want, rtol=1e-12)


# ---------------------------------------------------------------------------
# Trainable sets per mode (docs/method.md#what-trains) on a real model


def _model_params(**kw):
    c = _config(model="mlp", dataset="digits", precision="float32", **kw)
    c.model_options.hidden = (6, 5)
    c = config_utils.resolve(c)
    model = train.create_model(c, 10)
    # One compiled init instead of one small compilation per eager op of the forward pass.
    init = jax.jit(functools.partial(model.init, train=False))
    variables = init({"params": jax.random.PRNGKey(0)}, jnp.zeros((2, 4, 4, 1)))
    return c, variables


@pytest.mark.parametrize("kw,n_train,n_leaves", [
    (dict(mode="biprop"), 3, 3),                                   # scores only
    (dict(mode="biprop", bn_affine=True), 3, 7),                   # affine BN present, frozen
    (dict(mode="biprop", learn_batchnorm=True), 7, 7),             # "+BN": scores + 2 x (γ, β)
    (dict(mode="biprop", learn_batchnorm=True, tune_batchnorm=True), 4, 7),  # BN only
    (dict(mode="edgepopup"), 3, 3),
    (dict(mode="dense"), 7, 7),                                    # kernels + BN
    (dict(mode="binary_trained"), 7, 7),
])
def test_trainable_leaf_counts(kw, n_train, n_leaves):
    c, variables = _model_params(**kw)
    params = variables["params"]
    assert len(jax.tree.leaves(params)) == n_leaves
    assert optim.count_trainable(params, c)[0] == n_train
    # The optimizer really moves exactly those leaves.
    tx = optim.make_optimizer(c, steps_per_epoch=5)

    @jax.jit  # the first update from a fresh state, one compilation
    def first_update(params):
        return tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)[0]

    upd = first_update(params)
    moved = sum(bool(np.any(np.asarray(u) != 0)) for u in jax.tree.leaves(upd))
    assert moved == n_train
    if c.mode in ("biprop", "edgepopup"):  # random weights never reach the optimizer
        assert "frozen" in variables and "weight" not in str(jax.tree_util.tree_structure(params))


# ---------------------------------------------------------------------------
# Label-smoothed cross-entropy: CE against (1 - eps) onehot + eps / C


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothed_loss_matches_float64_reference(eps):
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(6, 10)) * 3
    labels = rng.integers(0, 10, size=6)
    got = np.asarray(optim.cross_entropy(jnp.asarray(logits, jnp.float32),
                                         jnp.asarray(labels), eps))
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -logp[np.arange(6), labels]
    want = (1 - eps) * nll + eps * (-logp).mean(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
