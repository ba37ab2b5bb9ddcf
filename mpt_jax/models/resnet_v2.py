"""The reference's "v2" ResNets: BatchNorm moved after the add (docs/decisions.md#v2-resnets).

Blocks (h = block width, sc = identity or the C1+BN projection of the v1 blocks):

* BasicBlock v2:  act(BN2(C3(act(BN1(C3(x, s)))) + sc(x)))  -- BN2 AFTER the residual add.
* Bottleneck v2:  act(BN4(BN3(C1(act(BN2(C3(act(BN1(C1(x))), s))))) + sc(x)))  -- BN3 stays
  before the add, an extra BN4 follows it.
* ImageNet stem v2: C7(3->64, s2) -> MP3 -> BN -> act (pool BEFORE the BN), for ReLU and sign.
* CIFAR stem: unchanged, C3 -> BN -> act.

Score counts equal the v1 models' (only BatchNorms move; non-affine BN has no parameters).
Layer names are those of ``resnet.py``; the bottleneck's extra BN is ``..._bn4``.

Registered names and the reference classes they reproduce (chrundle/biprop ``models/``):

==========================  =====================================================================
mpt_jax name                reference class (file)
==========================  =====================================================================
resnet18_cifar_v2           cResNet18_v2 (resnet_cifar_v2.py)
resnet18_cifar_v2_binact    cResNet18_BinAct_v2 (resnet_cifar_BinAct_v2.py)
resnet34_cifar_v2           cResNet34_v2 (resnet_cifar_v2.py)
resnet34_cifar_v2_binact    cResNet34_BinAct *of resnet_cifar_BinAct_v2.py* (the same name as the
                            v1 class of resnet_cifar_BinAct.py; which one the reference's
                            ``arch`` picks depends on its import order)
resnet18_v2_binact          ResNet18_BinAct_v2 (resnet_BinAct_v2.py)
resnet34_v2_binact          ResNet34_BinAct_v2 (resnet_BinAct_v2.py)
resnet50_v2_binact          ResNet50_BinAct_v2 (resnet_BinAct_v2.py), shape-corrected (below)
resnet101_v2_binact         ResNet101_BinAct *of resnet_BinAct_v2.py*, shape-corrected (below)
wrn34_2_v2_binact           WideResNet34_2_BinAct_v2 (resnet_BinAct_v2.py)
wrn50_2_v2_binact           WideResNet50_2_BinAct_v2 (resnet_BinAct_v2.py): bottleneck,
                            base_width 128, stage planes 64/192/384/768 (outputs x4)
resnet18_v2, resnet34_v2    ResNet18_v2, ResNet34_v2 (resnet_v2.py) with ``bn2_twice=True``
wrn34_2_v2                  WideResNet34_2_v2 (resnet_v2.py) with ``bn2_twice=True``
resnet50_v2, resnet101_v2   ResNet50_v2 / ResNet101 of resnet_v2.py, shape-corrected (below)
wrn50_2_v2                  the ReLU twin of wrn50_2_v2_binact; with ``widen_factor=1`` (stage
                            planes 64/128/256/512) the shape-corrected WideResNet50_2_v2
                            (resnet_v2.py), which crashes in the reference
==========================  =====================================================================

The ReLU names are the ``register()`` twins of the BinAct graphs (same graph, ReLU instead of
sign). Where the reference's non-BinAct v2 file differs:

* ``bn2_twice`` (option of the ImageNet / wide v2 models, default False): the reference's
  ReLU ``resnet_v2.py`` BasicBlock applies the SAME BN2 module twice, before and after the
  add: act(BN2(BN2(C3(...)) + sc(x))). ``bn2_twice=True`` reproduces it with one shared
  module (same statistics buffers and, with ``bn_affine``, the same scale/bias; in training
  its running statistics are updated twice per step, as in PyTorch). Default False: the
  double BatchNorm looks unintended, and no headline run of the paper uses these models, so
  it is reproduced only on request. Bottlenecks reject it (see the shape bug below).

Reference shape bugs, implemented shape-correct here:

* resnet_BinAct_v2.py sizes BN4 as 2*u channels (u = planes * base_width / 64), but it acts
  on the 4*planes block output: equal only for base_width 128 (wrn50_2_v2_binact, which is
  therefore exactly the reference). For base_width 64 (ResNet50/101_BinAct_v2) the
  reference crashes; here BN4 is sized to the tensor it normalises (4*planes channels).
* resnet_v2.py's Bottleneck applies its bn2 (u channels) after the add (4*planes channels),
  a crash for every base width; here that BN is the same shape-correct BN4 as above.
* The CIFAR v2 Bottleneck (cResNet50/101/152) has the same bug and no config uses it: not
  registered.

Also registered, with their v1 twins in resnet.py: wrn34_3_v2(_binact) (WideResNet34_3_BinAct_v2),
wrn18_2_v2(_binact) (WideResNet18_2(_BinAct)_v2) and wrn18_2_cifar_v2(_binact)
(cWideResNet18_2_BinAct_v2). Not implemented: WideResNet18_v2, old_WideResNet50_2_BinAct_v2
and the ResNeXt entries of resnet_cifar_BinAct_v2.py (no config uses them).
"""
from __future__ import annotations

import jax

from mpt_jax.models.registry import register
from mpt_jax.models.common import max_pool
from mpt_jax.models.resnet import CifarResNet, ImageNetResNet, WideResNet34


def _basic_block_v2(self, x, features: int, strides: int, train: bool, prefix: str):
    """act(BN2(C3(act(BN1(C3(x, s)))) + sc(x))): the v2 BasicBlock."""
    y = self.basic_branch(x, features, strides, train, prefix)
    bn2 = self.norm(train, name=f"{prefix}_bn2")
    if getattr(self, "bn2_twice", False):
        y = bn2(y)  # resnet_v2.py: the same module before and after the add (module docstring)
    return self.act(bn2(y + self._shortcut(x, features, strides, train, prefix)))


def _bottleneck_block_v2(self, x, planes: int, strides: int, train: bool, prefix: str,
                         base_width: int = 64):
    """act(BN4(BN3(C1(...)) + sc(x))): v1.5 bottleneck plus a BN4 after the add.

    BN4 has 4*planes channels, the size of the sum (the reference's 2*u is a shape bug for
    base_width 64; module docstring).
    """
    if getattr(self, "bn2_twice", False):
        raise ValueError("bn2_twice=True is defined for BasicBlocks only (the reference's "
                         "v2 Bottleneck applies a u-channel BN to the 4*planes sum, a shape "
                         "error); use bn2_twice=False with bottleneck models")
    y = self.bottleneck_branch(x, planes, strides, train, prefix, base_width)
    y = y + self._shortcut(x, 4 * planes, strides, train, prefix)
    return self.act(self.norm(train, name=f"{prefix}_bn4")(y))


def _stem_v2(self, x: jax.Array, train: bool) -> jax.Array:
    """C7(3->64, s2) -> MP3 -> BN -> act: max-pool BEFORE the BatchNorm, as the reference's v2."""
    x = self.conv(64, 7, 2, name="conv1")(x)
    x = max_pool(x, 3, 2, padding=1)
    return self.act(self.norm(train, name="bn1")(x))


class CifarResNetV2(CifarResNet):
    """CIFAR ResNet-18/34 v2 (cResNet18/34(_BinAct)_v2): v1 stem, v2 BasicBlocks."""

    basic_block = _basic_block_v2


class ImageNetResNetV2(ImageNetResNet):
    """ImageNet ResNet v2 (resnet_BinAct_v2.py / resnet_v2.py): v2 stem and blocks.

    ``bn2_twice``: apply the BasicBlock's BN2 also before the add (reference resnet_v2.py).
    """

    bn2_twice: bool = False

    basic_block = _basic_block_v2
    bottleneck_block = _bottleneck_block_v2
    stem = _stem_v2


class WideResNetV2(WideResNet34):
    """The reference's widened ImageNet ResNets, v2: stage planes 64,
    64(f+1), 128(f+1), 256(f+1) (f = ``widen_factor``, default 2: 64/192/384/768) of v2
    BasicBlocks (WideResNet34_2(_BinAct)_v2) or v2 Bottlenecks with base_width 128
    (WideResNet50_2_BinAct_v2); v2 stem C7 -> MP3 -> BN -> act.

    ``bn2_twice``: apply the BasicBlock's BN2 also before the add (reference resnet_v2.py).
    """

    bn2_twice: bool = False

    basic_block = _basic_block_v2
    bottleneck_block = _bottleneck_block_v2
    stem = _stem_v2


_WIDTHS = (64, 128, 256, 512)
register("resnet18_cifar_v2", CifarResNetV2, stage_sizes=(2, 2, 2, 2), stage_widths=_WIDTHS,
         block="basic")
register("resnet34_cifar_v2", CifarResNetV2, stage_sizes=(3, 4, 6, 3), stage_widths=_WIDTHS,
         block="basic")

_IMAGENET_FIXED = dict(planes=_WIDTHS, pool_before_act=True)  # the stem is _stem_v2 either way
register("resnet18_v2", ImageNetResNetV2, stage_sizes=(2, 2, 2, 2), block="basic", base_width=64,
         **_IMAGENET_FIXED)
register("resnet34_v2", ImageNetResNetV2, stage_sizes=(3, 4, 6, 3), block="basic", base_width=64,
         **_IMAGENET_FIXED)
register("resnet50_v2", ImageNetResNetV2, stage_sizes=(3, 4, 6, 3), block="bottleneck",
         base_width=64, **_IMAGENET_FIXED)
register("resnet101_v2", ImageNetResNetV2, stage_sizes=(3, 4, 23, 3), block="bottleneck",
         base_width=64, **_IMAGENET_FIXED)
register("wrn34_2_v2", WideResNetV2, stage_sizes=(3, 4, 6, 3), block="basic", base_width=64,
         **_IMAGENET_FIXED)
register("wrn50_2_v2", WideResNetV2, stage_sizes=(3, 4, 6, 3), block="bottleneck",
         base_width=128, **_IMAGENET_FIXED)
# The v2 twins of the sweep-config widen factors (resnet.py: wrn34_3, wrn18_2, wrn18_2_cifar).
register("wrn34_3_v2", WideResNetV2, stage_sizes=(3, 4, 6, 3), block="basic", base_width=64,
         widen_factor=3, **_IMAGENET_FIXED)
register("wrn18_2_v2", WideResNetV2, stage_sizes=(2, 2, 2, 2), block="basic", base_width=64,
         widen_factor=2, **_IMAGENET_FIXED)
register("wrn18_2_cifar_v2", CifarResNetV2, stage_sizes=(2, 2, 2, 2),
         stage_widths=(64, 192, 384, 768), block="basic")
