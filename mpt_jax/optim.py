"""Optimizers, learning-rate schedules, trainable sets and the loss (docs/method.md#what-trains).

* ``make_schedule(config, steps_per_epoch)``: cosine or constant LR with linear warmup, once per
  epoch as the reference (``schedule_granularity="epoch"``: lr(step) = f(step // steps_per_epoch))
  or smoothly per step (``"step"``).
* ``trainable_labels(params, config)``: "train" / "freeze" per leaf of ``params``, by mode.
* ``make_optimizer(config, steps_per_epoch)``: ``optax.multi_transform`` that applies SGD (coupled
  weight decay + momentum) or Adam (no decay) to the trainable leaves and ``set_to_zero`` to the
  frozen ones, so frozen leaves get neither updates nor weight decay.
* ``cross_entropy(logits, labels, label_smoothing)``: per-example (label-smoothed) CE.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant")
GRANULARITIES = ("epoch", "step")
BN_LEAVES = ("scale", "bias")  # BatchNorm gamma / beta (layers.batch_norm)


# ---------------------------------------------------------------------------
# Learning-rate schedules (per epoch as in the reference; docs/decisions.md#schedule)


def epoch_lr(epoch, base_lr: float, num_epochs: int, warmup_epochs: int = 0,
             schedule: str = "cosine"):
    """LR at (possibly fractional) epoch ``epoch``; works on floats and jnp arrays.

    Warmup is linear in (e + 1): epoch 0 uses base / W and epoch W - 1 the full base. Cosine
    never reaches 0: the last epoch gets base * 0.5 * (1 + cos(pi (E - 1 - W) / (E - W))).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid schedules: {', '.join(SCHEDULES)}")
    e = jnp.minimum(jnp.asarray(epoch, dtype=float), float(num_epochs))  # f64 under x64
    warm = base_lr * (e + 1.0) / max(warmup_epochs, 1)
    if schedule == "constant":
        after = jnp.full_like(e, base_lr)
    else:
        span = max(num_epochs - warmup_epochs, 1)
        after = base_lr * 0.5 * (1.0 + jnp.cos(math.pi * (e - warmup_epochs) / span))
    return jnp.where(e < warmup_epochs, warm, after)


def make_schedule(config, steps_per_epoch: int) -> Callable[[Any], jax.Array]:
    """optax schedule ``step -> lr`` of the config.

    "epoch" granularity: lr(step) = f(step // steps_per_epoch), the reference's step function.
    "step" granularity: the same f evaluated at the fractional epoch step / steps_per_epoch,
    with the warmup interpolated per step (base * (t + 1/spe) / W, reaching base at the end of
    epoch W - 1).
    """
    spe = max(int(steps_per_epoch), 1)
    base = float(config.learning_rate)
    kw = dict(base_lr=base, num_epochs=int(config.num_epochs),
              warmup_epochs=int(config.warmup_epochs), schedule=config.schedule)
    granularity = config.get("schedule_granularity", "epoch")
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown schedule_granularity {granularity!r}; valid: "
                         f"{', '.join(GRANULARITIES)}")

    def schedule(step):
        step = jnp.asarray(step)
        if granularity == "epoch":
            return epoch_lr(step // spe, **kw)
        return _step_lr(step.astype(float) / spe, spe, **kw)

    return schedule


def _step_lr(t, spe, base_lr, num_epochs, warmup_epochs, schedule):
    # Warmup: base * (step + 1) / (W * spe); afterwards the continuous cosine / constant.
    warm = base_lr * (t + 1.0 / spe) / max(warmup_epochs, 1)
    after = epoch_lr(jnp.maximum(t, float(warmup_epochs)), base_lr, num_epochs, warmup_epochs,
                     schedule)
    return jnp.where(t < warmup_epochs, warm, after)


# ---------------------------------------------------------------------------
# Trainable sets (which ``params`` leaves each mode trains; docs/method.md#what-trains)


def _leaf_name(path) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))


def leaf_is_trainable(name: str, config) -> bool:
    """Whether a ``params`` leaf called ``name`` trains under ``config``.

    Scores train in the score modes unless BatchNorm is being fine-tuned; BatchNorm scale and
    shift train only with ``learn_batchnorm`` / ``tune_batchnorm``
    (docs/decisions.md#learn-batchnorm) or in the weight-training baselines.
    """
    mode = config.mode
    tune_bn = bool(config.get("tune_batchnorm", False))
    learn_bn = bool(config.get("learn_batchnorm", False))
    if name == "scores":
        return mode in ("biprop", "edgepopup") and not tune_bn
    if name == "kernel":  # dense / binary_trained latent weights
        return mode in ("dense", "binary_trained") and not tune_bn
    if name in BN_LEAVES:
        return learn_bn or tune_bn or mode in ("dense", "binary_trained")
    # Anything else (no such leaf exists today) trains only when everything trains.
    return mode in ("dense", "binary_trained")


def trainable_labels(params, config):
    """Tree of "train" / "freeze" labels with the structure of ``params``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "train" if leaf_is_trainable(_leaf_name(path), config) else "freeze",
        params)


def count_trainable(params, config) -> tuple[int, int]:
    """(number of trainable leaves, number of trainable entries)."""
    labels = jax.tree.leaves(trainable_labels(params, config))
    leaves = jax.tree.leaves(params)
    train = [x for x, lab in zip(leaves, labels) if lab == "train"]
    return len(train), int(sum(x.size for x in train))


# ---------------------------------------------------------------------------
# Optimizers (SGD with coupled decay and momentum, or Adam, as in the reference)


def _inner_optimizer(config, schedule) -> optax.GradientTransformation:
    name = config.optimizer
    if name == "sgd":
        # Coupled L2 before momentum: v <- mu v + (g + wd p); p <- p - lr v; first v = g + wd p.
        return optax.chain(
            optax.add_decayed_weights(float(config.weight_decay)),
            optax.sgd(schedule, momentum=float(config.momentum) or None,
                      nesterov=bool(config.get("nesterov", False))))
    if name == "adam":
        adam = optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)
        # The reference's Adam ignores weight_decay (docs/decisions.md#adam-weight-decay); coupled
        # L2 on request.
        if config.get("adam_weight_decay", False) and float(config.weight_decay) > 0:
            return optax.chain(optax.add_decayed_weights(float(config.weight_decay)), adam)
        return adam
    raise ValueError(f"unknown optimizer {name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD / Adam on the trainable leaves of ``params``; frozen leaves: zero update, no decay."""
    schedule = make_schedule(config, steps_per_epoch)
    inner = _inner_optimizer(config, schedule)
    if config.get("grad_clip", 0.0):
        # Element-wise value clipping, the reference's --grad-clip.
        inner = optax.chain(optax.clip(float(config.grad_clip)), inner)
    return optax.multi_transform({"train": inner, "freeze": optax.set_to_zero()},
                                 lambda params: trainable_labels(params, config))


# ---------------------------------------------------------------------------
# Loss (cross-entropy, optionally label-smoothed)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example CE against (1 - eps) onehot + eps / C (label smoothing eps, C classes)."""
    num_classes = logits.shape[-1]
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
