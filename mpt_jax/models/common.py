"""What every model shares: the kernel options (mode, keep fraction, init, mask rule)
and the layer factories."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mpt_jax import layers, masks, ops


class ScoreNet(nn.Module):
    """Base class of the model zoo. Subclasses implement ``__call__(x, train)``.

    Options shared by every model (``get_model(name, **options)``):
      mode            biprop | edgepopup | dense | binary_trained
      keep_fraction   fraction of weights KEPT per layer, in (0, 1]
      weight_init     kaiming_normal | signed_constant | unsigned_constant
                      (docs/method.md#initialisation)
      fan_mode        fan_in | fan_out
      scale_fan       none | reference (fan * (1 - k)) | kept (fan * k)
      pruning         layerwise | global (docs/method.md#global-pruning-optional)
      bn_affine       affine BatchNorm ("+BN"); default False (non-affine, as the reference's
                      plain biprop runs)
      num_classes     classifier outputs
      dtype           compute dtype (jnp.float32 or jnp.bfloat16); variables stay float32
    The classifier and the first layer are pruned and binarised like every other layer.
    """

    mode: str = "biprop"
    keep_fraction: float = 0.5
    weight_init: str = "kaiming_normal"
    fan_mode: str = "fan_in"
    scale_fan: Any = "none"
    pruning: str = "layerwise"
    bn_affine: bool = False
    num_classes: int = 10
    dtype: Any = jnp.float32
    binary_activations: bool = False  # set by the `_binact` registry entries (MPT-1/1)

    def kernel_options(self) -> layers.KernelOptions:
        """The options every prunable layer of the model receives (its mask rule included)."""
        return layers.KernelOptions(mode=self.mode, keep_fraction=self.keep_fraction,
                                    weight_init=self.weight_init, fan_mode=self.fan_mode,
                                    scale_fan=self.scale_fan,
                                    rule=masks.rule_for_pruning(self.pruning))

    def conv(self, features: int, kernel_size: int = 3, strides: int = 1, name: str | None = None,
             padding: int | None = None):
        return layers.BipropConv(features=features, kernel_size=kernel_size, strides=strides,
                                 padding=padding, name=name, options=self.kernel_options(),
                                 dtype=self.dtype)

    def dense(self, features: int, name: str | None = None):
        return layers.BipropDense(features=features, name=name, options=self.kernel_options(),
                                  dtype=self.dtype)

    def norm(self, train: bool, name: str | None = None):
        # The dense / binary_trained baselines learn their BN like ordinary networks.
        affine = self.bn_affine or self.mode in ("dense", "binary_trained")
        return layers.batch_norm(train, affine=affine, dtype=self.dtype, name=name)

    def act(self, x: jax.Array) -> jax.Array:
        return ops.binary_activation(x) if self.binary_activations else nn.relu(x)

    def logits(self, x: jax.Array) -> jax.Array:
        return x.astype(jnp.float32)


def max_pool(x, window: int, stride: int, padding: int = 0):
    """Max pooling with explicit symmetric padding by -inf (MP2: 2x2/2, MP3: 3x3/2 padded 1)."""
    pads = ((padding, padding), (padding, padding))
    return nn.max_pool(x, (window, window), (stride, stride), padding=pads)


def flatten(x):
    """NHWC flatten (h, w, c order; the reference flattens (c, h, w): see ticket import)."""
    return x.reshape(x.shape[0], -1)
