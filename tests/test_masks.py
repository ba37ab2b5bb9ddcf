"""Mask rules and the batched masks of all layers at once (mpt_jax.masks) and the
mask_impl="batched" training step: exactly the per-layer kept sets, and bit-identical training."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from mpt_jax import config_utils, masks, ops, optim, train

# The benchmark-only methods (compare_bcast, ...) are tested in test_select_variants.py.
METHODS = ("compare", "compare1", "compare6", "radix_many", "per_layer")


def numpy_topk(x: np.ndarray, keep_fraction: float) -> np.ndarray:
    """Independent reference: the first kept entries of a stable descending sort of |x|
    (float64), kept = n - floor((1 - k) n) (docs/decisions.md#kept-count)."""
    flat = np.abs(x.astype(np.float64)).ravel()
    kept = flat.size - int(np.floor((1.0 - keep_fraction) * flat.size))
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.size, bool)
    mask[order[:kept]] = True
    return mask.reshape(x.shape)


def random_tree(seed: int, ties: bool):
    rng = np.random.default_rng(seed)
    shapes = {"a": (1,), "b": (3, 3, 3, 4), "c": {"d": (2500,), "e": (7,)}, "f": (300, 17)}

    def make(shape):
        x = rng.standard_normal(shape).astype(np.float32)
        if ties:  # few distinct magnitudes: many ties at every threshold, also -0.0 / 0.0
            x = np.round(x * 2) / 2
        return jnp.asarray(x)

    return jax.tree.map(make, shapes, is_leaf=lambda s: isinstance(s, tuple))


# Compiled once per (shapes, keep fraction, method, block) and shared by the tests and
# their parametrisations; op by op, every primitive of every leaf shape compiles on its own.
_layer_masks = jax.jit(masks.layer_masks, static_argnums=(1, 2, 3))
# The per-layer top-k of one leaf, its kept count traced: one compile per leaf shape.
_topk_of_abs = jax.jit(lambda x, kept: ops.topk_mask(jnp.abs(x), kept))


@pytest.mark.parametrize("method", METHODS)
def test_layer_masks_equal_per_layer_topk(method):
    fn = _layer_masks
    trees = {False: random_tree(0, False), True: random_tree(1, True)}
    # block 7: layers span many blocks and the tie cut falls inside a block.
    for ties, keep, block in ((False, 0.2, masks.BLOCK), (True, 0.5, 7), (True, 1.0, 7),
                              (False, 0.01, 7), (True, 0.2, masks.BLOCK)):
        tree = trees[ties]
        out = fn(tree, keep, method, block)
        chex.assert_trees_all_equal_structs(out, tree)
        for x, m in zip(jax.tree.leaves(tree), jax.tree.leaves(out)):
            assert m.dtype == jnp.bool_ and m.shape == x.shape
            want = numpy_topk(np.asarray(x), keep)
            np.testing.assert_array_equal(np.asarray(m), want,
                                          err_msg=f"{method} {keep} {block} {x.shape}")
            kept = ops.kept_count(x.size, keep)
            np.testing.assert_array_equal(
                np.asarray(m), np.asarray(_topk_of_abs(x, jnp.int32(kept))))


def test_layer_masks_all_equal_scores_and_bf16_input():
    # Every entry tied: the kept set is the lowest flat indices.
    tree = [jnp.full((5000,), 0.25, jnp.float32), jnp.zeros((9,), jnp.float32)]
    for method in ("compare", "radix_many"):
        out = _layer_masks(tree, 0.3, method, masks.BLOCK)
        for x, m in zip(tree, out):
            np.testing.assert_array_equal(np.asarray(m), numpy_topk(np.asarray(x), 0.3))
    x = jnp.asarray(np.random.default_rng(3).standard_normal((40, 9)), jnp.bfloat16)
    m = jax.jit(masks.layer_masks, static_argnums=1)({"s": x}, 0.25)["s"]  # default method
    np.testing.assert_array_equal(np.asarray(m),
                                  numpy_topk(np.asarray(x.astype(jnp.float32)), 0.25))


def test_bad_arguments():
    with pytest.raises(ValueError, match="mask method"):
        masks.layer_masks([jnp.ones(3)], 0.5, "bisect")
    with pytest.raises(ValueError, match="keep_fraction"):
        masks.layer_masks([jnp.ones(3)], 1.5)
    with pytest.raises(ValueError, match="non-empty float"):
        masks.layer_masks([jnp.ones(3, jnp.int32)], 0.5)
    config = config_utils.base_config()
    config.mask_impl = "fast"
    with pytest.raises(Exception, match="mask_impl"):
        config_utils.validate(config, device_count=1)


def test_ste_kernel_with_precomputed_mask_matches_numpy_forward_and_ste():
    rng = np.random.default_rng(0)
    w, s, g = (rng.standard_normal((3, 3, 2, 4)) for _ in range(3))
    mask = numpy_topk(s, 0.3)
    kept = int(mask.sum())
    for binarize in (True, False):
        def f(w_, s_):
            return jnp.sum(ops.ste_kernel(w_, s_, jnp.asarray(mask), kept, binarize)
                           * jnp.asarray(g, jnp.float32))
        out = ops.ste_kernel(jnp.asarray(w, jnp.float32), jnp.asarray(s, jnp.float32),
                             jnp.asarray(mask), kept, binarize)
        alpha = np.abs(w)[mask].sum() / kept
        want = np.sign(w) * alpha * mask if binarize else w * mask
        np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-6)
        dw, ds = jax.grad(f, argnums=(0, 1))(jnp.asarray(w, jnp.float32),
                                             jnp.asarray(s, jnp.float32))
        np.testing.assert_allclose(np.asarray(ds), np.sign(s) * w * g, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(dw), 0.0)
    with pytest.raises(ValueError, match="bool"):
        ops.ste_kernel(jnp.ones((2, 2)), jnp.ones((2, 2)), jnp.ones((2, 2)), 2, True)


def _cifar_config(model, mask_impl, mask_method="compare", mode="biprop"):
    config = common.cifar10_config(model)
    config.update(dict(batch_size=8, eval_batch_size=8, precision="float32", mode=mode,
                       keep_fraction=0.3, mask_impl=mask_impl, mask_method=mask_method))
    return config_utils.resolve(config)


@pytest.mark.parametrize("model_name,mode", [("conv2", "biprop"),
                                             ("resnet20_cifar", "edgepopup")])
def test_batched_step_bit_identical_to_per_layer(model_name, mode):
    rng = np.random.default_rng(0)
    batch = dict(image=jnp.asarray(rng.standard_normal((8, 32, 32, 3)), jnp.float32),
                 label=jnp.asarray(rng.integers(0, 10, 8), jnp.int32))
    results = {}
    variants = [("per_layer", "compare"), ("batched", "compare"), ("batched", "radix_many")]
    if model_name != "conv2":  # keep the test short: radix_many on one model is enough
        variants = variants[:2]
    for impl, method in variants:
        config = _cifar_config(model_name, impl, method, mode)
        model = train.create_model(config, 10)
        tx = optim.make_optimizer(config, 10)
        state = train.create_train_state(config, model, tx, jax.random.PRNGKey(0), (32, 32, 3))
        assert "masks" not in jax.eval_shape(
            lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
        chex.clear_trace_counter()  # one trace per configuration of this loop
        step_fn, eval_fn = train.make_steps(config, model, tx)
        step = jax.jit(chex.assert_max_traces(lambda s, b: step_fn(s, b), n=1))
        ev = jax.jit(eval_fn)
        new_state, metrics = step(state, batch)
        new_state, metrics2 = step(new_state, batch)  # second step: no retrace
        results[(impl, method)] = (new_state.params, new_state.batch_stats, metrics["loss"],
                                   metrics2["loss"], ev(new_state, batch))
    ref = results[("per_layer", "compare")]
    for key, got in results.items():
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
            assert np.array_equal(np.asarray(a), np.asarray(b)), key


def test_auto_mask_impl_is_per_layer_on_cpu_and_batched_on_gpu(monkeypatch):
    from mpt_jax import config_utils, train
    config = config_utils.base_config()
    assert config.mask_impl == "auto"
    assert train.resolved_mask_impl(config) == "per_layer"  # this suite runs on CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert train.resolved_mask_impl(config) == "batched"
    config.mask_impl = "per_layer"
    assert train.resolved_mask_impl(config) == "per_layer"


def test_rule_from_config_and_precompute(monkeypatch):
    # The training step's rule: batched top-k only for layerwise biprop/edgepopup with the
    # batched implementation; everything else searches in the layers (or uses tau).
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert masks.rule_from_config("biprop", "layerwise", "batched", "compare") == \
        masks.BatchedTopK("compare")
    assert masks.rule_from_config("edgepopup", "layerwise", "auto") == masks.TopK()
    assert masks.rule_from_config("dense", "layerwise", "batched") == masks.TopK()
    assert masks.rule_from_config("biprop", "global", "batched") == masks.GlobalThreshold()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert masks.rule_from_config("biprop", "layerwise", "auto") == \
        masks.BatchedTopK(masks.DEFAULT_METHOD)
    with pytest.raises(ValueError, match="mask method"):
        masks.BatchedTopK("bisect")
    with pytest.raises(ValueError, match="pruning"):
        masks.rule_for_pruning("random")
    with pytest.raises(ValueError, match="mask_impl"):
        masks.resolve_mask_impl("fast")
    params = {"conv": {"scores": random_tree(2, True)["b"]}, "bn": {"scale": jnp.ones(4)},
              "dense": {"scores": random_tree(3, False)["f"]}}
    assert masks.TopK().precompute(params, 0.3) == {}
    assert masks.GlobalThreshold().precompute(params, 0.3) == {}
    # Jitted as in the training step (op by op, every primitive would compile on its own).
    found = jax.jit(masks.BatchedTopK("compare").precompute, static_argnums=1)(params, 0.3)
    assert set(found) == {"masks"} and set(found["masks"]) == {"conv", "dense"}
    for name in ("conv", "dense"):
        np.testing.assert_array_equal(np.asarray(found["masks"][name]["mask"]),
                                      numpy_topk(np.asarray(params[name]["scores"]), 0.3))
    assert masks.BatchedTopK().precompute({"bn": {"scale": jnp.ones(4)}}, 0.3) == {}


# ---------------------------------------------------------------------------
# Kept counts given as data (the "kept" collection of member programs)


def test_kept_counts_are_the_float64_host_counts():
    """kept_counts gives n - floor((1 - k) n) in float64 per scores leaf, also where a
    float32 keep fraction on the device gives another count (n = 160, k = 0.6: 96 vs 97)."""
    params = {"classifier": {"scores": jnp.zeros((16, 10))},
              "block": {"conv": {"scores": jnp.zeros((3, 3, 4, 8))}, "bn": {"scale": jnp.ones(8)}}}
    counts = masks.kept_counts(params, 0.6)
    assert jax.tree.structure(counts) == jax.tree.structure(
        {"classifier": {"count": 0}, "block": {"conv": {"count": 0}}})
    assert counts["classifier"]["count"].dtype == np.int32
    assert int(counts["classifier"]["count"]) == 160 - int(np.floor((1.0 - 0.6) * 160)) == 96
    assert int(counts["block"]["conv"]["count"]) == 288 - int(np.floor(0.4 * 288))
    float32_route = int(masks.kept_for(160, jnp.float32(0.6)))
    assert float32_route == 97  # what passing k itself into the vmapped step would give
    assert masks.kept_counts({"bn": {"scale": jnp.ones(3)}}, 0.5) == {}


@pytest.mark.parametrize("method", ("radix_many", "compare", "per_layer"))
def test_batched_masks_take_traced_counts_under_vmap(method):
    """params_masks with a vmapped kept collection: member i's masks equal the static path
    of its own keep fraction, which equals the float64 NumPy reference."""
    tree = random_tree(1, ties=True)
    params = jax.tree.map(lambda x: {"scores": x}, tree)
    keeps = (0.6, 0.2, 1.0)
    counts = jax.tree.map(lambda *c: np.stack(c),  # host int32: nothing to compile
                          *[masks.kept_counts(params, k) for k in keeps])
    fn = jax.jit(jax.vmap(lambda kept: masks.params_masks(params, 0.5, method, 7, kept)))
    found = jax.tree.map(np.asarray, fn(counts))
    # The static path of every keep fraction in one program (one compile per method).
    statics = jax.jit(lambda p: [masks.params_masks(p, k, method, 7) for k in keeps])(params)
    for i, (keep, static) in enumerate(zip(keeps, statics)):
        for x, m, s in zip(jax.tree.leaves(params), jax.tree.leaves(found),
                           jax.tree.leaves(static)):
            np.testing.assert_array_equal(m[i], np.asarray(s))
            np.testing.assert_array_equal(m[i], numpy_topk(np.asarray(x), keep))


def test_layer_reads_its_count_from_the_kept_collection():
    """A layer given kept counts (vmapped, two members) builds the kernel of each member's
    keep fraction: the same masks and alpha as a layer built with that keep fraction."""
    from mpt_jax import layers

    layer = layers.BipropDense(features=10, options=layers.KernelOptions(keep_fraction=0.5))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 16)), jnp.float32)
    variables = jax.jit(layer.init)(jax.random.PRNGKey(0), x)  # one compile, not one per op
    keeps = (0.6, 0.25)
    counts = jax.tree.map(lambda *c: np.stack(c),  # host int32: nothing to compile
                          *[masks.kept_counts(variables["params"], k) for k in keeps])
    out = np.asarray(jax.jit(jax.vmap(
        lambda kept: layer.apply({**variables, masks.KEPT: kept}, x)))(counts))
    for i, keep in enumerate(keeps):
        alone = layers.BipropDense(features=10, options=layers.KernelOptions(keep_fraction=keep))
        # A vmapped matmul may round differently (1 ulp); another kept set would not be close.
        np.testing.assert_allclose(out[i],
                                   np.asarray(jax.jit(alone.apply)(variables, x)),
                                   rtol=1e-6, atol=1e-6)
    # The float64 reference of member 0's kernel: alpha * sign(W) * M over 96 kept entries.
    w = np.asarray(variables["frozen"]["weight"], np.float64)
    m = numpy_topk(np.asarray(variables["params"]["scores"]), 0.6)
    assert m.sum() == 96
    kernel = np.abs(w)[m].sum() / 96 * np.sign(w) * m
    np.testing.assert_allclose(out[0], np.asarray(x, np.float64) @ kernel,
                               rtol=1e-5, atol=1e-6)
