"""Training and evaluation: pure steps, jit over a mesh, the epoch loop (SPEC 6).

Public API (PREAMBLE "Train" contract):
  TrainState(step, params, frozen, batch_stats, opt_state, pruning, kept_total, rng)
  create_model(config, num_classes) -> nn.Module
  create_train_state(config, model, tx, rng, image_shape) -> TrainState
  train_step(state, batch, *, model, tx, config) -> (state, metrics)       pure, un-jitted
  eval_step(state, batch, *, model, label_smoothing=0.0) -> metric sums      pure, un-jitted
  make_parallel_steps(config, model, tx, mesh) -> (jitted train_step, jitted eval_step)
  evaluate(p_eval, state, ds) -> dict(top1, top5, loss, count)
  train_and_evaluate(config, workdir, *, dataset=None, overridden=()) -> result dict

The loop (SPEC 6.1, 6.6): per epoch, set the global-pruning keep fraction k_t (as its exact
kept count, an array in the state: no recompilation), train (lr from the optax schedule),
evaluate every eval example once (top-1 / top-5), track the best top-1, checkpoint, optionally
stop if not learning. Rerunning with the same workdir resumes from the last checkpoint at the
same epoch and step (data order is a pure function of (seed, epoch)); SIGTERM / Ctrl-C
checkpoint and exit; a non-finite step stops the run without saving it;
``checkpoint_every_steps`` adds mid-epoch saves (issue 4; see checkpoint.py for crash safety).
"""
from __future__ import annotations

import functools
import json
import math
import os
import signal
import time
from typing import Any, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from mpt_jax import checkpoint as ckpt_lib
from mpt_jax import config_utils, masks as masks_lib, metrics as metrics_lib, ops, optim, parallel
from mpt_jax.errors import Interrupted, TrainingError, UserError

NOT_LEARNING_TOP1 = 2.0  # percent; SPEC 6.6 "not learning" rule


class TrainState(struct.PyTreeNode):
    """Everything a training step reads and writes (all leaves are arrays, checkpointed whole).

    params: what the optimizer sees (scores | kernel | BN scale/bias), frozen: random weights W,
    batch_stats: BN running statistics, pruning: per-layer global threshold (global pruning
    only, else {}), kept_total: the number of scores kept network-wide under global pruning
    at the current keep fraction k_t of the ramp (SPEC 1.7: N - floor((1 - k_t) N), computed
    on the host in float64 by ``with_keep_fraction``; an int32 array so that the ramp never
    recompiles; unused by layerwise pruning), rng: PRNG key data of the run.
    """

    step: jax.Array
    params: Any
    frozen: Any
    batch_stats: Any
    opt_state: Any
    pruning: Any
    kept_total: jax.Array
    rng: jax.Array

    def variables(self, params=None, pruning=None) -> dict:
        """Flax variable dict for ``model.apply`` (empty collections left out)."""
        cols = dict(params=self.params if params is None else params, frozen=self.frozen,
                    batch_stats=self.batch_stats,
                    pruning=self.pruning if pruning is None else pruning)
        return {k: v for k, v in cols.items() if k == "params" or v}


# ---------------------------------------------------------------------------
# Construction


def compute_dtype(config) -> Any:
    """precision "auto": bfloat16 compute on GPU/TPU, float32 on CPU; variables stay float32."""
    precision = config.get("precision", "auto")
    if precision == "auto":
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else jnp.float32
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[precision]


def create_model(config, num_classes: int) -> nn.Module:
    from mpt_jax import models  # noqa: PLC0415

    return models.get_model(config.model, **config_utils.model_kwargs(
        config, num_classes, dtype=compute_dtype(config)))


def create_train_state(config, model: nn.Module, tx: optax.GradientTransformation, rng,
                       image_shape) -> TrainState:
    """Initialises the variables from ``rng`` (params and frozen W) and the optimizer state.

    One jitted computation (eager initialisation would compile every op separately).
    """
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    keep = float(config.keep_fraction)

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
            rng=jax.random.key_data(state_rng))

    return init(jax.random.key_data(rng) if _is_typed_key(rng) else rng)


def _is_typed_key(rng) -> bool:
    return jnp.issubdtype(jnp.asarray(rng).dtype if not hasattr(rng, "dtype") else rng.dtype,
                          jax.dtypes.prng_key)


# ---------------------------------------------------------------------------
# Steps (pure, un-jitted)


def _score_leaves(params) -> list:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [x for path, x in flat if getattr(path[-1], "key", None) == "scores"]


def global_kept_total(params, keep_fraction: float) -> int:
    """Scores kept network-wide at ``keep_fraction`` (SPEC 1.7, float64 on the host)."""
    total = sum(math.prod(x.shape) for x in _score_leaves(params))
    return ops.global_kept_count(total, keep_fraction) if total else 0


def with_keep_fraction(state: TrainState, keep_fraction: float, sharding=None) -> TrainState:
    """``state`` with the global-pruning kept count for keep fraction k_t (host float)
    placed like ``sharding`` (replicated); the count is exact, not rounded through float32."""
    kept = np.asarray(global_kept_total(state.params, float(keep_fraction)), np.int32)
    return state.replace(kept_total=jax.device_put(kept, sharding))


def with_global_threshold(state: TrainState) -> dict:
    """The 'pruning' collection with tau of SPEC 1.7 (from the current scores and the
    kept count of k_t)."""
    if not state.pruning:
        return state.pruning
    tau = ops.global_threshold_for_count(_score_leaves(state.params), state.kept_total)
    return jax.tree.map(lambda t: jnp.broadcast_to(tau, t.shape).astype(t.dtype), state.pruning)


def resolved_mask_impl(config) -> str:
    """``mask_impl`` with "auto" resolved: batched on GPU, per_layer on CPU/TPU (issue 6)."""
    return masks_lib.resolve_mask_impl(config.get("mask_impl", "auto"))


def batched_masks(state: TrainState, config) -> dict:
    """The ``masks`` collection (issue 6) when ``config.mask_impl == "batched"``, else {}.

    All layerwise biprop/edgepopup masks in one computation (mpt_jax.masks) before
    model.apply; the layers then skip their own per-layer top-k. Same kept sets, so the
    same training (mask_impl is not part of the checkpoint fingerprint).
    """
    if config is None:
        return {}
    rule = masks_lib.rule_from_config(config.mode, config.get("pruning", "layerwise"),
                                      config.get("mask_impl", "auto"),
                                      config.get("mask_method", "radix_many"))
    return rule.precompute(state.params, float(config.keep_fraction)).get("masks", {})


def _with_masks(variables: dict, masks: dict) -> dict:
    return {**variables, "masks": masks} if masks else variables


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def train_step(state: TrainState, batch: dict, *, model: nn.Module,
               tx: optax.GradientTransformation, config) -> tuple[TrainState, dict]:
    """One optimizer step (SPEC 6.1). Returns the new state and batch metrics.

    Non-finite loss or gradients leave the state unchanged and report finite=False (issue 4:
    the host stops the run instead of training on NaNs).
    """
    pruning = with_global_threshold(state)  # SPEC 1.7: tau before every forward pass
    smoothing = float(config.get("label_smoothing", 0.0))
    image = batch["image"]
    nan_step = int(config.get("debug_nan_at_step", -1))
    if nan_step > 0:  # tests only (issue 4): global step nan_step (1-based) sees NaN inputs
        image = jnp.where(state.step + 1 == nan_step, jnp.nan, image)

    with jax.named_scope(ops.SCOPE_MASK):
        masks = batched_masks(state, config)  # {} unless mask_impl == "batched"

    def loss_fn(params):
        logits, updates = model.apply(_with_masks(state.variables(params, pruning), masks),
                                      image, train=True, mutable=["batch_stats"])
        loss = optim.cross_entropy(logits, batch["label"], smoothing).mean()
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    with jax.named_scope("optimizer"):  # scope names: benchmarks/profile_step.py
        opt_updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1, params=optax.apply_updates(state.params, opt_updates),
            opt_state=opt_state, batch_stats=updates.get("batch_stats", state.batch_stats),
            pruning=pruning)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    with jax.named_scope("metrics"):
        _, top = jax.lax.top_k(logits.astype(jnp.float32), min(5, logits.shape[-1]))
        top1 = jnp.mean((top[:, 0] == batch["label"]).astype(jnp.float32))
        top5 = jnp.mean(jnp.any(top == batch["label"][:, None], axis=-1).astype(jnp.float32))
    return new_state, dict(loss=loss, top1=top1, top5=top5, finite=finite)


def eval_step(state: TrainState, batch: dict, *, model: nn.Module,
              label_smoothing: float = 0.0, config=None) -> dict:
    """Sums over the real (mask == 1) rows of one eval batch: top-1 / top-5 correct, loss, count.

    The loss is the training criterion including label smoothing (SPEC 6.2). ``config``
    (optional) only selects the mask implementation (mask_impl, mask_method).
    """
    pruning = with_global_threshold(state)
    variables = _with_masks(state.variables(pruning=pruning), batched_masks(state, config))
    logits = model.apply(variables, batch["image"], train=False)
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


def make_parallel_steps(config, model: nn.Module, tx: optax.GradientTransformation, mesh):
    """(train_step, eval_step) jitted over ``mesh``: state replicated, batch split on "data",
    the state donated to the train step."""
    rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    p_train = jax.jit(functools.partial(train_step, model=model, tx=tx, config=config),
                      in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=(0,))
    p_eval = jax.jit(functools.partial(eval_step, model=model,
                                       label_smoothing=float(config.get("label_smoothing", 0.0)),
                                       config=config),
                     in_shardings=(rep, data), out_shardings=rep)
    return p_train, p_eval


class CompiledAhead:
    """A jitted function compiled in a background thread for the abstract arguments
    ``shapes`` (ShapeDtypeStructs with shardings), called like the jitted function.

    ``train_and_evaluate`` compiles both steps this way (in-memory data) while it
    initialises the state, and the eval step's compilation goes on during epoch 1 instead
    of after it (the eval step alone was ~5 s of a 3-minute CIFAR run on a GPU). A call waits
    for the compilation if it is not done; if it failed, or the compiled executable does not
    accept the arguments (other shapes or shardings), the call goes through the jitted
    function, which compiles (and reports any error) as usual.
    """

    def __init__(self, jitted, *shapes):
        import concurrent.futures  # noqa: PLC0415

        self._jitted = jitted
        self._compiled = None
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile_ahead")
        self._future = pool.submit(lambda: jitted.lower(*shapes).compile())
        pool.shutdown(wait=False)

    def __call__(self, *args):
        if self._future is not None:
            try:
                self._compiled = self._future.result()
            except Exception:  # noqa: BLE001  (the jitted call below reports the real error)
                self._compiled = None
            self._future = None
        if self._compiled is not None:
            try:
                return self._compiled(*args)
            except (TypeError, ValueError):  # arguments the executable was not built for
                self._compiled = None
        return self._jitted(*args)


def abstract(tree, sharding=None):
    """ShapeDtypeStructs of a pytree of arrays (or of ShapeDtypeStructs), with ``sharding``
    or else each leaf's own, for ``jit(...).lower``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=sharding or getattr(x, "sharding", None),
        weak_type=bool(getattr(x, "weak_type", False))), tree)


# ---------------------------------------------------------------------------
# Loop helpers


def evaluate(p_eval, state, ds) -> dict:
    """top1 / top5 (percent) and mean loss over every eval example exactly once."""
    outs = [p_eval(state, batch) for batch in ds.eval_batches()]
    # Summed on the host in float64: no eager device ops (each would compile), exact counts.
    fetched = parallel.to_host(outs)
    sums = {k: float(np.sum([np.float64(o[k]) for o in fetched])) for k in fetched[0]}
    if int(sums["count"]) != int(ds.num_eval):  # the data contract: every example once
        _print(f"warning: evaluated {int(sums['count'])} examples, the eval split has "
               f"{ds.num_eval}")
    n = max(sums["count"], 1.0)
    return dict(top1=100.0 * sums["top1_correct"] / n, top5=100.0 * sums["top5_correct"] / n,
                loss=sums["loss_sum"] / n, count=int(sums["count"]))


class _StopSignal:
    """SIGTERM / SIGINT: finish the current step, checkpoint, exit (issue 4)."""

    def __init__(self):
        self.received = None
        self._old = {}

    def __enter__(self):
        if _is_main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # second signal: give up at once
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _is_main_thread() -> bool:
    import threading  # noqa: PLC0415
    return threading.current_thread() is threading.main_thread()


def _done(meta: dict, config) -> bool:
    if config.max_train_steps > 0 and meta.get("global_step", 0) >= config.max_train_steps:
        return True
    return meta.get("epoch", 0) >= config.num_epochs


def result_line(result: dict) -> str:
    """The final console line: held-out accuracy (final and best) and the split."""
    return (f"final accuracy: top-1 {result['final_top1']:.2f}% "
            f"(top-5 {result['final_top5']:.2f}%), best top-1 {result['best_top1']:.2f}% "
            f"at epoch {result['best_epoch']}; eval split: {result['eval_split']}; "
            f"{result['epochs_completed']} epoch{'' if result['epochs_completed'] == 1 else 's'}"
            f" / {result['global_step']} steps")


def _print(*args, **kwargs):
    if jax.process_index() == 0:
        print(*args, **kwargs, flush=True)


# ---------------------------------------------------------------------------
# Main loop


def enable_compilation_cache(config) -> str | None:
    """Points JAX's persistent compilation cache at ``<config.cache_dir>/xla`` (unless
    ``config.compilation_cache`` is False, ``cache_dir`` is empty, or a cache directory is
    already set, e.g. by $JAX_COMPILATION_CACHE_DIR), so that a rerun, a resume or another
    seed of the same config loads the compiled train / eval steps (on a GPU including
    cuDNN's autotuning) instead of compiling them again. Returns the directory in use.
    ``python -m mpt_jax.main`` calls it; a notebook calls it before ``train_and_evaluate``
    (it sets a process-wide JAX option, which a library call should not do on its own).
    Only compilations of >= 1 s are stored (JAX's default,
    $JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS). JAX opens the cache at the first
    compilation after a directory is set and keeps that one for the process."""
    current = jax.config.jax_compilation_cache_dir
    if current or not config.get("compilation_cache", True) or not config.get("cache_dir"):
        return current or None
    path = os.path.join(os.path.expanduser(config.cache_dir), "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    return path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, dataset=None,
                       overridden: Iterable[str] = ()) -> dict:
    """Trains (or resumes) the run of ``config`` in ``workdir``; returns the final metrics.

    Metrics (percent): final_top1/5 (last evaluation), best_top1/5 and best_epoch (model
    selection on the eval split, which ``eval_split`` names; SPEC decisions item 28).
    A finished run returns its stored result at once.
    """
    t_start = time.time()
    config = config_utils.resolve(config, overridden)
    config_utils.validate(config)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    checkpointer = ckpt_lib.Checkpointer(workdir, restart=bool(config.restart))
    try:  # until the loop's own try/finally: close orbax on any error (its threads)
        meta = checkpointer.latest_meta()
        if meta is not None:
            ckpt_lib.check_compatible(meta, config, workdir)
            if _done(meta, config) and meta.get("result"):
                _print(f"run in {workdir} is complete (epoch {meta['epoch']}); stored result:")
                _print(result_line(meta["result"]))
                if jax.process_index() == 0:  # e.g. killed between the last save and this file
                    _write_result(workdir, meta["result"])
                checkpointer.close()
                return meta["result"]

        mesh = parallel.make_mesh()
        if dataset is None:
            from mpt_jax import data  # noqa: PLC0415  (data imports heavier deps lazily)
            dataset = data.get_dataset(config, mesh)
        ds = dataset
        spe = int(ds.steps_per_epoch)
        if spe <= 0:
            raise UserError(f"batch_size={config.batch_size} is larger than the {ds.num_train} "
                            "training examples; lower --config.batch_size")
        model = create_model(config, ds.num_classes)
        tx = optim.make_optimizer(config, spe)
        # Host-side lr for logging, compiled once.
        schedule = jax.jit(optim.make_schedule(config, spe))
        p_train, p_eval = make_parallel_steps(config, model, tx, mesh)
        if hasattr(ds, "train_batch_shapes") and hasattr(ds, "eval_batch_shapes"):
            # In-memory data: both steps compile in a thread from abstract shapes while this
            # thread initialises (and maybe restores) the state and epoch 1 starts.
            state_shapes = jax.eval_shape(lambda: create_train_state(
                config, model, tx, jax.random.PRNGKey(config.seed), ds.image_shape))
            state_shapes = abstract(state_shapes, parallel.replicated(mesh))
            p_train = CompiledAhead(p_train, state_shapes, ds.train_batch_shapes())
            p_eval = CompiledAhead(p_eval, state_shapes, ds.eval_batch_shapes())
        state = create_train_state(config, model, tx, jax.random.PRNGKey(config.seed),
                                   ds.image_shape)
        state = parallel.replicate(state, mesh)
        if jax.process_index() == 0:
            # Room for every kept save (latest x keep + best) and one being written, + 10 %.
            copies = checkpointer.keep + 2
            needed = int(1.1 * copies * ckpt_lib.tree_nbytes(state)) + 2**24
            ckpt_lib.check_free_space(workdir, needed)

        start_epoch, start_step, best = 0, 0, dict(top1=-1.0, top5=-1.0, epoch=0)
        last_eval = None
        if meta is not None:
            state, meta = checkpointer.restore(state, mesh)
            start_epoch, start_step = int(meta["epoch"]), int(meta["step_in_epoch"])
            best = meta.get("best", best)
            last_eval = meta.get("last_eval")
            if jax.process_index() == 0:
                _truncate_metrics(workdir, int(meta["global_step"]))
            _print(f"resuming {workdir} at epoch {start_epoch + 1}, step {start_step} "
                   f"(global step {meta['global_step']}) on {_devices()}")
        else:
            _announce(config, ds, model, state)
    except BaseException:
        checkpointer.close()
        raise

    is_main = jax.process_index() == 0
    global_step = start_epoch * spe + start_step
    # Replayed steps (after the checkpoint) replace, not duplicate, earlier TensorBoard data.
    logger = metrics_lib.MetricsLogger(workdir, enabled=is_main, start_step=global_step + 1)
    bar = metrics_lib.ProgressBar(config.num_epochs, spe, enabled=is_main and config.progress_bar)
    bar.set_batch_size(config.batch_size)
    stop_reason = final_result = None
    pending_best = None  # (host state, meta) of a best epoch not yet written
    try:
        with _StopSignal() as stop:
            epoch = start_epoch
            while epoch < config.num_epochs and stop_reason is None:
                k_t = ops.global_keep_schedule(epoch, float(config.keep_fraction),
                                               int(config.prune_ramp_epochs)) \
                    if config.pruning == "global" else float(config.keep_fraction)
                state = with_keep_fraction(state, k_t, parallel.replicated(mesh))
                state, step_in_epoch, stop_reason = _train_epoch(
                    p_train, state, ds, epoch, start_step, spe, config, logger, bar, schedule,
                    stop, checkpointer, epoch_is_first=epoch == start_epoch, best=best,
                    last_eval=last_eval, k_t=k_t)
                global_step = epoch * spe + step_in_epoch
                start_step = 0
                if stop_reason in ("signal",):
                    checkpointer.save(state, _meta(config, epoch, step_in_epoch, global_step,
                                                   best, last_eval, k_t))
                    if pending_best is not None:
                        checkpointer.save(*pending_best, best=True, latest=False)
                    # Multi-process: a process without the signal stops because another had it.
                    name = stop.received or "a signal to another process"
                    raise Interrupted(
                        f"stopped by {name} at epoch {epoch + 1}, step {step_in_epoch} "
                        f"of {spe} (global step {global_step}); checkpoint saved: "
                        f"{checkpointer.describe_latest()}; run the same command again to "
                        "resume", exit_code=130 if stop.received == "SIGINT" else 143)
                ev = evaluate(p_eval, state, ds)
                finished_epoch = step_in_epoch >= spe
                ep_num = epoch + 1 if finished_epoch else epoch
                last_eval = dict(ev, epoch=ep_num, split=ds.eval_split_name)
                best, new_best = _update_best(best, ev, ep_num)
                logger.write(dict(step=global_step, epoch=ep_num, split="eval", loss=ev["loss"],
                                  top1=ev["top1"], top5=ev["top5"], best_top1=best["top1"],
                                  lr=float(schedule(max(global_step - 1, 0))),
                                  keep_fraction=k_t))
                where = (f"epoch {ep_num}/{config.num_epochs}" if finished_epoch else
                         f"epoch {epoch + 1}/{config.num_epochs} step {step_in_epoch}/{spe}")
                _print(f"{where}: eval ({ds.eval_split_name}) "
                       f"top-1 {ev['top1']:.2f}% top-5 {ev['top5']:.2f}% loss {ev['loss']:.4f} "
                       f"(best top-1 {best['top1']:.2f}% at epoch {best['epoch']})")
                next_epoch, next_step = (epoch + 1, 0) if finished_epoch else (epoch, step_in_epoch)
                limit = config.max_train_steps > 0 and global_step >= config.max_train_steps
                last = next_epoch >= config.num_epochs or limit
                if (config.stop_if_not_learning and epoch > 1 and best["top1"] < NOT_LEARNING_TOP1):
                    stop_reason, last = "not_learning", True
                meta_now = _meta(config, next_epoch, next_step, global_step, best, last_eval, k_t)
                if last:
                    final_result = meta_now["result"] = _result(
                        config, ds, best, last_eval, global_step, ep_num, time.time() - t_start,
                        stop_reason or ("max_train_steps" if limit else None))
                periodic = last or ep_num % config.checkpoint_every_epochs == 0
                if new_best and not periodic:
                    # Keep the best epoch's state on the host and write it with the next
                    # checkpoint: a full save at every new best would cost more than a short
                    # CIFAR epoch (and ~1 GB per save for WRN-50-2).
                    pending_best = (parallel.to_host(state), meta_now)
                elif periodic:
                    checkpointer.save(state, meta_now, best=new_best)
                    if pending_best is not None and not new_best:
                        checkpointer.save(*pending_best, best=True, latest=False)
                    pending_best = None
                if limit:
                    stop_reason = stop_reason or "max_train_steps"
                epoch = next_epoch
                if last:
                    break
    finally:
        bar.end_epoch()
        logger.close()
        checkpointer.close()
    if final_result is None:
        raise TrainingError("no training step was run: num_epochs is already reached in this "
                            "workdir; raise --config.num_epochs to train further")
    result = final_result
    if is_main:
        _write_result(workdir, result)
    if stop_reason == "not_learning":
        _print(f"stopped: best top-1 {best['top1']:.2f}% < {NOT_LEARNING_TOP1}% after epoch "
               f"{last_eval['epoch']} (stop_if_not_learning, SPEC 6.6)")
    # Single process only: reloading the checkpoint on one process of a multi-process run
    # would wait in orbax's cross-process barriers for processes that have already exited.
    if jax.process_count() == 1 and config.mode in ("biprop", "edgepopup"):
        _print_ticket_summary(workdir)
    _print(result_line(result))
    return result


def _print_ticket_summary(workdir: str) -> None:
    """The found ticket's Larq-style table (issue 5) at the end of the training log."""
    from mpt_jax import ticket as ticket_lib  # noqa: PLC0415  (only needed here)

    try:
        # exact=False: the sizes and counts of the ticket `export` writes, without the two
        # compiled exactness checks (seconds of XLA compilation at the end of every run).
        found = ticket_lib.ticket_from_run(workdir, "latest", exact=False)
        size = len(ticket_lib.ticket_bytes(found))
        _print(ticket_lib.summary_table(ticket_lib.summary(found, file_bytes=size)))
        _print(f"export this ticket ({size:,} bytes): python -m mpt_jax.ticket export "
               f"--workdir={workdir} --out=<file> [--which=best]")
    except Exception as e:  # noqa: BLE001  (a summary must never fail a finished run)
        _print(f"(ticket summary unavailable: {type(e).__name__}: {e})")


def _write_result(workdir: str, result: dict) -> None:
    """result.json, atomically (temporary file + rename): a kill never leaves half a file."""
    path = os.path.join(workdir, "result.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)


def _devices() -> str:
    n = jax.device_count()
    return f"{n} device" + ("s" if n != 1 else "")


def _announce(config, ds, model, state) -> None:
    """The one-time header of a new run: data, devices, the layer table, the trainable set."""
    _print(f"{config.model} ({config.mode}, keep_fraction={config.keep_fraction}, "
           f"pruning={config.pruning}) on {ds.name}: {ds.num_train} train / {ds.num_eval} "
           f"eval ({ds.eval_split_name}), {ds.steps_per_epoch} steps/epoch, "
           f"{_devices()}")
    _print(metrics_lib.layer_table(state.params, config,
                                   metrics_lib.layer_order(model, ds.image_shape)))
    ntrain, nentries = optim.count_trainable(state.params, config)
    _print(f"trainable: {ntrain} leaves, {nentries:,} entries ({config.optimizer}, "
           f"lr {config.learning_rate}, {config.schedule} schedule)")


def _update_best(best: dict, ev: dict, epoch: int) -> tuple[dict, bool]:
    """Best top-1 (model selection, with its epoch) and, separately, best top-5 (SPEC 6.2)."""
    top5 = max(best["top5"], ev["top5"])
    if ev["top1"] > best["top1"]:
        return dict(top1=ev["top1"], top5=top5, epoch=epoch), True
    return dict(best, top5=top5), False


def _train_epoch(p_train, state, ds, epoch, start_step, spe, config, logger, bar, schedule,
                 stop, checkpointer, epoch_is_first=False, best=None, last_eval=None, k_t=None):
    """Runs one epoch from ``start_step``; returns (state, steps done in this epoch, reason).

    Every ``checkpoint_every_steps`` global steps (mid-epoch) the state is saved, after the
    step metrics since the last fetch were checked to be finite. A stop signal is honoured
    between steps (single process: after any step; multi-process: at the next log /
    checkpoint step, where the processes agree on it so that all of them stop together).
    """
    pending = []  # device metrics not yet fetched (fetching every step would sync every step)
    t_log = time.time()
    imgs_since = 0
    run_loss = run_acc = 0.0
    run_n = 0
    step = start_step
    reason = None
    every = int(config.get("checkpoint_every_steps", 0) or 0)
    multi = jax.process_count() > 1
    if not multi and stop.received:  # e.g. a signal during the previous evaluation or save
        return state, step, "signal"
    for batch in ds.train_batches(epoch, start_step):
        if step >= spe:
            break
        state, m = p_train(state, batch)
        step += 1
        global_step = epoch * spe + step
        pending.append(m)
        _test_pause_hook(global_step, stop)
        if step == start_step + 1 and epoch_is_first:
            # The first step of a process includes compilation: time throughput from its end.
            jax.block_until_ready(m)
            t_log = time.time()
        else:
            imgs_since += config.batch_size
        limit = config.max_train_steps > 0 and global_step >= config.max_train_steps
        ckpt_now = every > 0 and global_step % every == 0 and step < spe and not limit
        # A log interval never ends within log_every_steps of the epoch's end: the last one
        # takes the remainder (351 steps, every 50: ..., 300, 351), instead of a one-step
        # interval whose noisy mean showed as a spike in the training curves.
        log_now = step % config.log_every_steps == 0 and spe - step >= config.log_every_steps
        sync_point = log_now or step == spe or limit or ckpt_now
        if multi:
            if sync_point and parallel.any_process(stop.received is not None):
                reason = "signal"
        elif stop.received:
            reason = "signal"
        if sync_point or reason:
            fetched = parallel.to_host(pending)
            pending = []
            for j, f in enumerate(fetched):
                if not bool(f["finite"]):
                    bad = global_step - len(fetched) + j + 1
                    raise TrainingError(
                        f"non-finite loss or gradients at global step {bad} (epoch {epoch + 1}); "
                        "training stopped and nothing was saved after it. Last good checkpoint "
                        f"(kept intact): {checkpointer.describe_latest()}. Lower "
                        "--config.learning_rate or check the data, then run again")
            dt = max(time.time() - t_log, 1e-9)
            ips = imgs_since / dt
            losses = [float(f["loss"]) for f in fetched]
            accs = [float(f["top1"]) for f in fetched]
            top5 = 100.0 * float(np.mean([float(f["top5"]) for f in fetched]))
            run_loss += sum(losses)
            run_acc += sum(accs)
            run_n += len(fetched)
            logger.write(dict(step=global_step, epoch=epoch + step / spe, split="train",
                              loss=float(np.mean(losses)), top1=100.0 * float(np.mean(accs)),
                              top5=top5,
                              lr=float(schedule(global_step - 1)), images_per_s=ips))
            bar.update(epoch, step, run_loss / run_n, run_acc / run_n, ips)
            t_log, imgs_since = time.time(), 0
        if ckpt_now and not reason:
            checkpointer.save(state, _meta(config, epoch, step, global_step, best, last_eval, k_t))
        if limit or reason:
            reason = reason or "max_train_steps"
            break
    bar.end_epoch()
    return state, step, (reason if reason == "signal" else None)


def _test_pause_hook(global_step: int, stop) -> None:
    """Tests only (issue 4): ``MPT_JAX_TEST_PAUSE_AT_STEP=N`` prints a marker after global step N
    was dispatched (before its metrics are checked or a checkpoint is written) and sleeps, so
    a test can send a real signal at a known point.
    A SIGTERM / SIGINT ends the sleep (the run then stops as it would after any step)."""
    pause = os.environ.get("MPT_JAX_TEST_PAUSE_AT_STEP")
    if pause and int(pause) == global_step:
        print(f"test-hook: paused after step {global_step}", flush=True)
        for _ in range(3000):
            if stop.received:
                break
            time.sleep(0.1)


def _truncate_metrics(workdir: str, global_step: int) -> None:
    """On resume, drops metrics.jsonl records logged after the restored checkpoint (steps that
    will be replayed), so the file of a resumed run equals that of an uninterrupted one
    (apart from timings). Atomic: written to a temporary file, then renamed."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                keep = int(json.loads(line).get("step", 0)) <= global_step
            except (ValueError, AttributeError):
                keep = False  # a line cut short by a kill
            if keep:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)


def _meta(config, epoch, step_in_epoch, global_step, best, last_eval, keep_fraction) -> dict:
    return dict(epoch=int(epoch), step_in_epoch=int(step_in_epoch), global_step=int(global_step),
                best=dict(best), last_eval=last_eval, keep_fraction=float(keep_fraction),
                model=config.model, fingerprint=config_utils.fingerprint(config),
                config=json.loads(config_utils.to_json(config)), time=time.time())


def _result(config, ds, best, last_eval, global_step, epochs_completed, seconds, stop_reason):
    return dict(final_top1=last_eval["top1"], final_top5=last_eval["top5"],
                final_loss=last_eval["loss"], best_top1=best["top1"], best_top5=best["top5"],
                best_epoch=best["epoch"], eval_split=ds.eval_split_name,
                num_eval=int(last_eval.get("count", ds.num_eval)),
                epochs_completed=int(epochs_completed), global_step=int(global_step),
                wall_seconds=round(float(seconds), 2), stop_reason=stop_reason,
                model=config.model, mode=config.mode, keep_fraction=float(config.keep_fraction),
                dataset=config.dataset, seed=int(config.seed),
                precision=jnp.dtype(compute_dtype(config)).name, hardware=hardware_name(),
                jax_version=jax.__version__)


def hardware_name() -> str:
    """What the run trained on, e.g. "1x NVIDIA H200" or "2x cpu" (all processes' devices)."""
    devices = jax.devices()
    return f"{len(devices)}x {devices[0].device_kind}"
