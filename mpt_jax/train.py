"""Training and evaluation steps: pure functions of (state, batch), jitted over a mesh.

  TrainState(step, params, frozen, batch_stats, opt_state, pruning, kept_total, rng,
             mask_state)
  create_model(config, num_classes) -> nn.Module
  create_train_state(config, model, tx, rng, image_shape) -> TrainState
  train_step(state, batch, *, apply_fn, tx, label_smoothing, mask_fn, kept) -> (state, metrics)
  eval_step(state, batch, *, apply_fn, label_smoothing, mask_fn, kept) -> metric sums
  make_steps(config, model, tx) -> (train step, eval step) with everything bound, un-jitted
  make_parallel_steps(config, model, tx, mesh) -> (jitted train step, jitted eval step)
  evaluate(p_eval, state, ds) -> dict(top1, top5, loss, count) over the whole eval split
  eval_summary(sums, ds) -> the same dict from the fetched per-batch sums

The steps never see the config: ``make_steps`` reads it once, outside jit, and binds plain
functions and values (the model's ``apply``, the optax transformation, the label smoothing
and the mask rule). The loop that drives them is mpt_jax.loop. ``kept``, a ``kept``
collection of per-layer counts (``masks.kept_counts``), replaces the counts of the
config's keep fraction: mpt_jax.members vmaps the steps over members of different keep
fractions this way; single runs pass none.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, struct

from mpt_jax import config_utils, masks as masks_lib, ops, optim, parallel, warm_masks

# (params, mask_state[, kept]) -> (the "masks" collection for model.apply, the new
# mask_state); ``kept``: a member program's per-layer kept counts
MaskFn = Callable[..., tuple[dict, Any]]


class TrainState(struct.PyTreeNode):
    """Everything a training step reads and writes (all leaves are arrays, checkpointed whole).

    params: what the optimizer sees (scores | kernel | BN scale/bias), frozen: random weights W,
    batch_stats: BN running statistics, pruning: per-layer global threshold (global pruning
    only, else {}), kept_total: the number of scores kept network-wide under global pruning
    at the current keep fraction k_t of the ramp (N - floor((1 - k_t) N), computed on the host
    in float64 by ``with_keep_fraction``; an int32 array so that the ramp never recompiles;
    unused by layerwise pruning), rng: PRNG key data of the run, mask_state: what the mask
    rule carries from step to step ({} but for mask_method "warm", whose previous
    thresholds only speed the search up: not saved in checkpoints, see mpt_jax.warm_masks).
    """

    step: jax.Array
    params: Any
    frozen: Any
    batch_stats: Any
    opt_state: Any
    pruning: Any
    kept_total: jax.Array
    rng: jax.Array
    mask_state: Any = struct.field(default_factory=dict)

    def variables(self, params=None, pruning=None) -> dict:
        """Flax variable dict for ``model.apply`` (empty collections left out)."""
        cols = dict(params=self.params if params is None else params, frozen=self.frozen,
                    batch_stats=self.batch_stats,
                    pruning=self.pruning if pruning is None else pruning)
        return {k: v for k, v in cols.items() if k == "params" or v}


# Checkpoints hold every field but mask_state (a hint: the same training without it), so
# checkpoints written before it existed restore too.
def _saved_fields(state: TrainState) -> dict:
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
            if f.name != "mask_state"}


serialization.register_serialization_state(
    TrainState, lambda state: serialization.to_state_dict(_saved_fields(state)),
    lambda template, saved: template.replace(**serialization.from_state_dict(
        _saved_fields(template), saved)), override=True)


# ---------------------------------------------------------------------------
# Construction (reads the config; outside jit)


def compute_dtype(config) -> Any:
    """precision "auto": bfloat16 compute on GPU/TPU, float32 on CPU; variables stay float32."""
    precision = config.get("precision", "auto")
    if precision == "auto":
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else jnp.float32
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[precision]


def create_model(config, num_classes: int) -> nn.Module:
    from mpt_jax import models  # noqa: PLC0415  (the model zoo is only needed by a run)

    return models.get_model(config.model, **config_utils.model_kwargs(
        config, num_classes, dtype=compute_dtype(config)))


def create_train_state(config, model: nn.Module, tx: optax.GradientTransformation, rng,
                       image_shape) -> TrainState:
    """Initialises the variables from ``rng`` (params and frozen W) and the optimizer state.

    One jitted computation (eager initialisation would compile every op separately).
    """
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    keep = float(config.keep_fraction)
    warm = warm_masks.uses_carried_state(config)

    @jax.jit
    def init(key):
        # model.init gets split(PRNGKey(seed))[0]: mpt_jax.ticket regenerates W from it.
        init_rng, state_rng = jax.random.split(key)
        variables = model.init({"params": init_rng}, dummy, train=False)
        # Strip weak types (e.g. the -inf threshold placeholders) so the state a step returns
        # has exactly the input's types: otherwise the second step would recompile.
        variables = jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype), variables)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params,
            frozen=variables.get("frozen", {}), batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params), pruning=variables.get("pruning", {}),
            kept_total=jnp.asarray(global_kept_total(params, keep), jnp.int32),
            rng=jax.random.key_data(state_rng),
            mask_state=warm_masks.initial_state(params) if warm else {})

    return init(jax.random.key_data(rng) if _is_typed_key(rng) else rng)


def _is_typed_key(rng) -> bool:
    return jnp.issubdtype(jnp.asarray(rng).dtype if not hasattr(rng, "dtype") else rng.dtype,
                          jax.dtypes.prng_key)


def resolved_mask_impl(config) -> str:
    """``mask_impl`` with "auto" resolved: batched on GPU (measured fastest there),
    per_layer on CPU / TPU."""
    return masks_lib.resolve_mask_impl(config.get("mask_impl", "auto"))


def mask_rule(config) -> MaskFn | None:
    """How the step computes the masks of layerwise biprop / edgepopup when ``mask_impl``
    resolves to "batched": all layers' top-k in one computation (mpt_jax.masks) before
    ``model.apply``, which then skips the per-layer top-k. None: the layers compute their own.
    mask_method "warm" starts each search from the thresholds in ``state.mask_state``.

    Same kept sets either way, so the same training (``mask_impl`` is not part of the
    checkpoint fingerprint). This is the steps' one call into the mask library.
    """
    rule = masks_lib.rule_from_config(config.mode, config.get("pruning", "layerwise"),
                                      config.get("mask_impl", "auto"),
                                      config.get("mask_method", masks_lib.DEFAULT_METHOD))
    if not isinstance(rule, masks_lib.BatchedTopK):
        return None
    keep_fraction = float(config.keep_fraction)
    if warm_masks.uses_carried_state(config):
        return functools.partial(warm_masks.step_masks, keep_fraction=keep_fraction,
                                 block=rule.block)
    return lambda params, carried, kept=None: (
        rule.precompute(params, keep_fraction, kept).get(masks_lib.MASKS, {}), carried)


def make_steps(config, model: nn.Module, tx: optax.GradientTransformation):
    """(train_step, eval_step) of ``config`` with the model, optimizer, loss settings and
    mask rule bound: pure, un-jitted functions of (state, batch)."""
    bound = dict(apply_fn=model.apply, label_smoothing=float(config.get("label_smoothing", 0.0)),
                 mask_fn=mask_rule(config))
    return functools.partial(train_step, tx=tx, **bound), functools.partial(eval_step, **bound)


def make_parallel_steps(config, model: nn.Module, tx: optax.GradientTransformation, mesh):
    """(train_step, eval_step) jitted over ``mesh``: state replicated, batch split on "data",
    the state donated to the train step."""
    rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    train_fn, eval_fn = make_steps(config, model, tx)
    p_train = jax.jit(train_fn, in_shardings=(rep, data), out_shardings=(rep, rep),
                      donate_argnums=(0,))
    p_eval = jax.jit(eval_fn, in_shardings=(rep, data), out_shardings=rep)
    return p_train, p_eval


# ---------------------------------------------------------------------------
# Keep fraction and global threshold


def _score_leaves(params) -> list:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [x for path, x in flat if getattr(path[-1], "key", None) == "scores"]


def global_kept_total(params, keep_fraction: float) -> int:
    """Scores kept network-wide at ``keep_fraction`` (float64 on the host)."""
    total = sum(math.prod(x.shape) for x in _score_leaves(params))
    return ops.global_kept_count(total, keep_fraction) if total else 0


def with_keep_fraction(state: TrainState, keep_fraction: float, sharding=None) -> TrainState:
    """``state`` with the global-pruning kept count for keep fraction k_t (host float)
    placed like ``sharding`` (replicated); the count is exact, not rounded through float32."""
    kept = np.asarray(global_kept_total(state.params, float(keep_fraction)), np.int32)
    return state.replace(kept_total=jax.device_put(kept, sharding))


def with_global_threshold(state: TrainState) -> dict:
    """The 'pruning' collection with the global threshold tau (from the current scores and
    the kept count of k_t)."""
    if not state.pruning:
        return state.pruning
    tau = ops.global_threshold_for_count(_score_leaves(state.params), state.kept_total)
    return jax.tree.map(lambda t: jnp.broadcast_to(tau, t.shape).astype(t.dtype), state.pruning)


# ---------------------------------------------------------------------------
# Steps (pure, un-jitted)


def _step_masks(state: TrainState, mask_fn: MaskFn | None,
                kept: dict | None = None) -> tuple[dict, Any]:
    if mask_fn is None:
        return {}, state.mask_state
    with jax.named_scope(ops.SCOPE_MASK):
        params = jax.lax.stop_gradient(state.params)
        if kept is None:
            return mask_fn(params, state.mask_state)
        return mask_fn(params, state.mask_state, kept)


def _with_masks(variables: dict, masks: dict, kept: dict | None = None) -> dict:
    if kept:
        variables = {**variables, masks_lib.KEPT: kept}
    return {**variables, masks_lib.MASKS: masks} if masks else variables


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def train_step(state: TrainState, batch: dict, *, apply_fn: Callable,
               tx: optax.GradientTransformation, label_smoothing: float = 0.0,
               mask_fn: MaskFn | None = None, kept: dict | None = None
               ) -> tuple[TrainState, dict]:
    """One optimizer step. Returns the new state and batch metrics.

    ``apply_fn``: the model's ``apply``; ``mask_fn``: params -> "masks" collection, or None
    (see ``mask_rule``); ``kept``: per-layer kept counts replacing the keep fraction's, or
    None. Non-finite loss or gradients leave the state unchanged and report finite=False:
    the host stops the run instead of training on NaNs.
    """
    pruning = with_global_threshold(state)  # the global threshold before every forward pass
    masks, mask_state = _step_masks(state, mask_fn, kept)

    def loss_fn(params):
        logits, updates = apply_fn(_with_masks(state.variables(params, pruning), masks, kept),
                                   batch["image"], train=True, mutable=["batch_stats"])
        loss = optim.cross_entropy(logits, batch["label"], label_smoothing).mean()
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    with jax.named_scope("optimizer"):  # scope names: benchmarks/profile_step.py
        opt_updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1, params=optax.apply_updates(state.params, opt_updates),
            opt_state=opt_state, batch_stats=updates.get("batch_stats", state.batch_stats),
            pruning=pruning, mask_state=mask_state)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    with jax.named_scope("metrics"):
        _, top = jax.lax.top_k(logits.astype(jnp.float32), min(5, logits.shape[-1]))
        top1 = jnp.mean((top[:, 0] == batch["label"]).astype(jnp.float32))
        top5 = jnp.mean(jnp.any(top == batch["label"][:, None], axis=-1).astype(jnp.float32))
    return new_state, dict(loss=loss, top1=top1, top5=top5, finite=finite)


def eval_step(state: TrainState, batch: dict, *, apply_fn: Callable,
              label_smoothing: float = 0.0, mask_fn: MaskFn | None = None,
              kept: dict | None = None) -> dict:
    """Sums over the real (mask == 1) rows of one eval batch: top-1 / top-5 correct, loss, count.

    The loss is the training criterion, label smoothing included.
    """
    pruning = with_global_threshold(state)
    variables = _with_masks(state.variables(pruning=pruning),
                            _step_masks(state, mask_fn, kept)[0], kept)
    logits = apply_fn(variables, batch["image"], train=False)
    labels = batch["label"]
    mask = batch.get("mask")
    mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    k = min(5, logits.shape[-1])
    _, top = jax.lax.top_k(logits.astype(jnp.float32), k)
    top1 = (top[:, 0] == labels).astype(jnp.float32)
    top5 = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
    loss = optim.cross_entropy(logits, labels, label_smoothing)
    return dict(top1_correct=jnp.sum(top1 * mask), top5_correct=jnp.sum(top5 * mask),
                loss_sum=jnp.sum(loss * mask), count=jnp.sum(mask))


def evaluate(p_eval, state, ds) -> dict:
    """top1 / top5 (percent) and mean loss over every eval example exactly once."""
    outs = [p_eval(state, batch) for batch in ds.eval_batches()]
    return eval_summary(parallel.to_host(outs), ds)


def eval_summary(fetched: list, ds) -> dict:
    """``evaluate``'s result from the fetched per-batch sums of ``eval_step``."""
    # Summed on the host in float64: no eager device ops (each would compile), exact counts.
    sums = {k: float(np.sum([np.float64(o[k]) for o in fetched])) for k in fetched[0]}
    if int(sums["count"]) != int(ds.num_eval):  # the data contract: every example once
        if jax.process_index() == 0:
            print(f"warning: evaluated {int(sums['count'])} examples, the eval split has "
                  f"{ds.num_eval}", flush=True)
    n = max(sums["count"], 1.0)
    return dict(top1=100.0 * sums["top1_correct"] / n, top5=100.0 * sums["top5_correct"] / n,
                loss=sums["loss_sum"] / n, count=int(sums["count"]))
