"""Model zoo: score counts, trainable sets, graphs, one training step (1 and 8 devices)."""
from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mpt_jax import layers
from mpt_jax.models import get_model, model_names, model_options

# ---------------------------------------------------------------------------
# Helpers


def abstract_variables(model, hw: int, channels: int = 3, batch: int = 2):
    x = jax.ShapeDtypeStruct((batch, hw, hw, channels), jnp.float32)
    out, variables = jax.eval_shape(lambda k, x: model.init_with_output(k, x, train=False),
                                    jax.random.key(0), x)
    return variables, out


def leaf_sizes(tree, leaf_name: str) -> int:
    return sum(int(np.prod(leaf.shape)) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
               if path[-1].key == leaf_name)


def leaf_names(tree) -> set[str]:
    return {path[-1].key for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def numpy_variables(model, x, seed: int = 0):
    """Concrete variables of ``model`` drawn with NumPy from the abstract (eval_shape) tree.

    Compiling ``model.init`` (threefry for every layer) costs ~10 s per model on a loaded
    2-core CI machine, compiling ``apply`` well under that; the values only need to be
    random (Kaiming-scaled kernels, random affine BN) for the checks below.
    """
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)

    def draw(path, leaf):
        kind, shape = path[-1].key, leaf.shape
        if kind in ("kernel", "weight"):
            value = rng.normal(size=shape) * np.sqrt(2.0 / layers.fans(shape)[0])
        elif kind == "scores":
            value = rng.uniform(-1.0, 1.0, size=shape)
        elif kind == "scale":
            value = rng.uniform(0.5, 1.5, size=shape)
        elif kind == "bias":
            value = rng.normal(scale=0.1, size=shape)
        elif kind == "mean":
            value = np.zeros(shape)
        elif kind == "var":
            value = np.ones(shape)
        else:
            raise AssertionError(f"unexpected variable {jax.tree_util.keystr(path)}")
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)


# ---------------------------------------------------------------------------
# Score counts (the reference models' weight counts, worked out by hand from their layer
# lists) and output shapes, every registered model

# name -> (input height/width, num_classes, options, number of scores)
COUNTS = {
    "conv2": (32, 10, {}, 4_300_992),
    "conv4": (32, 10, {}, 2_425_024),
    "conv6": (32, 10, {}, 2_261_184),
    "conv8": (32, 10, {}, 5_275_840),
    "vgg_small": (32, 10, {}, 4_656_512),
    "wide_vgg_small": (32, 10, {}, 7_249_120),
    "resnet18_cifar": (32, 10, {}, 11_164_352),
    "resnet34_cifar": (32, 10, {}, 21_265_088),
    "resnet20_cifar": (32, 10, {}, 270_896),
    "resnet32_cifar": (32, 10, {}, 464_432),
    "resnet44_cifar": (32, 10, {}, 657_968),
    "resnet56_cifar": (32, 10, {}, 851_504),
    "resnet110_cifar": (32, 10, {}, 1_722_416),
    "resnet18": (224, 1000, {}, 11_678_912),
    "resnet34": (224, 1000, {}, 21_779_648),
    "resnet50": (224, 1000, {}, 25_502_912),
    "resnet101": (224, 1000, {}, 44_442_816),
    "wrn50_2": (224, 1000, {}, 68_814_016),
    "wrn101_2": (224, 1000, {}, 126_747_840),
    "wrn34_2": (224, 1000, {}, 48_270_528),
    "wrn34_3": (224, 1000, {}, 85_238_976),
    "wrn18_2": (224, 1000, {}, 25_636_032),
    # cWideResNet18_2, counted by hand: stem 3*3*3*64; stage 1: 4 convs 3*3*64*64; stages of
    # width w from v: 3*3*v*w + 3 * 3*3*w*w + 1*1*v*w (shortcut); classifier 768*10.
    "wrn18_2_cifar": (32, 10, {}, 27 * 64 + 4 * 9 * 64 * 64
                      + sum(9 * v * w + 3 * 9 * w * w + v * w
                            for v, w in ((64, 192), (192, 384), (384, 768)))
                      + 768 * 10),
    # cResNet50/101/152 (CIFAR Bottlenecks), counted by hand: stem 3*3*3*64; per stage of
    # planes p entered with v channels, block 0 has 1*1*v*p + 3*3*p*p + 1*1*p*4p and the
    # projection 1*1*v*4p (v != 4p everywhere, also 64 -> 256 in stage 1), every other
    # block 4p*p + 9p*p + 4p*p; classifier 2048*10. (ResNet-50: 23,467,712 = the
    # 23,520,842 parameters PyTorch counts for this CIFAR ResNet-50 less its 2 x 26,560
    # BatchNorm affine entries and the 10 classifier biases.)
    **{f"resnet{depth}_cifar": (32, 10, {}, 27 * 64 + sum(
        v * p + 9 * p * p + 4 * p * p + 4 * v * p + (n - 1) * 17 * p * p
        for v, p, n in zip((64, 256, 512, 1024), (64, 128, 256, 512), sizes)) + 2048 * 10)
       for depth, sizes in ((50, (3, 4, 6, 3)), (101, (3, 4, 23, 3)), (152, (3, 8, 36, 3)))},
    # Small MLP on 8x8x1 digits: 64*256 + 256*256 + 256*10 (derived by hand).
    "mlp": (8, 10, {}, 84_480),
}
WIDE_CONV8 = {0.5: 1_320_032, 1.0: 5_275_840, 1.5: 11_867_424, 2.0: 21_094_784}


def test_every_registered_model_is_counted():
    expected = set(COUNTS) | {n + "_binact" for n in COUNTS}
    # The v2 ResNets (models/resnet_v2.py) are counted in tests/test_models_resnet_v2.py.
    assert {n for n in model_names() if "_v2" not in n} == expected


@pytest.mark.parametrize("binact", [False, True], ids=["relu", "binact"])
@pytest.mark.parametrize("name", sorted(COUNTS))
def test_score_count_and_output_shape(name, binact):
    hw, num_classes, options, expected = COUNTS[name]
    channels = 1 if name == "mlp" else 3
    model = get_model(name + ("_binact" if binact else ""), num_classes=num_classes, **options)
    variables, out = abstract_variables(model, hw, channels)
    assert leaf_sizes(variables["params"], "scores") == expected
    # One frozen random weight per score, same shapes.
    assert leaf_sizes(variables["frozen"], "weight") == expected
    assert out.shape == (2, num_classes) and out.dtype == jnp.float32


@pytest.mark.parametrize("width_mult", sorted(WIDE_CONV8))
def test_conv8_wide_counts(width_mult):
    variables, _ = abstract_variables(get_model("conv8", width_mult=width_mult), 32)
    assert leaf_sizes(variables["params"], "scores") == WIDE_CONV8[width_mult]


def test_wide_vgg_small_width_8_equals_vgg_small_count():
    # 16 * 8 = 128 channels: the same convolution shapes as VGG_Small.
    variables, _ = abstract_variables(get_model("wide_vgg_small_binact", width_mult=8), 32)
    assert leaf_sizes(variables["params"], "scores") == 4_656_512


@pytest.mark.parametrize("name,hw,channels", [("resnet18_cifar", 32, 4_800), ("wrn34_2", 224, 12_544)])
def test_batchnorm_channel_counts(name, hw, channels):
    # BN channel budgets of the "+BN" models; every BN has a running mean of one entry per channel.
    for suffix in ("", "_binact"):
        variables, _ = abstract_variables(get_model(name + suffix, num_classes=1000), hw)
        assert leaf_sizes(variables["batch_stats"], "mean") == channels
        affine, _ = abstract_variables(get_model(name + suffix, bn_affine=True), hw)
        assert leaf_sizes(affine["params"], "scale") == channels
        assert leaf_sizes(affine["params"], "bias") == channels


def test_bf16_compute_returns_float32_logits():
    _, out = abstract_variables(get_model("resnet20_cifar_binact", dtype=jnp.bfloat16), 32)
    assert out.dtype == jnp.float32


# ---------------------------------------------------------------------------
# Bad input


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*resnet18_cifar.*wrn34_2"):
        get_model("resnet19")


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match="widht_mult.*valid options: .*width_mult"):
        get_model("conv8", widht_mult=2.0)
    # Architecture constants fixed by the registry are not options.
    assert "stage_sizes" not in model_options("resnet18")
    assert "depth" not in model_options("conv4")
    assert "widen_factor" in model_options("wrn34_2_binact")
    assert "width_mult" in model_options("wide_vgg_small")


def test_bad_width_raises():
    with pytest.raises(ValueError, match="width_mult=0.001"):
        abstract_variables(get_model("conv4", width_mult=0.001), 32)
    with pytest.raises(ValueError, match="widen_factor=2.3"):
        abstract_variables(get_model("wrn34_2", widen_factor=2.3), 32)


# ---------------------------------------------------------------------------
# Trainable sets per mode (docs/method.md#what-trains)


@pytest.mark.parametrize("bn_affine", [False, True], ids=["nonaffine", "affine"])
@pytest.mark.parametrize("mode", ["biprop", "edgepopup", "dense", "binary_trained"])
@pytest.mark.parametrize("name", ["resnet20_cifar", "conv2_binact", "vgg_small"])
def test_trainable_leaves(name, mode, bn_affine):
    variables, _ = abstract_variables(get_model(name, mode=mode, bn_affine=bn_affine), 32)
    params = variables["params"]
    n_kernels = len(jax.tree_util.tree_leaves(variables.get("frozen", {})))
    subnetwork = mode in ("biprop", "edgepopup")
    kernel_leaf = "scores" if subnetwork else "kernel"
    # The dense baselines train their BatchNorm like ordinary networks (models/common.py).
    bn_leaves = {"scale", "bias"} if (bn_affine or not subnetwork) else set()
    assert leaf_names(params) == {kernel_leaf} | bn_leaves
    assert "weight" not in leaf_names(params)
    if subnetwork:
        assert set(variables) == {"params", "frozen", "batch_stats"}
        assert leaf_names(variables["frozen"]) == {"weight"}
        scores = {p[:-1]: l.shape for p, l in jax.tree_util.tree_leaves_with_path(params)
                  if p[-1].key == "scores"}
        weights = {p[:-1]: l.shape for p, l in jax.tree_util.tree_leaves_with_path(variables["frozen"])}
        assert scores == weights and n_kernels == len(scores)
    else:
        assert "frozen" not in variables


def test_layer_names_are_stable():
    variables, _ = abstract_variables(get_model("resnet20_cifar"), 32)
    names = set(variables["params"])
    assert {"conv1", "layer1_block0_conv1", "layer1_block2_conv2", "layer2_block0_shortcut_conv",
            "layer3_block0_shortcut_conv", "classifier"} <= names
    assert "layer1_block0_shortcut_conv" not in names  # identity shortcut where shapes match
    variables, _ = abstract_variables(get_model("resnet50"), 64)
    assert {"layer1_block0_shortcut_conv", "layer4_block2_conv3"} <= set(variables["params"])


# ---------------------------------------------------------------------------
# Graph checks against an independent float64 NumPy forward pass


def np_conv(x, k, stride=1):
    kh, kw = k.shape[:2]
    pad = ((0, 0), ((kh - 1) // 2,) * 2, ((kw - 1) // 2,) * 2, (0, 0))
    win = np.lib.stride_tricks.sliding_window_view(np.pad(x, pad), (kh, kw), axis=(1, 2))
    return np.einsum("nhwcij,ijco->nhwo", win[:, ::stride, ::stride], k, optimize=True)


def np_max_pool(x, window, stride, padding=0):
    pad = ((0, 0), (padding,) * 2, (padding,) * 2, (0, 0))
    win = np.lib.stride_tricks.sliding_window_view(
        np.pad(x, pad, constant_values=-np.inf), (window, window), axis=(1, 2))
    return win[:, ::stride, ::stride].max(axis=(-1, -2))


def np_bn(x, p):
    axes = tuple(range(x.ndim - 1))  # training mode: biased batch statistics, as PyTorch normalises
    y = (x - x.mean(axes)) / np.sqrt(x.var(axes) + 1e-5)
    return y * np.asarray(p["scale"], np.float64) + np.asarray(p["bias"], np.float64)


def np_sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def np_relu(x):
    return np.maximum(x, 0.0)


def dense_forward(name, x, **options):
    """Builds ``name`` in dense mode (kernels are ordinary params) and runs it in float64.

    The logits are returned in float32 by design (ScoreNet.logits), hence rtol ~1e-6 below.
    """
    model = get_model(name, mode="dense", dtype=jnp.float64, **options)
    variables = numpy_variables(model, x, seed=1)
    forward = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))
    out, _ = forward(variables, x)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables["params"])
    return np.asarray(out), params


def np_convnet(x, p, depth, binact):
    layer = 0
    for _ in range(depth // 2):
        for second in (False, True):
            layer += 1
            x = np_conv(x, p[f"conv{layer}"]["kernel"])
            if binact:
                x = np_max_pool(x, 2, 2) if second else x
                x = np_sign(np_bn(x, p[f"bn{layer}"]))
            else:
                x = np_relu(x)
                x = np_max_pool(x, 2, 2) if second else x
    x = x.reshape(x.shape[0], -1)
    for i in (1, 2):
        x = x @ p[f"fc{i}"]["kernel"]
        x = np_sign(np_bn(x, p[f"fc{i}_bn"])) if binact else np_relu(x)
    return x @ p["classifier"]["kernel"]


@pytest.mark.parametrize("name", ["conv4", "conv4_binact"])
def test_convnet_graph_matches_numpy(name, x64):
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3))
    out, p = dense_forward(name, jnp.asarray(x), width_mult=1 / 16)
    np.testing.assert_allclose(out, np_convnet(x, p, 4, name.endswith("_binact")), rtol=1e-6, atol=1e-6)


def np_vgg(x, p, binact, wide):
    # The reference's VGG graphs, written out layer by layer.
    def c(x, i):
        return np_conv(x, p[f"conv{i}"]["kernel"])

    def bn(x, i):
        return np_bn(x, p[f"bn{i}"])

    a = np_sign if binact else np_relu
    mp = functools.partial(np_max_pool, window=2, stride=2)
    if wide:
        x = a(bn(c(x, 1), 1)); x = a(bn(mp(c(x, 2)), 2))
        x = a(bn(c(x, 3), 3)); x = a(bn(mp(c(x, 4)), 4))
        x = a(bn(c(x, 5), 5)); x = np_relu(bn(mp(c(x, 6)), 6))
    elif binact:
        x = a(c(x, 1)); x = a(bn(mp(c(x, 2)), 2))
        x = a(c(x, 3)); x = a(bn(mp(c(x, 4)), 4))
        x = a(c(x, 5)); x = np_relu(bn(mp(c(x, 6)), 6))
    else:  # only two ReLUs (docs/decisions.md#vgg-graph)
        x = np_relu(c(x, 1)); x = bn(mp(c(x, 2)), 2)
        x = c(x, 3); x = bn(mp(c(x, 4)), 4)
        x = c(x, 5); x = np_relu(bn(mp(c(x, 6)), 6))
    return x.reshape(x.shape[0], -1) @ p["classifier"]["kernel"]


@pytest.mark.parametrize("name,options", [
    ("vgg_small", {}), ("vgg_small_binact", {}),
    ("wide_vgg_small", {"width_mult": 1}), ("wide_vgg_small_binact", {"width_mult": 1})])
def test_vgg_graph_matches_numpy(name, options, x64):
    x = np.random.default_rng(1).normal(size=(4, 8, 8, 3))
    out, p = dense_forward(name, jnp.asarray(x), **options)
    ref = np_vgg(x, p, name.endswith("_binact"), name.startswith("wide"))
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def np_resnet(x, p, stage_sizes, widths, binact, imagenet=False, bottleneck=False,
              pool_before_act=False):
    a = np_sign if binact else np_relu

    def block(x, pre, width, out, stride):
        convs = ([(1, 1), (3, stride), (1, 1)] if bottleneck else [(3, stride), (3, 1)])
        y = x
        for j, _ in enumerate(convs, start=1):
            y = np_conv(y, p[f"{pre}_conv{j}"]["kernel"], convs[j - 1][1])
            y = np_bn(y, p[f"{pre}_bn{j}"])
            if j < len(convs):
                y = a(y)
        if f"{pre}_shortcut_conv" in p:
            x = np_bn(np_conv(x, p[f"{pre}_shortcut_conv"]["kernel"], stride), p[f"{pre}_shortcut_bn"])
        return a(y + x)

    if imagenet:
        x = np_bn(np_conv(x, p["conv1"]["kernel"], 2), p["bn1"])
        if binact or pool_before_act:
            x = a(np_max_pool(x, 3, 2, 1))
        else:
            x = np_max_pool(a(x), 3, 2, 1)
    else:
        x = a(np_bn(np_conv(x, p["conv1"]["kernel"]), p["bn1"]))
    for s, (n, w) in enumerate(zip(stage_sizes, widths)):
        for b in range(n):
            x = block(x, f"layer{s + 1}_block{b}", w, 4 * w if bottleneck else w,
                      2 if s > 0 and b == 0 else 1)
    return x.mean(axis=(1, 2)) @ p["classifier"]["kernel"]


@pytest.mark.parametrize("name,hw,kwargs", [
    ("resnet20_cifar", 8, dict(stage_sizes=(3, 3, 3), widths=(16, 32, 64))),
    ("resnet20_cifar_binact", 8, dict(stage_sizes=(3, 3, 3), widths=(16, 32, 64))),
    ("resnet18", 32, dict(stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512), imagenet=True)),
    ("resnet18_binact", 32, dict(stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512), imagenet=True)),
    ("resnet50_binact", 32, dict(stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512), imagenet=True,
                                 bottleneck=True)),
    ("resnet50_cifar_binact", 8, dict(stage_sizes=(3, 4, 6, 3), widths=(64, 128, 256, 512),
                                      bottleneck=True)),
])
def test_resnet_graph_matches_numpy(name, hw, kwargs, x64):
    x = np.random.default_rng(2).normal(size=(2, hw, hw, 3))
    out, p = dense_forward(name, jnp.asarray(x))
    ref = np_resnet(x, p, binact=name.endswith("_binact"), **kwargs)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------
# Binary activations: every hidden layer input is exactly +-1 (docs/decisions.md#sign-zero)


def layer_inputs(model, x):
    """Runs a training-mode forward pass and returns the input of every biprop layer."""

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, (layers.BipropConv, layers.BipropDense)) and \
                context.method_name == "__call__":
            context.module.sow("intermediates", "input", args[0])
        return next_fun(*args, **kwargs)

    def run(variables, x):
        with nn.intercept_methods(record):
            _, state = model.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"])
        return state["intermediates"]

    seen = jax.jit(run)(numpy_variables(model, x), x)
    return {name: np.asarray(value["input"][0]) for name, value in seen.items()}


@pytest.mark.parametrize("name,mode,real_inputs", [
    ("conv4_binact", "biprop", {"conv1"}),
    ("mlp_binact", "biprop", {"dense0"}),
    # The graph tests above check these exactly; here only the activation values, and in
    # dense mode because compiling a sort per layer is the slow part on CPU.
    ("vgg_small_binact", "dense", {"conv1", "classifier"}),
    ("resnet20_cifar_binact", "dense", {"conv1", "classifier"}),
])
def test_binact_hidden_activations_are_plus_minus_one(name, mode, real_inputs):
    hw = 8
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, hw, hw, 3)), jnp.float32)
    seen = layer_inputs(get_model(name, mode=mode, keep_fraction=0.3), x)
    assert real_inputs < set(seen)
    for layer, value in seen.items():
        binary = set(np.unique(value)) <= {-1.0, 1.0}
        assert binary == (layer not in real_inputs), layer
    if name.startswith("vgg"):
        assert seen["classifier"].min() >= 0  # a ReLU feeds the classifier (decisions.md#vgg-graph)
    if name.startswith("resnet"):
        assert np.abs(seen["classifier"]).max() <= 1  # average of signs


# ---------------------------------------------------------------------------
# One jitted training step: scores change, random weights stay bit-identical


def make_train_step(model, tx):
    def step(variables, opt_state, batch):
        def loss_fn(params):
            logits, new_state = model.apply({**variables, "params": params}, batch["image"], train=True,
                                            mutable=["batch_stats", "frozen"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            return loss, new_state

        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        updates, opt_state = tx.update(grads, opt_state, variables["params"])
        params = optax.apply_updates(variables["params"], updates)
        return {**variables, **new_state, "params": params}, opt_state, loss

    return step


def init_state(name, hw, channels, batch_size, tx, **options):
    model = get_model(name, **options)
    rng = np.random.default_rng(4)
    batch = dict(image=jnp.asarray(rng.normal(size=(batch_size, hw, hw, channels)), jnp.float32),
                 label=jnp.asarray(rng.integers(0, 10, size=batch_size), jnp.int32))
    if name.startswith("mlp"):  # exercise the real (random) init on the cheapest model
        variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), batch["image"])
    else:
        variables = numpy_variables(model, batch["image"])
    return model, variables, tx.init(variables["params"]), batch


STEP_CASES = [
    ("conv2", 32, 3, {}),
    ("resnet20_cifar_binact", 16, 3, {}),
    ("mlp", 8, 1, {"hidden": (32,), "mode": "dense"}),
    ("mlp_binact", 8, 1, {"hidden": (32, 16), "pruning": "layerwise"}),
]


@pytest.mark.parametrize("name,hw,channels,options", STEP_CASES)
def test_one_training_step(name, hw, channels, options):
    tx = optax.sgd(0.1, momentum=0.9)
    model, variables, opt_state, batch = init_state(name, hw, channels, 8, tx, keep_fraction=0.3, **options)
    before = jax.tree_util.tree_map(np.asarray, variables)
    chex.clear_trace_counter()  # the counter is keyed by code object, shared across cases
    step = jax.jit(chex.assert_max_traces(make_train_step(model, tx), n=1))
    new, opt_state, loss = step(variables, opt_state, batch)
    new, _, _ = step(new, opt_state, batch)  # second call must not retrace
    assert np.isfinite(float(loss))
    trained = "kernel" if options.get("mode") == "dense" else "scores"
    for path, old in jax.tree_util.tree_leaves_with_path(before["params"]):
        if path[-1].key == trained:
            now = functools.reduce(lambda t, k: t[k.key], path, new["params"])
            assert not np.array_equal(np.asarray(now), old), jax.tree_util.keystr(path)
    if "frozen" in before:
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                               new["frozen"], before["frozen"])
    if "batch_stats" in before:
        changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(np.asarray(a), b),
                                         new["batch_stats"], before["batch_stats"])
        assert all(jax.tree_util.tree_leaves(changed))


@pytest.mark.parametrize("name,hw,channels,options", [
    ("resnet20_cifar", 8, 3, {}),
    ("mlp_binact", 8, 1, {"hidden": (32,)}),
])
def test_sharded_step_matches_single_device(name, hw, channels, options):
    devices = jax.devices()
    assert len(devices) == 8, "tests/conftest.py must force 8 simulated CPU devices"
    tx = optax.sgd(0.1)
    model, variables, opt_state, batch = init_state(name, hw, channels, 16, tx, keep_fraction=0.3, **options)
    step = make_train_step(model, tx)
    single, _, loss1 = jax.jit(step)(variables, opt_state, batch)

    mesh = Mesh(np.array(devices), ("data",))
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    sharded_batch = jax.device_put(batch, data)
    assert len(sharded_batch["image"].sharding.device_set) == 8
    sharded, _, loss8 = jax.jit(step, out_shardings=(replicated, replicated, replicated))(
        jax.device_put(variables, replicated), jax.device_put(opt_state, replicated), sharded_batch)
    chex.assert_trees_all_close(sharded["params"], single["params"], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(sharded["batch_stats"], single["batch_stats"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss8), float(loss1), rtol=1e-5)


@pytest.mark.parametrize("keep", [0.2, 0.8])
def test_reference_fan_scaling_sets_the_logit_scale_of_a_bn_free_net(keep):
    """Conv-4 has no BatchNorm and no biases, and ReLU / max-pooling are positively
    homogeneous, so scaling W of each of its 7 prunable layers by c (alpha follows W, the
    masks follow the scores) scales the logits by c**7 exactly. The reference's fan * (1 - k)
    (scale_fan="reference", docs/decisions.md#scale-fan) against the variance-preserving
    fan * k ("kept") is c = sqrt(k / (1 - k)) per layer: at k = 0.2 the logits start 128x
    too small (the loss sits at ln 10 until the scores grow), at k = 0.8 128x too large.
    Checked against that float64 factor, which also fails if a layer ignored scale_fan."""
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    logits = {}
    for scale_fan in ("reference", "kept"):
        model = get_model("conv4", keep_fraction=keep, scale_fan=scale_fan,
                          weight_init="kaiming_normal")
        # Jitted: op-by-op, the init and forward compile ~140 small programs each.
        variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
        logits[scale_fan] = np.asarray(
            jax.jit(functools.partial(model.apply, train=False))(variables, x), np.float64)
    factor = (keep / (1.0 - keep)) ** (7 / 2)  # 2**-7 at k = 0.2, 2**7 at k = 0.8
    np.testing.assert_allclose(logits["reference"], logits["kept"] * factor, rtol=2e-5,
                               atol=1e-6 * np.abs(logits["reference"]).max())
