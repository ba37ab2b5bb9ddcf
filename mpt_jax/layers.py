"""Flax linen layers with score-masked, binarised kernels, and their initialisers (docs/method.md).

Variable collections (what each holds decides what the optimizer can see):

* ``params``  -- what an optimizer may train: ``scores`` (biprop / edgepopup), ``kernel``
  (dense / binary_trained baselines), BatchNorm ``scale``/``bias`` when affine.
* ``frozen``  -- the random weights ``weight`` of the subnetwork modes. They are created
  once from the ``params`` PRNG stream at ``init`` and never enter the optimizer.
* ``batch_stats`` -- BatchNorm running statistics.
* ``pruning`` -- only with ``pruning="global"``: the scalar ``threshold`` tau of every
  layer, written by the training step before each forward pass
  (docs/method.md#global-pruning-optional).
* ``masks`` -- optional, layerwise biprop/edgepopup only: a bool ``mask`` per layer
  precomputed for all layers at once (``mpt_jax.masks.BatchedTopK``, the batched mask
  path). Read when given to ``apply``, never created by ``init``.

A layer receives its ``KernelOptions`` (mode, keep fraction, init, mask rule); the mask
rule (``mpt_jax.masks``) gives the kept set, ``mpt_jax.ops.ste_kernel`` the kernel and
its straight-through score gradient.

Kernel modes:

* ``biprop``          alpha * sign(W) * M (MPT, docs/method.md)
* ``edgepopup``       W * M (edge-popup baseline, paper appendix E)
* ``dense``           ordinary trained weights (full-precision baseline)
* ``binary_trained``  latent trained weights binarised to alpha * sign(W) with a
                      straight-through estimator (trained binary-weight baseline)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mpt_jax import masks, ops

MODES = ("biprop", "edgepopup", "dense", "binary_trained")
INITS = ("kaiming_normal", "signed_constant", "unsigned_constant")
FAN_MODES = ("fan_in", "fan_out")
SCALE_FAN = ("none", "reference", "kept")
RELU_GAIN = math.sqrt(2.0)  # also for BinAct models, as the reference (decisions.md#relu-gain)


def _choice(name: str, value: str, valid: Sequence[str]) -> str:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid values: {', '.join(valid)}")
    return value


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """(fan_in, fan_out) of a kernel in HWIO (conv) or (in, out) (dense) layout."""
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def weight_std(shape: Sequence[int], keep_fraction: float, fan_mode: str = "fan_in",
               scale_fan: str | bool = "none", gain: float = RELU_GAIN) -> float:
    """sigma = gain / sqrt(fan) of Kaiming initialisation, with the optional fan scaling.

    ``scale_fan``: "none" (the configs' "u*" inits), "reference" (fan * (1 - k): what the
    reference code does and what produced the paper's numbers) or "kept" (fan * k: the
    variance-preserving intent); docs/decisions.md#scale-fan. ``True`` means "reference".
    """
    if scale_fan is True:
        scale_fan = "reference"
    elif scale_fan is False or scale_fan is None:
        scale_fan = "none"
    _choice("scale_fan", scale_fan, SCALE_FAN)
    fan_in, fan_out = fans(shape)
    fan = fan_in if _choice("fan_mode", fan_mode, FAN_MODES) == "fan_in" else fan_out
    if scale_fan == "reference":
        if keep_fraction >= 1.0:
            raise ValueError("scale_fan='reference' multiplies the fan by (1 - keep_fraction), "
                             "which is 0 at keep_fraction=1; use scale_fan='none' or 'kept'")
        fan = fan * (1.0 - keep_fraction)
    elif scale_fan == "kept":
        fan = fan * keep_fraction
    return gain / math.sqrt(fan)


def random_weight_init(init: str = "kaiming_normal", keep_fraction: float = 1.0,
                       fan_mode: str = "fan_in", scale_fan: str | bool = "none") -> Callable:
    """Initialiser ``fn(key, shape, dtype)`` for the random weights W
    (docs/method.md#initialisation)."""
    _choice("init", init, INITS)

    def fn(key, shape, dtype=jnp.float32):
        std = weight_std(shape, keep_fraction, fan_mode, scale_fan)
        if init == "kaiming_normal":
            return std * jax.random.normal(key, shape, dtype)
        if init == "signed_constant":
            # Any fair +-1 draw is equivalent to the reference's sign of a uniform draw
            # (docs/decisions.md#signed-constant).
            return std * jax.random.rademacher(key, shape, dtype)
        return jnp.full(shape, std, dtype)  # unsigned_constant

    return fn


def score_init(key, shape, dtype=jnp.float32):
    """Scores ~ U(-b, b), b = 1/sqrt(fan_in) from the tensor shape, whatever ``fan_mode`` says.

    This is what PyTorch's Kaiming-uniform with a = sqrt(5) gives, the reference's score init.
    """
    bound = 1.0 / math.sqrt(fans(shape)[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


@dataclasses.dataclass(frozen=True)
class KernelOptions:
    """How a layer builds its kernel: the mode, the mask rule, the random-weight init.

    ``rule`` is a mask rule of ``mpt_jax.masks`` (``TopK()`` for layerwise pruning,
    ``GlobalThreshold()`` for global pruning; ``masks.rule_for_pruning(name)``). Invalid
    values raise a ValueError here, when the options are built.
    """

    mode: str = "biprop"
    keep_fraction: float = 0.5
    weight_init: str = "kaiming_normal"
    fan_mode: str = "fan_in"
    scale_fan: str | bool = "none"
    rule: Any = masks.TopK()

    def __post_init__(self):
        _choice("mode", self.mode, MODES)
        masks.validate_keep_fraction(self.keep_fraction)
        _choice("init", self.weight_init, INITS)
        _choice("fan_mode", self.fan_mode, FAN_MODES)
        if self.scale_fan not in (True, False, None):
            _choice("scale_fan", self.scale_fan, SCALE_FAN)

    def weight_initializer(self) -> Callable:
        return random_weight_init(self.weight_init, self.keep_fraction, self.fan_mode,
                                  self.scale_fan)


class _KernelLayer(nn.Module):
    """Shared kernel logic of BipropConv / BipropDense (not used directly)."""

    options: KernelOptions = KernelOptions()
    dtype: Any = jnp.float32  # compute dtype; variables are always float32

    def effective_kernel(self, shape: Sequence[int]) -> jax.Array:
        opts = self.options
        w_init = opts.weight_initializer()
        if opts.mode in ("dense", "binary_trained"):
            kernel = self.param("kernel", w_init, tuple(shape), jnp.float32)
            return kernel if opts.mode == "dense" else ops.binary_weight(kernel)
        weight = self.variable("frozen", "weight",
                               lambda: w_init(self.make_rng("params"), tuple(shape))).value
        scores = self.param("scores", score_init, tuple(shape), jnp.float32)
        with jax.named_scope(masks.SCOPE_MASK):
            mask, count = opts.rule.layer_mask(self, scores, opts.keep_fraction)
        return ops.ste_kernel(weight, scores, mask, count, binarize=opts.mode == "biprop")


class BipropConv(_KernelLayer):
    """Bias-free 2-D convolution (NHWC input, HWIO kernel) with a score-masked kernel.

    Padding is explicit and symmetric (default (k - 1) // 2 per side), matching PyTorch
    also for stride 2, where XLA's "SAME" would pad (0, 1) (docs/decisions.md#padding).
    """

    features: int = 1
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ks = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        st = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        pads = [((k - 1) // 2,) * 2 for k in ks] if self.padding is None else [(self.padding,) * 2] * 2
        kernel = self.effective_kernel((*ks, x.shape[-1], self.features))
        return jax.lax.conv_general_dilated(
            x.astype(self.dtype), kernel.astype(self.dtype), window_strides=st, padding=pads,
            dimension_numbers=("NHWC", "HWIO", "NHWC"))


class BipropDense(_KernelLayer):
    """Bias-free dense layer (kernel (in, out)) with a score-masked kernel.

    The reference implements fully connected layers as 1x1 convolutions; the counts, fans
    and initialisations are identical.
    """

    features: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.effective_kernel((x.shape[-1], self.features))
        return jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))


def batch_norm(train: bool, affine: bool = False, dtype: Any = jnp.float32, name: str | None = None):
    """PyTorch-equivalent BatchNorm: momentum 0.9, eps 1e-5, global-batch statistics
    (docs/decisions.md#batchnorm).

    Non-affine (no scale/bias at all) by default; ``affine=True`` for "+BN" and the dense
    baselines. Statistics are computed in float32 whatever the compute dtype.
    """
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        use_scale=affine, use_bias=affine, dtype=dtype,
                        param_dtype=jnp.float32, name=name)
