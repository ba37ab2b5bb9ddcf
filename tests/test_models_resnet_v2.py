"""The reference's v2 ResNets (mpt_jax/models/resnet_v2.py, docs/decisions.md#v2-resnets).

Score/BN counts of every v2 name against the reference's counts and an independent layer-list
formula; the
forward of every name (abstractly, train and eval); the v2 graphs (BN after the add, BN4,
stem MP3 -> BN, the optional shared BN2) against a float64 NumPy reference on small instances
of the same classes, including the running statistics; v1 != v2 on the same variables.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax.models import get_model, model_names, model_options
from mpt_jax.models.resnet import CifarResNet, ImageNetResNet
from mpt_jax.models.resnet_v2 import CifarResNetV2, ImageNetResNetV2, WideResNetV2
# Helpers of the v1 model tests (NumPy primitives and variable drawing), not their tests.
from test_models import leaf_sizes, np_conv, np_max_pool, np_relu, np_sign, numpy_variables

# ---------------------------------------------------------------------------
# Counts: the reference models' weight counts and an independent formula from their layer lists

WIDE = (64, 192, 384, 768)  # the reference's WRN-34-2: 64, 64(f+1), 128(f+1), 256(f+1), f = 2
PLAIN = (64, 128, 256, 512)


def resnet_budget(stem_kernel, stage_sizes, planes, bottleneck=False, base_width=64,
                  num_classes=1000, v2=False):
    """(number of scores, number of BN channels), from the reference's layer lists by hand."""
    scores, bn, inp = 3 * stem_kernel ** 2 * 64, 64, 64
    for stage, (blocks, p) in enumerate(zip(stage_sizes, planes)):
        for b in range(blocks):
            stride = 2 if stage > 0 and b == 0 else 1
            if bottleneck:
                u, out = p * base_width // 64, 4 * p
                scores += inp * u + 9 * u * u + u * out
                bn += 2 * u + out + (out if v2 else 0)  # v2: BN4 after the add
            else:
                out = p
                scores += 9 * inp * p + 9 * p * p
                bn += 2 * p  # v2 moves BN2 after the add: same count
            if stride != 1 or inp != out:
                scores += inp * out
                bn += out
            inp = out
    return scores + inp * num_classes, bn


# name -> (num_classes, formula arguments, the reference's score count of the v1 twin or None)
V2 = {
    "resnet18_cifar_v2": (10, (3, (2, 2, 2, 2), PLAIN), 11_164_352),
    "resnet34_cifar_v2": (10, (3, (3, 4, 6, 3), PLAIN), 21_265_088),
    "resnet18_v2": (1000, (7, (2, 2, 2, 2), PLAIN), 11_678_912),
    "resnet34_v2": (1000, (7, (3, 4, 6, 3), PLAIN), 21_779_648),
    "resnet50_v2": (1000, (7, (3, 4, 6, 3), PLAIN, True, 64), 25_502_912),
    "resnet101_v2": (1000, (7, (3, 4, 23, 3), PLAIN, True, 64), 44_442_816),
    "wrn34_2_v2": (1000, (7, (3, 4, 6, 3), WIDE), 48_270_528),
    # No reference count: WideResNet50_2_BinAct_v2 has wide planes AND base_width 128.
    "wrn50_2_v2": (1000, (7, (3, 4, 6, 3), WIDE, True, 128), None),
    "wrn34_3_v2": (1000, (7, (3, 4, 6, 3), (64, 256, 512, 1024)), 85_238_976),
    "wrn18_2_v2": (1000, (7, (2, 2, 2, 2), WIDE), 25_636_032),
    "wrn18_2_cifar_v2": (10, (3, (2, 2, 2, 2), WIDE), None),  # no reference count
}
V2_NAMES = sorted(V2) + sorted(n + "_binact" for n in V2)


def test_formula_reproduces_reference_counts():
    # Guards the formula itself with the reference's numbers of the v1 models.
    assert resnet_budget(3, (2, 2, 2, 2), PLAIN, num_classes=10) == (11_164_352, 4_800)
    assert resnet_budget(7, (3, 4, 6, 3), WIDE) == (48_270_528, 12_544)
    assert resnet_budget(7, (3, 4, 6, 3), PLAIN, True, 128)[0] == 68_814_016  # WRN-50-2
    assert resnet_budget(7, (3, 4, 23, 3), PLAIN, True, 128)[0] == 126_747_840  # WRN-101-2


def test_v2_names_are_registered():
    assert {n for n in model_names() if "_v2" in n} == set(V2_NAMES)
    for name in ("resnet18_v2", "wrn34_2_v2_binact", "wrn50_2_v2"):
        assert "bn2_twice" in model_options(name)
    assert "widen_factor" in model_options("wrn50_2_v2_binact")
    assert "bn2_twice" not in model_options("resnet18_cifar_v2")  # reference: BN2 once


@pytest.mark.parametrize("name", V2_NAMES)
def test_v2_counts_and_forward_shapes(name):
    """Scores = the reference's count (v1 twin); affine BN channels = formula; train/eval
    forward shapes.

    Abstract (eval_shape) because compiling each full-size model costs 10-20 s on CI;
    the numerics are checked on small instances of the same classes below.
    """
    num_classes, args, spec = V2[name.removesuffix("_binact")]
    scores, channels = resnet_budget(*args, num_classes=num_classes, v2=True)
    assert spec is None or scores == spec
    model = get_model(name, num_classes=num_classes, bn_affine=True)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda k, x: model.init(k, x, train=False), jax.random.key(0), x)
    assert leaf_sizes(variables["params"], "scores") == scores
    assert leaf_sizes(variables["frozen"], "weight") == scores
    assert leaf_sizes(variables["params"], "scale") == channels
    assert leaf_sizes(variables["params"], "bias") == channels
    assert leaf_sizes(variables["batch_stats"], "mean") == channels
    out, state = jax.eval_shape(functools.partial(model.apply, train=True, mutable=["batch_stats"]),
                                variables, x)
    assert out.shape == (2, num_classes) and out.dtype == jnp.float32
    assert jax.tree_util.tree_structure(state["batch_stats"]) == \
        jax.tree_util.tree_structure(variables["batch_stats"])
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    assert out.shape == (2, num_classes) and out.dtype == jnp.float32


def test_wrn50_2_v2_bn4_matches_the_reference_size():
    # The reference sizes BN4 as 2u; with base_width 128 that is the 4*planes block output.
    variables = jax.eval_shape(
        lambda k, x: get_model("wrn50_2_v2_binact").init(k, x, train=False),
        jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    for stage, planes in enumerate(WIDE, start=1):
        u = planes * 128 // 64
        assert variables["batch_stats"][f"layer{stage}_block0_bn4"]["mean"].shape == (2 * u,)
        assert variables["batch_stats"][f"layer{stage}_block0_bn2"]["mean"].shape == (u,)


# ---------------------------------------------------------------------------
# Stem order: the v2 stem's BN sees the max-pooled map


def bn1_input_shape(model, hw=32):
    seen = {}

    def record(next_fun, args, kwargs, context):
        if (context.module.name == "bn1" and isinstance(context.module, nn.BatchNorm)
                and context.method_name == "__call__"):
            seen["bn1"] = args[0].shape
        return next_fun(*args, **kwargs)

    def run(x):
        with nn.intercept_methods(record):
            return model.init(jax.random.key(0), x, train=False)

    jax.eval_shape(run, jax.ShapeDtypeStruct((2, hw, hw, 3), jnp.float32))
    return seen["bn1"]


@pytest.mark.parametrize("name,after_pool", [
    ("resnet18_v2_binact", True), ("resnet50_v2", True), ("wrn34_2_v2_binact", True),
    ("wrn50_2_v2_binact", True), ("resnet18_binact", False), ("wrn34_2_binact", False)])
def test_stem_batchnorm_sees_the_pooled_map(name, after_pool):
    # 32x32 input: C7/2 gives 16x16, MP3/2 gives 8x8. v1: C7 BN MP3 act; v2: C7 MP3 BN act.
    size = 8 if after_pool else 16
    assert bn1_input_shape(get_model(name)) == (2, size, size, 64)


# ---------------------------------------------------------------------------
# Graphs against an independent float64 NumPy forward pass (small instances)


class NumpyBN:
    """Training-mode BN (biased batch statistics) that also folds the running statistics
    the way PyTorch / flax do (momentum 0.9, initial mean 0 and var 1)."""

    def __init__(self, params):
        self.p = params
        self.stats = {}

    def __call__(self, x, name):
        axes = tuple(range(x.ndim - 1))
        mean, var = x.mean(axes), x.var(axes)
        m, v = self.stats.get(name, (0.0, 1.0))
        self.stats[name] = (0.9 * m + 0.1 * mean, 0.9 * v + 0.1 * var)
        return (x - mean) / np.sqrt(var + 1e-5) * self.p[name]["scale"] + self.p[name]["bias"]


def np_resnet_v2(x, p, stages, binact, imagenet=False, bottleneck=False, base_width=64,
                 bn2_twice=False, v1=False):
    """The reference's v2 ResNet graphs (``v1=True``: its v1 graphs).

    ``stages``: list of (blocks, planes). Returns (logits, NumpyBN with running stats).
    """
    act = np_sign if binact else np_relu
    bn = NumpyBN(p)

    def conv(x, name, stride=1):
        return np_conv(x, p[name]["kernel"], stride)

    def block(x, pre, planes, stride):
        if bottleneck:
            u, out = planes * base_width // 64, 4 * planes
            y = act(bn(conv(x, f"{pre}_conv1"), f"{pre}_bn1"))
            y = act(bn(conv(y, f"{pre}_conv2", stride), f"{pre}_bn2"))
            y = bn(conv(y, f"{pre}_conv3"), f"{pre}_bn3")
            assert p[f"{pre}_conv1"]["kernel"].shape[-1] == u
        else:
            out = planes
            y = act(bn(conv(x, f"{pre}_conv1", stride), f"{pre}_bn1"))
            y = conv(y, f"{pre}_conv2")
            if v1 or bn2_twice:
                y = bn(y, f"{pre}_bn2")
        if stride != 1 or x.shape[-1] != out:
            x = bn(conv(x, f"{pre}_shortcut_conv", stride), f"{pre}_shortcut_bn")
        y = y + x
        if not v1:  # the v2 BN after the add: BN2 (BasicBlock) or BN4 (Bottleneck)
            y = bn(y, f"{pre}_bn4" if bottleneck else f"{pre}_bn2")
        return act(y)

    if not imagenet:
        x = act(bn(conv(x, "conv1"), "bn1"))
    elif v1:  # the reference's BinAct stem: C7 BN MP3 S
        x = act(np_max_pool(bn(conv(x, "conv1", 2), "bn1"), 3, 2, 1))
    else:  # v2: C7 MP3 BN act
        x = act(bn(np_max_pool(conv(x, "conv1", 2), 3, 2, 1), "bn1"))
    for s, (blocks, planes) in enumerate(stages):
        for b in range(blocks):
            x = block(x, f"layer{s + 1}_block{b}", planes, 2 if s > 0 and b == 0 else 1)
    return x.mean(axis=(1, 2)) @ p["classifier"]["kernel"], bn


def forward64(model, x, variables=None):
    """Training-mode float64 forward of ``model`` (dense mode: kernels are params)."""
    variables = numpy_variables(model, x, seed=1) if variables is None else variables
    out, state = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
        variables, x)
    as64 = functools.partial(jax.tree_util.tree_map, lambda a: np.asarray(a, np.float64))
    return np.asarray(out), as64(variables["params"]), as64(state["batch_stats"]), variables


def assert_running_stats(batch_stats, bn):
    # The running statistics are stored in float32 (layers.batch_norm), hence rtol 1e-6.
    assert set(batch_stats) == set(bn.stats)
    for name, (mean, var) in bn.stats.items():
        np.testing.assert_allclose(batch_stats[name]["mean"], mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(batch_stats[name]["var"], var, rtol=1e-6, atol=1e-7)


DENSE64 = dict(mode="dense", dtype=jnp.float64)
CASES = {
    # name: (module, input size, np_resnet_v2 keyword arguments)
    "cifar_basic": (CifarResNetV2, dict(stage_sizes=(1, 2), stage_widths=(4, 8)), 8,
                    dict(stages=[(1, 4), (2, 8)])),
    "imagenet_basic": (ImageNetResNetV2, dict(stage_sizes=(1, 2), planes=(4, 8)), 16,
                       dict(stages=[(1, 4), (2, 8)], imagenet=True)),
    "imagenet_basic_bn2_twice": (ImageNetResNetV2, dict(stage_sizes=(1, 2), planes=(4, 8),
                                                        bn2_twice=True), 16,
                                 dict(stages=[(1, 4), (2, 8)], imagenet=True, bn2_twice=True)),
    # base_width 64: the reference's 2u-sized BN4 would not fit the 4*planes sum.
    "imagenet_bottleneck": (ImageNetResNetV2, dict(stage_sizes=(2, 1), planes=(2, 4),
                                                   block="bottleneck"), 16,
                            dict(stages=[(2, 2), (1, 4)], imagenet=True, bottleneck=True)),
    "wide_bottleneck_128": (WideResNetV2, dict(stage_sizes=(1, 1, 1, 1), block="bottleneck",
                                               base_width=128, widen_factor=0), 16,
                            dict(stages=[(1, 64), (1, 64), (1, 128), (1, 256)], imagenet=True,
                                 bottleneck=True, base_width=128)),
}


# The wide case (the largest compile) runs with sign only; its ReLU path is the code of
# the other ReLU cases.
GRAPH_CASES = [(case, binact) for case in sorted(CASES) for binact in (False, True)
               if binact or case != "wide_bottleneck_128"]


@pytest.mark.parametrize("case,binact", GRAPH_CASES,
                         ids=[f"{c}-{'binact' if b else 'relu'}" for c, b in GRAPH_CASES])
def test_v2_graph_matches_numpy(case, binact, x64):
    cls, fields, hw, kwargs = CASES[case]
    model = cls(**fields, binary_activations=binact, num_classes=3, **DENSE64)
    x = np.random.default_rng(2).normal(size=(4, hw, hw, 3))
    out, p, stats, _ = forward64(model, jnp.asarray(x))
    ref, bn = np_resnet_v2(x, p, binact=binact, **kwargs)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    # Every BN saw the tensor the reference's graph puts it on, as often.
    assert_running_stats(stats, bn)


@pytest.mark.parametrize("v1_cls,v2_cls,fields,hw,kwargs", [
    (CifarResNet, CifarResNetV2, dict(stage_sizes=(1, 2), stage_widths=(4, 8)), 8,
     dict(stages=[(1, 4), (2, 8)])),
    (ImageNetResNet, ImageNetResNetV2, dict(stage_sizes=(1, 2), planes=(4, 8)), 16,
     dict(stages=[(1, 4), (2, 8)], imagenet=True)),
], ids=["cifar", "imagenet"])
def test_v1_and_v2_differ_on_the_same_variables(v1_cls, v2_cls, fields, hw, kwargs, x64):
    # BasicBlock v1 and v2 have identical variable trees: only the BN positions differ.
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, hw, hw, 3)))
    v1 = v1_cls(**fields, binary_activations=True, num_classes=3, **DENSE64)
    v2 = v2_cls(**fields, binary_activations=True, num_classes=3, **DENSE64)
    out2, p, _, variables = forward64(v2, x)
    out1, _, _, _ = forward64(v1, x, variables)
    ref1, _ = np_resnet_v2(np.asarray(x), p, binact=True, v1=True, **kwargs)
    ref2, _ = np_resnet_v2(np.asarray(x), p, binact=True, **kwargs)
    np.testing.assert_allclose(out1, ref1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out2, ref2, rtol=1e-6, atol=1e-6)
    assert np.abs(out1 - out2).max() > 1e-2


# ---------------------------------------------------------------------------
# Biprop mode, train and eval, on small instances; bad input


@pytest.mark.parametrize("cls,fields,hw", [
    (CifarResNetV2, dict(stage_sizes=(1, 1), stage_widths=(4, 8)), 8),
    (ImageNetResNetV2, dict(stage_sizes=(1, 1), planes=(2, 4), block="bottleneck"), 16),
], ids=["cifar_basic", "imagenet_bottleneck"])
def test_biprop_train_and_eval_forward(cls, fields, hw):
    model = cls(**fields, binary_activations=True, num_classes=5, keep_fraction=0.5)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(4, hw, hw, 3)), jnp.float32)
    variables = numpy_variables(model, x)
    train_out, state = jax.jit(functools.partial(model.apply, train=True,
                                                 mutable=["batch_stats"]))(variables, x)
    eval_out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
    for out in (train_out, eval_out):
        assert out.shape == (4, 5) and out.dtype == jnp.float32
        assert np.isfinite(np.asarray(out)).all()
    # Eval uses the running statistics (here the initial 0 / 1), train the batch's.
    assert not np.allclose(np.asarray(train_out), np.asarray(eval_out))
    changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(np.asarray(a), np.asarray(b)),
                                     state["batch_stats"], variables["batch_stats"])
    assert all(jax.tree_util.tree_leaves(changed))


def test_bn2_twice_with_bottleneck_is_rejected():
    with pytest.raises(ValueError, match="bn2_twice=True is defined for BasicBlocks only"):
        jax.eval_shape(lambda k, x: get_model("resnet50_v2", bn2_twice=True).init(k, x),
                       jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
