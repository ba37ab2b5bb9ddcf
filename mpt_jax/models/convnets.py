"""Conv-2/4/6/8, Conv-nWide and VGG-Small families of the reference (CIFAR-10, 32x32 input).

Every "fully connected" layer of the reference is a 1x1 convolution on a (N, F, 1, 1)
tensor; here it is a ``BipropDense`` on the flattened (N, F) tensor, which has the same
weights, fans and initialisation. Score counts equal the reference's weight counts exactly
(tests/test_models.py lists them).
"""
from __future__ import annotations

import flax.linen as nn

from mpt_jax.models.registry import register
from mpt_jax.models.common import ScoreNet, flatten, max_pool


def scaled(width: int, width_mult: float) -> int:
    """scale(n) = int(n * width_mult), truncating as the reference does."""
    out = int(width * width_mult)
    if out < 1:
        raise ValueError(f"width_mult={width_mult!r} scales width {width} to {out} channels; "
                         f"use a width_mult >= {1.0 / width}")
    return out


class ConvNet(ScoreNet):
    """Conv-2/4/6/8 (ReLU, no BatchNorm) and their binary-activation (BinAct) form.

    ``depth`` (2, 4, 6 or 8; fixed by the registry) convolutions in blocks of two, widths
    64, 128, 256, 512, each block ending in a 2x2 max-pool; head FC(F->256) FC(256->256)
    FC(256->num_classes). ``width_mult`` scales every hidden width by int(n * width_mult):
    the Conv-nWide family (Conv8Wide 0.5/1.5/2.0 = 1,320,032 / 11,867,424 /
    21,094,784 scores).

    ReLU (MPT-1/32): per block C3 R C3 R MP2; head FC R FC R FC; no BatchNorm anywhere.
    BinAct (MPT-1/1): per block C3 BN S C3 **MP2 BN S** (pool before the BN of the
    second conv, as the reference); head FC BN S FC BN S FC, so the classifier input is binary.
    """

    depth: int = 4
    width_mult: float = 1.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.depth not in (2, 4, 6, 8):
            raise ValueError(f"ConvNet depth must be 2, 4, 6 or 8, got {self.depth!r}")
        binact = self.binary_activations
        layer = 0
        for width in (64, 128, 256, 512)[: self.depth // 2]:
            features = scaled(width, self.width_mult)
            for second in (False, True):
                layer += 1
                x = self.conv(features, 3, name=f"conv{layer}")(x)
                if not binact:
                    x = self.act(x)
                    if second:
                        x = max_pool(x, 2, 2)
                    continue
                if second:
                    x = max_pool(x, 2, 2)  # the reference pools before the BN of the second conv
                x = self.act(self.norm(train, name=f"bn{layer}")(x))
        x = flatten(x)
        for i in (1, 2):
            x = self.dense(scaled(256, self.width_mult), name=f"fc{i}")(x)
            if binact:
                x = self.norm(train, name=f"fc{i}_bn")(x)
            x = self.act(x)
        return self.logits(self.dense(self.num_classes, name="classifier")(x))


class VGGSmall(ScoreNet):
    """The VGG_Small graph that the reference ran, reproduced on purpose
    (docs/decisions.md#vgg-graph).

    ReLU entry ``vgg_small`` (MPT-1/32, 4,656,512 scores) -- only TWO activations, as in the
    reference code whose other ReLUs are commented out (this is not the textbook VGG-Small):
        C3(3->128) R C3(128->128) MP2 BN C3(128->256) C3(256->256) MP2 BN
        C3(256->512) C3(512->512) MP2 BN R, flatten 8192, FC(8192->classes).
    BinAct entry ``vgg_small_binact`` (= reference VGG_Small_BinAct; sign on raw conv outputs
    without BN, and a ReLU -- not a sign -- before the classifier):
        C3 S C3 MP2 BN S C3 S C3 MP2 BN S C3 S C3 MP2 BN R, FC.
    """

    @nn.compact
    def __call__(self, x, train: bool = False):
        binact = self.binary_activations
        layer = 0
        for stage, width in enumerate((128, 256, 512)):
            layer += 1
            x = self.conv(width, 3, name=f"conv{layer}")(x)
            if binact or stage == 0:  # ReLU graph: only the very first conv is activated
                x = self.act(x)
            layer += 1
            x = self.conv(width, 3, name=f"conv{layer}")(x)
            x = max_pool(x, 2, 2)
            x = self.norm(train, name=f"bn{layer}")(x)
            if binact and stage < 2:
                x = self.act(x)
        x = nn.relu(x)  # the activation feeding the classifier is ReLU in both reference graphs
        return self.logits(self.dense(self.num_classes, name="classifier")(flatten(x)))


class WideVGGSmall(ScoreNet):
    """The reference's Wide_VGG_Small and Wide_VGG_Small_132, the graphs that were run
    (docs/decisions.md#vgg-graph).

    Widths 16w, 32w, 64w with w = ``width_mult`` (default 10: 160/320/640 channels,
    7,249,120 scores; the paper's "1.25x" VGG-Small):
        C3(3->16w) BN a C3 MP2 BN a C3(->32w) BN a C3 MP2 BN a C3(->64w) BN a C3 MP2 BN R,
        flatten 64w*16, FC(->classes).
    ``wide_vgg_small_binact`` = Wide_VGG_Small (a = sign, the MPT-1/1 headline; the last
    activation is still ReLU); ``wide_vgg_small`` = Wide_VGG_Small_132 (a = ReLU, MPT-1/32).
    """

    width_mult: float = 10.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        layer = 0
        for stage, width in enumerate((16, 32, 64)):
            features = scaled(width, self.width_mult)
            for second in (False, True):
                layer += 1
                x = self.conv(features, 3, name=f"conv{layer}")(x)
                if second:
                    x = max_pool(x, 2, 2)
                x = self.norm(train, name=f"bn{layer}")(x)
                if not (second and stage == 2):
                    x = self.act(x)
        x = nn.relu(x)  # the reference's final activation is ReLU also in the BinAct graph
        return self.logits(self.dense(self.num_classes, name="classifier")(flatten(x)))


for _depth in (2, 4, 6, 8):
    register(f"conv{_depth}", ConvNet, depth=_depth)
register("vgg_small", VGGSmall)
register("wide_vgg_small", WideVGGSmall)
