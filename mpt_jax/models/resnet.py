"""CIFAR, ImageNet and wide ResNets of the reference, v1 (post-activation) blocks.

Every convolution, the 1x1 projection shortcuts, the stem and the classifier are biprop
layers, pruned and binarised at the same keep fraction, as in the reference. Layer names
are flat and stable: ``conv1``/``bn1`` (stem), ``layer{stage}_block{i}_conv{j}`` /
``_bn{j}`` / ``_shortcut_conv`` / ``_shortcut_bn`` (stages counted from 1, blocks from 0,
as torchvision) and ``classifier``.

With ``binary_activations`` (the ``_binact`` entries) the sign activation S replaces every
ReLU (stem, inside blocks, after the residual add); the input image and the classifier
input (a global average of signs, values in [-1, 1]) are not binary, as in the reference.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mpt_jax.models.registry import register
from mpt_jax.models.common import ScoreNet, max_pool


def global_avg_pool(x):
    # Averaged in at least float32 whatever the compute dtype (a sum over up to 56x56 values).
    return jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2)).astype(x.dtype)


class _ResNetBase(ScoreNet):
    """Residual blocks shared by the CIFAR and ImageNet ResNets (not registered)."""

    def _shortcut(self, x, features: int, strides: int, train: bool, prefix: str):
        # "Option B": a C1+BN projection only where the shape changes, identity elsewhere.
        if strides == 1 and x.shape[-1] == features:
            return x
        x = self.conv(features, 1, strides, name=f"{prefix}_shortcut_conv")(x)
        return self.norm(train, name=f"{prefix}_shortcut_bn")(x)

    def basic_branch(self, x, features: int, strides: int, train: bool, prefix: str):
        """C3(act(BN1(C3(x, s)))): a BasicBlock's residual branch up to its second conv
        (BN2 is placed by the block: before the add in v1, after it in v2)."""
        y = self.conv(features, 3, strides, name=f"{prefix}_conv1")(x)
        y = self.act(self.norm(train, name=f"{prefix}_bn1")(y))
        return self.conv(features, 3, 1, name=f"{prefix}_conv2")(y)

    def basic_block(self, x, features: int, strides: int, train: bool, prefix: str):
        """act(BN(C3(BN-act(C3(x, s)))) + shortcut(x)): the v1 BasicBlock."""
        y = self.basic_branch(x, features, strides, train, prefix)
        y = self.norm(train, name=f"{prefix}_bn2")(y)
        return self.act(y + self._shortcut(x, features, strides, train, prefix))

    def bottleneck_branch(self, x, planes: int, strides: int, train: bool, prefix: str,
                          base_width: int = 64):
        """BN3(C1(act(BN2(C3(act(BN1(C1(x))), s))))): a Bottleneck's residual branch."""
        width = planes * base_width // 64
        y = self.conv(width, 1, 1, name=f"{prefix}_conv1")(x)
        y = self.act(self.norm(train, name=f"{prefix}_bn1")(y))
        y = self.conv(width, 3, strides, name=f"{prefix}_conv2")(y)  # stride on the 3x3 (v1.5)
        y = self.act(self.norm(train, name=f"{prefix}_bn2")(y))
        y = self.conv(4 * planes, 1, 1, name=f"{prefix}_conv3")(y)
        return self.norm(train, name=f"{prefix}_bn3")(y)

    def bottleneck_block(self, x, planes: int, strides: int, train: bool, prefix: str,
                         base_width: int = 64):
        """torchvision v1.5 Bottleneck: C1(->u) C3(u->u, s) C1(u->4 planes), u = planes*base_width/64."""
        y = self.bottleneck_branch(x, planes, strides, train, prefix, base_width)
        return self.act(y + self._shortcut(x, 4 * planes, strides, train, prefix))

    def stages(self, x, stage_sizes: Sequence[int], planes: Sequence[int], block: str,
               base_width: int, train: bool):
        """The residual stages: ``stage_sizes[s]`` blocks of ``planes[s]`` (the first stage at
        stride 1, the first block of every later stage at stride 2)."""
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"unknown block {block!r}; valid values: basic, bottleneck")
        for stage, (blocks, p) in enumerate(zip(stage_sizes, planes)):
            for b in range(blocks):
                strides = 2 if stage > 0 and b == 0 else 1
                prefix = f"layer{stage + 1}_block{b}"
                if block == "basic":
                    x = self.basic_block(x, p, strides, train, prefix)
                else:
                    x = self.bottleneck_block(x, p, strides, train, prefix, base_width)
        return x

    def head(self, x):
        # The reference's AP4 on the final 4x4 CIFAR map is the global average; ImageNet uses GAP.
        # (On the small ResNets' 8x8 map it was not: docs/decisions.md#resnet-head.)
        return self.logits(self.dense(self.num_classes, name="classifier")(global_avg_pool(x)))


class CifarResNet(_ResNetBase):
    """CIFAR ResNets: cResNet18/34 and cResNet20...110 with BasicBlocks,
    and cResNet50/101/152 with Bottlenecks.

    Stem C3(3->w0) BN act, stages of ``stage_sizes`` blocks with ``stage_widths`` (first
    stage stride 1, later ones stride 2), GAP, classifier. For the small ResNets (widths
    16/32/64) this uses global average pooling and ``num_classes`` logits, the project's
    fix of the reference's 40-logit head (docs/decisions.md#resnet-head).

    ``block="bottleneck"`` is the reference's CIFAR ``Bottleneck`` (its models/resnet_cifar.py;
    no config of the paper uses it):
    C1(in->w) BN act C3(w->w, s) BN act C1(w->4w) BN, plus the shortcut, then act, with
    the stride on the 3x3 and a C1+BN projection whenever the shape changes (so also in
    the first block of stage 1, where 64 channels become 256). That is the v1.5 block the
    ImageNet ResNet-50 uses, at base width 64.
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    block: str = "basic"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.conv(self.stage_widths[0], 3, name="conv1")(x)
        x = self.act(self.norm(train, name="bn1")(x))
        x = self.stages(x, self.stage_sizes, self.stage_widths, self.block, 64, train)
        return self.head(x)


class ImageNetResNet(_ResNetBase):
    """ImageNet ResNet-18/34/50/101 and WRN-50-2/101-2, input 224x224.

    Stem C7(3->64, s2) BN, then ReLU -> MP3 (ReLU graph) or MP3 -> S (BinAct graph,
    the reference's order); four stages with ``planes`` (strides 1, 2, 2, 2) of BasicBlocks or
    torchvision v1.5 Bottlenecks (``base_width`` 128 = the wide WRN-50-2 / WRN-101-2);
    GAP; classifier. Pass ``num_classes=1000`` for ImageNet.
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = "basic"
    base_width: int = 64
    planes: Sequence[int] = (64, 128, 256, 512)
    pool_before_act: bool = False  # stem C7 BN MP3 act even with ReLU (the reference's WRN-34)

    def stage_planes(self) -> Sequence[int]:
        return self.planes

    def stem(self, x, train: bool):
        """C7(3->64, s2) BN, then act and MP3 in the reference's order (v2 models override it)."""
        x = self.conv(64, 7, 2, name="conv1")(x)
        x = self.norm(train, name="bn1")(x)
        if self.pool_before_act or self.binary_activations:
            # Pool before the activation: the reference's WRN-34 and BinAct stems.
            return self.act(max_pool(x, 3, 2, padding=1))
        return max_pool(self.act(x), 3, 2, padding=1)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.stem(x, train)
        x = self.stages(x, self.stage_sizes, self.stage_planes(), self.block, self.base_width,
                        train)
        return self.head(x)


class WideResNet34(ImageNetResNet):
    """The reference's "WideResNet-34-2": NOT a Zagoruyko-Komodakis WRN (docs/decisions.md#wrn34).
    (Also its WRN-34-3 and, with BasicBlocks [2, 2, 2, 2], WRN-18-2.)

    The ImageNet ResNet-34 (BasicBlocks [3, 4, 6, 3], 7x7 stem, max-pool) with stage widths
    64, 64(f+1), 128(f+1), 256(f+1) for ``widen_factor`` f (default 2: 64/192/384/768,
    48,270,528 scores at 1000 classes) and stem order C7 BN MP3 act for ReLU and sign.
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    pool_before_act: bool = True
    widen_factor: float = 2

    def stage_planes(self) -> Sequence[int]:
        widths = [64, 64 * (self.widen_factor + 1), 128 * (self.widen_factor + 1),
                  256 * (self.widen_factor + 1)]
        if self.widen_factor < 0 or any(float(w) != int(w) for w in widths):
            raise ValueError(f"widen_factor={self.widen_factor!r} gives stage widths {widths}; "
                             f"use a non-negative factor that makes them whole numbers (e.g. 2)")
        return [int(w) for w in widths]


_CIFAR_SMALL = (16, 32, 64)
for _depth in (20, 32, 44, 56, 110):
    _n = (_depth - 2) // 6
    register(f"resnet{_depth}_cifar", CifarResNet, stage_sizes=(_n,) * 3, stage_widths=_CIFAR_SMALL,
             block="basic")
register("resnet18_cifar", CifarResNet, stage_sizes=(2, 2, 2, 2), stage_widths=(64, 128, 256, 512),
         block="basic")
register("resnet34_cifar", CifarResNet, stage_sizes=(3, 4, 6, 3), stage_widths=(64, 128, 256, 512),
         block="basic")
# cResNet50/101/152 (reference models/resnet_cifar.py; no config of the paper uses them).
for _depth, _sizes in ((50, (3, 4, 6, 3)), (101, (3, 4, 23, 3)), (152, (3, 8, 36, 3))):
    register(f"resnet{_depth}_cifar", CifarResNet, stage_sizes=_sizes,
             stage_widths=(64, 128, 256, 512), block="bottleneck")

_IMAGENET_FIXED = dict(planes=(64, 128, 256, 512), pool_before_act=False)
register("resnet18", ImageNetResNet, stage_sizes=(2, 2, 2, 2), block="basic", base_width=64,
         **_IMAGENET_FIXED)
register("resnet34", ImageNetResNet, stage_sizes=(3, 4, 6, 3), block="basic", base_width=64,
         **_IMAGENET_FIXED)
register("resnet50", ImageNetResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck", base_width=64,
         **_IMAGENET_FIXED)
register("resnet101", ImageNetResNet, stage_sizes=(3, 4, 23, 3), block="bottleneck", base_width=64,
         **_IMAGENET_FIXED)
register("wrn50_2", ImageNetResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck", base_width=128,
         **_IMAGENET_FIXED)
register("wrn101_2", ImageNetResNet, stage_sizes=(3, 4, 23, 3), block="bottleneck", base_width=128,
         **_IMAGENET_FIXED)
register("wrn34_2", WideResNet34, stage_sizes=(3, 4, 6, 3), block="basic", base_width=64,
         planes=(64, 128, 256, 512), pool_before_act=True)
# The reference's other widen factors (its sweep configs only, no reported
# number): WideResNet34_3 (64/256/512/1024) and WideResNet18_2 ([2,2,2,2], 64/192/384/768).
# (WideResNet18_3's f = 2.5 gives fractional widths and crashes there; not registered.)
register("wrn34_3", WideResNet34, stage_sizes=(3, 4, 6, 3), block="basic", base_width=64,
         planes=(64, 128, 256, 512), pool_before_act=True, widen_factor=3)
register("wrn18_2", WideResNet34, stage_sizes=(2, 2, 2, 2), block="basic", base_width=64,
         planes=(64, 128, 256, 512), pool_before_act=True, widen_factor=2)
# The reference's cWideResNet18_2: cResNet18 with stage widths 64/192/384/768 (no config uses it).
register("wrn18_2_cifar", CifarResNet, stage_sizes=(2, 2, 2, 2),
         stage_widths=(64, 192, 384, 768), block="basic")
