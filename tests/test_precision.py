"""Mixed precision: bf16 compute, float32 scores / BN statistics / optimizer state.

config.precision = "bfloat16" makes every conv / dense / BatchNorm of the model compute in
bfloat16 (the model's ``dtype`` option) while every variable stays float32. A few training
steps (SGD 0.1, momentum 0.9) of two small models — conv2 (convs + dense, no BN) and
resnet20_cifar (BN, shortcuts) — in bf16 and in fp32, on the same random batches, must agree:

* Loss of the first step (identical parameters, forward only differs): within 1e-2
  relative. bf16 has unit roundoff u = 2**-9 ~ 2e-3; the logits pass ~20 rounded layers and
  BN renormalises every layer, so the loss moves by a few u at most (measured: ~1e-4).
* Loss of every later step: within 2e-2 relative (measured: <= 6e-3).
* Change of the scores over the steps (what training did): these networks are chaotic in
  their score gradients at initialisation — rounding only the INPUT images to bf16, in a
  pure fp32 run, already changes the score update of resnet20 by ~55 % in relative L2
  norm (measured on CPU; unrelated data gives ~100 %). So the tolerance is stated against
  that intrinsic sensitivity: bf16 compute may change the score update by at most
  2 x (input-rounding-only change) + 0.05 (measured ratio ~1.1). A bf16 *storage* bug
  (scores or momentum kept in bf16: updates of ~1e-3 on scores of ~1e-1 would round away)
  or a broken bf16 gradient breaks this bound, and the dtype test below catches it directly.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from mpt_jax import config_utils, optim, train

STEPS = 4
CASES = {  # name -> (model, image shape, batch, model_options)
    "conv2": ("conv2", (16, 16, 3), 16, {"width_mult": 0.25}),
    "resnet20": ("resnet20_cifar", (32, 32, 3), 32, {}),
}


def _config(model: str, batch: int, precision: str, options=None):
    c = common.cifar10_config(model)
    c.keep_fraction = 0.5
    c.batch_size = batch
    c.precision = precision
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4
    for key, value in (options or {}).items():
        c.model_options[key] = value
    return config_utils.resolve(c)


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@functools.lru_cache(maxsize=None)
def _setup(case: str, precision: str):
    """(model, initial state, jitted step); cached so the two fp32 runs compile once."""
    model_name, image, batch, options = CASES[case]
    config = _config(model_name, batch, precision, options)
    model = train.create_model(config, 10)
    tx = optim.make_optimizer(config, 100)
    state = train.create_train_state(config, model, tx, jax.random.PRNGKey(0), image)
    step = jax.jit(train.make_steps(config, model, tx)[0])
    return model, state, step


def _train(case: str, precision: str, round_inputs: bool = False):
    _, image, batch, _ = CASES[case]
    model, state, step = _setup(case, precision)  # step does not donate: state reusable
    initial = _flat(state.params)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(STEPS):
        x = jnp.asarray(rng.standard_normal((batch, *image)), jnp.float32)
        if round_inputs:
            x = x.astype(jnp.bfloat16).astype(jnp.float32)
        y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
        state, metrics = step(state, dict(image=x, label=y))
        losses.append(float(metrics["loss"]))
    return dict(model=model, state=state, initial=initial, losses=np.asarray(losses),
                delta=_flat(state.params) - initial)


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    name = request.param
    return name, dict(fp32=_train(name, "float32"), bf16=_train(name, "bfloat16"),
                      fp32_rounded=_train(name, "float32", round_inputs=True))


def test_precision_auto_is_float32_on_cpu():
    assert jax.default_backend() == "cpu"
    assert train.compute_dtype(_config("conv2", 8, "auto")) == jnp.float32
    assert train.compute_dtype(_config("conv2", 8, "bfloat16")) == jnp.bfloat16
    assert train.compute_dtype(_config("conv2", 8, "float32")) == jnp.float32


def test_bf16_mode_really_computes_in_bf16(case):
    # Without this the agreement test would pass trivially.
    name, runs = case
    image = CASES[name][1]
    x = jnp.zeros((2, *image), jnp.float32)
    for key, want_bf16 in (("bf16", True), ("fp32", False)):
        run = runs[key]
        jaxpr = str(jax.make_jaxpr(lambda v, m=run["model"]: m.apply(v, x, train=False))(
            run["state"].variables()))
        convs = [ln for ln in jaxpr.splitlines() if "conv_general_dilated" in ln]
        assert convs
        assert all(("bf16" in ln) == want_bf16 for ln in convs), (key, convs[:1])


def test_variables_and_optimizer_state_stay_float32(case):
    _, runs = case
    state = runs["bf16"]["state"]
    for name in ("params", "frozen", "batch_stats", "opt_state"):
        leaves = [x for x in jax.tree.leaves(getattr(state, name))
                  if jnp.issubdtype(x.dtype, jnp.floating)]
        if name != "batch_stats":  # conv2 has no BatchNorm
            assert leaves, name
        assert all(x.dtype == jnp.float32 for x in leaves), (
            name, sorted({str(x.dtype) for x in leaves}))


def test_bf16_and_fp32_training_agree(case):
    name, runs = case
    fp32, bf16, rounded = runs["fp32"], runs["bf16"], runs["fp32_rounded"]
    np.testing.assert_array_equal(fp32["initial"], bf16["initial"])  # same float32 init
    assert np.all(np.isfinite(bf16["losses"]))
    np.testing.assert_allclose(bf16["losses"][0], fp32["losses"][0], rtol=1e-2)
    np.testing.assert_allclose(bf16["losses"], fp32["losses"], rtol=2e-2)
    assert not np.array_equal(bf16["losses"], fp32["losses"])  # bf16 changed the arithmetic
    bf16_change = _rel(bf16["delta"], fp32["delta"])
    intrinsic = _rel(rounded["delta"], fp32["delta"])
    print(f"{name}: score update differs by {bf16_change:.3f} (bf16) vs {intrinsic:.3f} "
          f"(fp32, inputs rounded to bf16)")
    assert bf16_change <= 2.0 * intrinsic + 0.05, (bf16_change, intrinsic)
    assert np.linalg.norm(bf16["delta"]) > 0.5 * np.linalg.norm(fp32["delta"])  # it trained
