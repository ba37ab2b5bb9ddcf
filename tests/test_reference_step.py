"""Faithfulness: one training step of ours against the reference's semantics in PyTorch.

The PyTorch side is written here from the reference code's definitions, independently of
mpt_jax: a SubnetConv whose mask keeps all but the floor((1 - k) n) smallest |scores| (a
sort), whose gain is sum(|W| M) / floor(k n) (the reference's divisor) and whose backward
pass hands g * |W| to |s| (autograd then multiplies by sign(s)); non-affine BatchNorm
(momentum 0.1, eps 1e-5); SGD with momentum 0.9 and coupled weight decay; cross-entropy.
Both sides start from the same random weights and scores (ours, copied over) and take one
step on the same batch. They must agree on the loss, every mask, every score after the
step and every BatchNorm statistic after the step, to float32 tolerance.

Two documented differences are accounted for, not hidden: our alpha divides by the kept
count, so for this comparison it is switched to the reference's floor(k n) (the one line
``reference_alpha`` below); and PyTorch's running variance uses the unbiased batch
variance where Flax uses the biased one, so the test converts the reference's value
(docs/decisions.md, "alpha" and "batchnorm").
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mpt_jax import ops, optim, train
from mpt_jax.models import probe

torch = pytest.importorskip("torch", reason="the reference port needs PyTorch: "
                                             "pip install torch==2.13.0 (CPU)")
nn, F = torch.nn, torch.nn.functional

LR, MOMENTUM = 0.1, 0.9


class ReferenceMask(torch.autograd.Function):
    """The reference's GetSubnet for biprop: alpha * M from (|s|, W)."""

    @staticmethod
    def forward(ctx, abs_scores, weight, keep):
        n = abs_scores.numel()
        pruned = math.floor((1.0 - keep) * n)
        order = abs_scores.flatten().sort().indices  # ascending
        mask = torch.ones(n, dtype=weight.dtype)
        mask[order[:pruned]] = 0.0
        mask = mask.view_as(weight)
        alpha = (weight.abs() * mask).sum() / math.floor(keep * n)
        ctx.save_for_backward(weight.abs())
        return alpha * mask

    @staticmethod
    def backward(ctx, g):
        (abs_weight,) = ctx.saved_tensors
        return g * abs_weight, None, None


class SubnetConv(nn.Conv2d):
    keep = 0.5

    def __init__(self, cin, cout, k, stride=1, padding=0):
        super().__init__(cin, cout, k, stride=stride, padding=padding, bias=False)
        self.scores = nn.Parameter(torch.zeros_like(self.weight))
        self.weight.requires_grad_(False)

    def mask(self):
        return ReferenceMask.apply(self.scores.abs(), self.weight, self.keep) != 0

    def forward(self, x):
        q = ReferenceMask.apply(self.scores.abs(), self.weight, self.keep)
        return F.conv2d(x, torch.sign(self.weight) * q, stride=self.stride, padding=self.padding)


def bn(c):
    norm = nn.BatchNorm2d(c, affine=False, momentum=0.1, eps=1e-5)

    def count(module, args):  # values per channel in the batch statistics
        module.count = args[0].numel() // args[0].shape[1]

    norm.register_forward_pre_hook(count)
    return norm


class BasicBlock(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1, self.bn1 = SubnetConv(cin, planes, 3, stride, 1), bn(planes)
        self.conv2, self.bn2 = SubnetConv(planes, planes, 3, 1, 1), bn(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(SubnetConv(cin, planes, 1, stride), bn(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CResNet18(nn.Module):
    """The reference's cResNet18: 3x3 stem, four stages of two BasicBlocks, GAP, 1x1 fc."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = SubnetConv(3, 64, 3, 1, 1), bn(64)
        cin, stages = 64, []
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(cin, planes, stride),
                                        BasicBlock(planes, planes, 1)))
            cin = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = SubnetConv(512, 10, 1)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(F.adaptive_avg_pool2d(out, 1)).flatten(1)


class Conv2(nn.Module):
    """The reference's Conv2 (no BatchNorm): C3 R C3 R MP2, then 1x1 "FC" convs on the
    channel-major flattened map."""

    def __init__(self, side):
        super().__init__()
        self.convs = nn.Sequential(SubnetConv(3, 64, 3, 1, 1), nn.ReLU(),
                                   SubnetConv(64, 64, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2))
        self.flat = 64 * (side // 2) ** 2
        self.linear = nn.Sequential(SubnetConv(self.flat, 256, 1), nn.ReLU(),
                                    SubnetConv(256, 256, 1), nn.ReLU(), SubnetConv(256, 10, 1))

    def forward(self, x):
        out = self.convs(x).reshape(x.shape[0], self.flat, 1, 1)
        return self.linear(out).flatten(1)


def our_config(model, keep, weight_decay):
    return ml_collections.ConfigDict(dict(
        model=model, model_options={}, mode="biprop", keep_fraction=keep, weight_init="kaiming_normal",
        scale_fan="none", fan_mode="fan_in", pruning="layerwise", bn_affine=False,
        learn_batchnorm=False, tune_batchnorm=False, optimizer="sgd", learning_rate=LR,
        momentum=MOMENTUM, weight_decay=weight_decay, nesterov=False, adam_weight_decay=False,
        grad_clip=0.0, schedule="constant", warmup_epochs=0, schedule_granularity="epoch",
        num_epochs=1, label_smoothing=0.0, precision="float32", mask_impl="per_layer",
        mask_method="radix_many", prune_ramp_epochs=10, seed=0))


def to_torch_kernel(kernel, torch_shape, flatten_side=None):
    """Our HWIO conv / (in, out) dense kernel in the reference's OIHW layout. A dense layer
    right after a flatten reads (h, w, c)-ordered features where the reference reads
    (c, h, w): its rows are permuted (written out index by index, not with our code)."""
    k = np.asarray(kernel, np.float64)
    if k.ndim == 4:
        return k.transpose(3, 2, 0, 1)
    if flatten_side is not None:
        side, channels = flatten_side, k.shape[0] // flatten_side ** 2
        rows = [(h * side + w) * channels + c
                for c in range(channels) for h in range(side) for w in range(side)]
        k = k[rows]
    return k.T.reshape(torch_shape)


def reference_alpha(monkeypatch, keep):
    """Our alpha switched to the reference's divisor floor(k n) for this comparison."""
    original = ops.masked_kernel

    def floor_kn(weight, mask, count, binarize=True):
        return original(weight, mask, math.floor(keep * weight.size), binarize)

    monkeypatch.setattr(ops, "masked_kernel", floor_kn)


# Our per-layer top-k of |scores|, compiled once per layer shape (op by op, each of its
# primitives would compile on its own for every layer).
_topk_of_abs = jax.jit(lambda s, kept: ops.topk_mask(jnp.abs(s), kept), static_argnums=1)


def leaf(tree, path, name):
    node = tree
    for part in path:
        node = node[part]
    return np.asarray(node[name])


@pytest.mark.parametrize("model,keep,weight_decay,side,flatten_side", [
    # ResNet-18 in float32 on the CPU, ours and PyTorch's: about 40 s.
    pytest.param("resnet18_cifar", 0.2, 5e-4, 8, None, marks=pytest.mark.full_size),
    ("conv2", 0.3, 1e-4, 8, 4),
])
def test_one_step_matches_the_reference(monkeypatch, model, keep, weight_decay, side,
                                        flatten_side):
    reference_alpha(monkeypatch, keep)
    config = our_config(model, keep, weight_decay)
    net = train.create_model(config, 10)
    tx = optim.make_optimizer(config, steps_per_epoch=1)
    state = train.create_train_state(config, net, tx, jax.random.PRNGKey(3), (side, side, 3))
    # Scores spread over a wide range so the masks are far from ties.
    rng = np.random.default_rng(0)
    order = probe.prunable_layers(net, (side, side, 3))
    params = jax.tree.map(np.asarray, state.params)
    for path in order:
        node = params
        for part in path:
            node = node[part]
        node["scores"] = rng.uniform(-1, 1, node["scores"].shape).astype(np.float32)
    state = state.replace(params=jax.tree.map(jnp.asarray, params),
                          opt_state=tx.init(jax.tree.map(jnp.asarray, params)))
    images = rng.normal(size=(4, side, side, 3)).astype(np.float32)
    labels = rng.integers(0, 10, size=4).astype(np.int32)

    # The reference, from our initial W and scores.
    SubnetConv.keep = keep
    ref = CResNet18() if model == "resnet18_cifar" else Conv2(side)
    ref = ref.double()  # float64: the reference side is the yardstick
    convs = [m for m in ref.modules() if isinstance(m, SubnetConv)]
    assert len(convs) == len(order)
    first_dense = next(i for i, p in enumerate(order) if "conv" not in p[-1]) if flatten_side else None
    with torch.no_grad():
        for i, (conv, path) in enumerate(zip(convs, order)):
            side_arg = flatten_side if i == first_dense else None
            conv.weight.copy_(torch.from_numpy(to_torch_kernel(
                leaf(state.frozen, path, "weight"), conv.weight.shape, side_arg)))
            conv.scores.copy_(torch.from_numpy(to_torch_kernel(
                leaf(state.params, path, "scores"), conv.scores.shape, side_arg)))
    masks_before = [conv.mask().numpy().copy() for conv in convs]
    sgd = torch.optim.SGD([c.scores for c in convs], lr=LR, momentum=MOMENTUM,
                          weight_decay=weight_decay)
    ref.train()
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float64))
    ref_loss = F.cross_entropy(ref(x), torch.from_numpy(labels).long())
    sgd.zero_grad()
    ref_loss.backward()
    sgd.step()

    # Ours.
    step, _ = train.make_steps(config, net, tx)
    new_state, metrics = jax.jit(step)(state, dict(image=jnp.asarray(images),
                                                  label=jnp.asarray(labels)))
    assert bool(metrics["finite"])
    np.testing.assert_allclose(float(metrics["loss"]), ref_loss.item(), rtol=2e-5)

    for i, (conv, path, mask) in enumerate(zip(convs, order, masks_before)):
        side_arg = flatten_side if i == first_dense else None
        ours_mask = to_torch_kernel(
            np.asarray(_topk_of_abs(leaf(state.params, path, "scores"),
                                    ops.kept_count(conv.scores.numel(), keep))),
            conv.scores.shape, side_arg)
        np.testing.assert_array_equal(ours_mask != 0, mask, err_msg="/".join(path))
        ours = to_torch_kernel(leaf(new_state.params, path, "scores"), conv.scores.shape, side_arg)
        ref_scores = conv.scores.detach().numpy()
        moved = ref_scores - to_torch_kernel(leaf(state.params, path, "scores"),
                                             conv.scores.shape, side_arg)
        assert np.abs(moved).max() > 1e-6, "/".join(path)  # the step moved this layer
        # Float32 agreement of the update: a small fraction of the largest update, plus the
        # rounding of the stored float32 score itself.
        bound = 1e-4 * np.abs(moved).max() + 2 * np.spacing(np.abs(ref_scores).astype(np.float32))
        assert np.all(np.abs(ours - ref_scores) <= bound), (
            "/".join(path), np.abs(ours - ref_scores).max(), np.abs(moved).max())

    norms = [m for m in ref.modules() if isinstance(m, nn.BatchNorm2d)]
    bn_order = probe.prunable_layers(net, (side, side, 3), kinds=(jax_bn_type(),))
    assert len(norms) == len(bn_order)
    for norm, path in zip(norms, bn_order):
        mean = leaf(new_state.batch_stats, path, "mean")
        var = leaf(new_state.batch_stats, path, "var")
        np.testing.assert_allclose(mean, norm.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        # PyTorch updates with the unbiased batch variance, Flax with the biased one.
        n = norm.count
        batch_var_unbiased = (norm.running_var.numpy() - (1 - 0.1)) / 0.1
        expected = (1 - 0.1) + 0.1 * batch_var_unbiased * (n - 1) / n
        np.testing.assert_allclose(var, expected, rtol=1e-5, atol=1e-6, err_msg="/".join(path))


def jax_bn_type():
    import flax.linen as fnn  # noqa: PLC0415

    return fnn.BatchNorm
