"""mpt_jax.layers: initialisers and the conv / dense layers (docs/method.md, decisions.md#padding).

References are float64 NumPy written from the method's equations (direct convolution loops,
stable argsort masks), never the code under test.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax import layers, masks


# ---------------------------------------------------------------------------
# float64 references


def ref_biprop(weight, scores, k):
    w = np.asarray(weight, np.float64)
    a = np.abs(np.asarray(scores, np.float64)).ravel()
    kept = w.size - math.floor((1.0 - k) * w.size)
    m = np.zeros(a.size, bool)
    m[np.argsort(-a, kind="stable")[:kept]] = True
    m = m.reshape(w.shape)
    return np.abs(w)[m].mean() * np.sign(w) * m


def ref_conv_nhwc_hwio(x, kernel, stride, pad):
    """Direct cross-correlation, symmetric zero padding (PyTorch Conv2d semantics)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    kh, kw, _, cout = kernel.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, cout))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, kernel)
    return out


def _init(module, x, seed=0):
    return module.init({"params": jax.random.key(seed)}, jnp.asarray(x))


# ---------------------------------------------------------------------------
# Score initialisation: U(-b, b), b = 1 / sqrt(fan_in)


@pytest.mark.parametrize("shape,bound", [((3, 3, 3, 64), 0.19245), ((3, 3, 64, 64), 0.041667),
                                         ((16384, 32), 0.0078125)])
def test_score_init_bound(shape, bound):
    fan_in = math.prod(shape[:-1])
    assert 1.0 / math.sqrt(fan_in) == pytest.approx(bound, rel=2e-5)  # worked out by hand
    s = np.asarray(layers.score_init(jax.random.key(1), shape), np.float64)
    assert s.shape == shape and s.dtype == np.float64
    assert np.abs(s).max() <= 1.0 / math.sqrt(fan_in)
    # Uniform(-b, b) on >= 1728 entries: the max |s| is within 1 % of b (P(fail) < 1e-7),
    # the std is b / sqrt(3).
    assert np.abs(s).max() >= 0.99 * bound
    assert s.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert abs(s.mean()) < 0.1 * bound


def test_score_init_uses_fan_in_of_the_shape_for_dense():
    s = np.asarray(layers.score_init(jax.random.key(2), (27, 5000)))
    assert np.abs(s).max() <= 1 / math.sqrt(27)
    assert np.abs(s).max() >= 0.99 / math.sqrt(27)


# ---------------------------------------------------------------------------
# Random weights (docs/method.md#initialisation)

BIG_FIRST_CONV = (3, 3, 3, 4096)  # fan_in 27 like the first CIFAR conv; 110,592 samples


@pytest.mark.parametrize("scale_fan,sigma", [("none", 0.27217), ("reference", 0.30429),
                                             ("kept", 0.60858), (True, 0.30429),
                                             (False, 0.27217)])
def test_kaiming_normal_std(scale_fan, sigma):
    k = 0.2
    std = layers.weight_std((3, 3, 3, 64), k, "fan_in", scale_fan)
    assert std == pytest.approx(sigma, abs=5e-6)
    w = np.asarray(layers.random_weight_init("kaiming_normal", k, "fan_in", scale_fan)(
        jax.random.key(3), BIG_FIRST_CONV), np.float64)
    # sample std of 110,592 normals: relative standard error ~0.2 %
    assert w.std() == pytest.approx(sigma, rel=0.01)
    assert abs(w.mean()) < 0.01 * sigma


def test_kaiming_normal_fan_out_mode():
    shape = (3, 3, 16, 2048)
    sigma = math.sqrt(2.0) / math.sqrt(2048 * 9)
    assert layers.weight_std(shape, 0.5, "fan_out", "none") == pytest.approx(sigma, rel=1e-12)
    w = np.asarray(layers.random_weight_init("kaiming_normal", 0.5, "fan_out")(
        jax.random.key(4), shape), np.float64)
    assert w.std() == pytest.approx(sigma, rel=0.01)
    # dense (in, out): fan_out = out
    assert layers.weight_std((100, 30), 0.5, "fan_out") == pytest.approx(math.sqrt(2 / 30))
    assert layers.weight_std((100, 30), 0.5, "fan_in") == pytest.approx(math.sqrt(2 / 100))


@pytest.mark.parametrize("scale_fan", ["none", "reference", "kept"])
def test_signed_constant(scale_fan):
    k = 0.2
    sigma = layers.weight_std(BIG_FIRST_CONV, k, "fan_in", scale_fan)
    w = np.asarray(layers.random_weight_init("signed_constant", k, "fan_in", scale_fan)(
        jax.random.key(5), BIG_FIRST_CONV))
    np.testing.assert_allclose(np.abs(w), sigma, rtol=1e-6)
    assert abs((w > 0).mean() - 0.5) < 0.01  # fair signs (docs/decisions.md#signed-constant)


def test_unsigned_constant():
    sigma = math.sqrt(2.0 / 27)
    init = layers.random_weight_init("unsigned_constant", 0.5)
    w = np.asarray(init(jax.random.key(6), (3, 3, 3, 8)))
    np.testing.assert_allclose(w, sigma, rtol=1e-6)


def test_init_bad_options_raise():
    with pytest.raises(ValueError, match="keep_fraction"):
        layers.weight_std((3, 3, 3, 8), 1.0, "fan_in", "reference")
    with pytest.raises(ValueError, match="keep_fraction"):
        layers.random_weight_init("kaiming_normal", 1.0, "fan_in", "reference")(
            jax.random.key(0), (3, 3, 3, 8))
    with pytest.raises(ValueError, match="scale_fan"):
        layers.weight_std((3, 3, 3, 8), 0.5, "fan_in", "sideways")
    with pytest.raises(ValueError, match="fan_mode"):
        layers.weight_std((3, 3, 3, 8), 0.5, "fan_avg")
    with pytest.raises(ValueError, match="init"):
        layers.random_weight_init("xavier")
    # Layer options are checked when they are built (before any init).
    with pytest.raises(ValueError, match="mode"):
        layers.KernelOptions(mode="ternary")
    with pytest.raises(ValueError, match="keep_fraction"):
        layers.KernelOptions(keep_fraction=0.0)
    with pytest.raises(ValueError, match="pruning"):
        layers.KernelOptions(rule=masks.rule_for_pruning("random"))


# ---------------------------------------------------------------------------
# Layers


@pytest.mark.parametrize("kernel_size,stride,hw,padding", [(3, 2, 8, None), (3, 2, 9, 1),
                                                            (1, 2, 8, None), (3, 1, 5, None),
                                                            (5, 2, 10, None)])
def test_conv_symmetric_padding_matches_pytorch(kernel_size, stride, hw, padding):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, hw, hw, 3)).astype(np.float32)
    conv = layers.BipropConv(features=4, kernel_size=kernel_size, strides=stride, padding=padding,
                             options=layers.KernelOptions(mode="dense"))
    variables = _init(conv, x)
    kernel = np.asarray(variables["params"]["kernel"])
    assert kernel.shape == (kernel_size, kernel_size, 3, 4)
    y = np.asarray(conv.apply(variables, jnp.asarray(x)))
    pad = (kernel_size - 1) // 2 if padding is None else padding
    want = ref_conv_nhwc_hwio(x, kernel, stride, pad)
    assert y.shape == want.shape  # e.g. 8x8, 3x3/2, pad 1 -> 4x4 (XLA "SAME" would pad (0, 1))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["biprop", "edgepopup"])
def test_conv_subnetwork_modes_use_masked_kernel(mode):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    conv = layers.BipropConv(features=5, kernel_size=3, strides=2,
                             options=layers.KernelOptions(mode=mode, keep_fraction=0.3))
    variables = _init(conv, x)
    assert set(variables) == {"params", "frozen"}
    assert set(variables["params"]) == {"scores"} and set(variables["frozen"]) == {"weight"}
    w = np.asarray(variables["frozen"]["weight"])
    s = np.asarray(variables["params"]["scores"])
    assert w.shape == s.shape == (3, 3, 3, 5)
    assert np.abs(s).max() <= 1 / math.sqrt(27)
    if mode == "biprop":
        kernel = ref_biprop(w, s, 0.3)
    else:
        kernel = np.asarray(w, np.float64) * (ref_biprop(np.ones_like(w), s, 0.3) != 0)
    y = np.asarray(conv.apply(variables, jnp.asarray(x)))
    np.testing.assert_allclose(y, ref_conv_nhwc_hwio(x, kernel, 2, 1), rtol=1e-5, atol=1e-5)
    # The score gradient of the layer is sign(s) * W * dL/dkernel (docs/method.md): for
    # L = sum(y * g), dL/dkernel is the correlation of x with g.
    g = rng.standard_normal(y.shape).astype(np.float32)
    ds = jax.grad(lambda p: jnp.sum(conv.apply({"params": p, "frozen": variables["frozen"]},
                                               jnp.asarray(x)) * g))(variables["params"])["scores"]
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    dkernel = np.zeros((3, 3, 3, 5))
    for i in range(y.shape[1]):
        for j in range(y.shape[2]):
            patch = xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
            dkernel += np.einsum("bhwc,bo->hwco", patch, g[:, i, j, :])
    np.testing.assert_allclose(np.asarray(ds), np.sign(s) * w * dkernel, rtol=1e-4, atol=1e-6)


def test_conv_weight_init_follows_options():
    x = jnp.ones((1, 4, 4, 16))
    conv = layers.BipropConv(features=256, kernel_size=3, options=layers.KernelOptions(
        keep_fraction=0.2, weight_init="kaiming_normal", scale_fan="reference"))
    w = np.asarray(_init(conv, x)["frozen"]["weight"], np.float64)
    assert w.std() == pytest.approx(math.sqrt(2.0 / (144 * 0.8)), rel=0.02)
    conv = layers.BipropConv(features=8, kernel_size=3, options=layers.KernelOptions(
        keep_fraction=0.2, weight_init="signed_constant"))
    w = np.asarray(_init(conv, x)["frozen"]["weight"])
    np.testing.assert_allclose(np.abs(w), math.sqrt(2.0 / 144), rtol=1e-6)


@pytest.mark.parametrize("mode", ["dense", "binary_trained", "biprop", "edgepopup"])
def test_dense_layer(mode):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((4, 12)).astype(np.float32)
    dense = layers.BipropDense(features=7,
                               options=layers.KernelOptions(mode=mode, keep_fraction=0.4))
    variables = _init(dense, x)
    if mode in ("dense", "binary_trained"):
        assert set(variables) == {"params"} and set(variables["params"]) == {"kernel"}
        w = np.asarray(variables["params"]["kernel"], np.float64)
        kernel = w if mode == "dense" else np.abs(w).mean() * np.sign(w)
    else:
        assert set(variables) == {"params", "frozen"}
        assert set(variables["params"]) == {"scores"}
        w = np.asarray(variables["frozen"]["weight"])
        s = np.asarray(variables["params"]["scores"])
        kernel = ref_biprop(w, s, 0.4)
        if mode == "edgepopup":
            kernel = np.asarray(w, np.float64) * (kernel != 0)
    assert kernel.shape == (12, 7)
    y = np.asarray(dense.apply(variables, jnp.asarray(x)))
    np.testing.assert_allclose(y, x.astype(np.float64) @ kernel, rtol=1e-5, atol=1e-6)


def test_global_pruning_layer_reads_threshold_from_pruning_collection():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 20)).astype(np.float32)
    dense = layers.BipropDense(features=6,
                               options=layers.KernelOptions(rule=masks.GlobalThreshold()))
    variables = _init(dense, x)
    assert set(variables) == {"params", "frozen", "pruning"}
    assert float(variables["pruning"]["threshold"]) == -np.inf  # keeps everything until set
    w = np.asarray(variables["frozen"]["weight"], np.float64)
    s = np.asarray(variables["params"]["scores"], np.float64)
    y_all = np.asarray(dense.apply(variables, jnp.asarray(x)))
    np.testing.assert_allclose(y_all, x @ (np.abs(w).mean() * np.sign(w)), rtol=1e-5, atol=1e-6)
    tau = float(np.median(np.abs(s)))
    variables = {**variables, "pruning": {"threshold": jnp.asarray(tau, jnp.float32)}}
    m = np.abs(np.asarray(variables["params"]["scores"])) > np.float32(tau)
    kernel = np.abs(w)[m].mean() * np.sign(w) * m
    y = np.asarray(dense.apply(variables, jnp.asarray(x)))
    np.testing.assert_allclose(y, x @ kernel, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_variables():
    x = jnp.ones((2, 6, 6, 3))
    conv = layers.BipropConv(features=4, dtype=jnp.bfloat16)
    variables = _init(conv, x)
    assert variables["params"]["scores"].dtype == jnp.float32
    assert variables["frozen"]["weight"].dtype == jnp.float32
    assert conv.apply(variables, x).dtype == jnp.bfloat16
