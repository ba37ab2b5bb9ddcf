"""Freezing a ticket: masks and alphas exactly as the training-time layers compute them,
from a biprop model's variables (``params`` with scores, ``frozen`` random weights,
``batch_stats``).

layerwise pruning keeps the top-k |scores| of each layer (k = ``ops.kept_count``, ties to
the lowest flat index); global pruning keeps |scores| above one threshold over all layers.
alpha is the mean |W| over the kept entries. ``make_ticket`` takes alpha from the
training-time model's own jitted forward pass, so on the backend that exports, the ticket's
logits are bitwise equal to the model's and exact ties of integer-valued logits
(binary-input classifiers) break the same way. A run trained on another backend (GPU) can
still differ by an ulp of alpha, i.e. on exactly tied examples.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax import ops
from mpt_jax.models import probe
from mpt_jax.ticket import inference, seed
from mpt_jax.ticket.core import BN_DTYPES, MODES, SEP, LayerTicket, Ticket, TicketError, \
    build_model, flatten_variables, options_key, stored_options

# alpha from the ops' own kernel functions (kept count static for layerwise, as in
# ops.biprop_kernel), jitted; alpha = max |kernel| (kept entries are sign(W) * (alpha * 1)
# = +-alpha exactly). ``make_ticket`` then takes alpha from the training-time model's own
# jitted forward (``training_kernels``): a separately compiled float32 reduction can differ
# by an ulp, which decides exact ties of integer-valued logits (MPT-1/1 classifiers whose
# input is binary).
_layerwise_kernel = jax.jit(ops.masked_kernel, static_argnums=(2, 3))
_global_kernel = jax.jit(ops.threshold_kernel, static_argnums=(3,))
# tau is one selected |score|: compiled once per set of layer shapes, not op by op.
_global_threshold = jax.jit(ops.global_threshold, static_argnums=(1,))


def _alpha_of(kernel) -> np.float32:
    return np.float32(np.max(np.abs(np.asarray(kernel))))


def topk_mask_np(magnitudes: np.ndarray, kept: int) -> np.ndarray:
    """NumPy twin of ``ops.topk_mask``: the ``kept`` largest entries, ties to the lowest
    flat index (a stable descending sort), so the exported mask equals the training-time
    one exactly (no device sort per layer: export stays cheap on a CPU)."""
    flat = np.asarray(magnitudes, np.float32).reshape(-1)
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.shape, bool)
    mask[order[:kept]] = True
    return mask.reshape(magnitudes.shape)


def _prunable_paths(flat_p, order):
    paths = [k[:-1] for k in flat_p if k[-1] == "scores"]
    if order is not None:
        if sorted(order) != sorted(paths):
            raise TicketError(f"the variables' prunable layers {sorted(map(SEP.join, paths))} "
                              f"do not match the model's {sorted(map(SEP.join, order))}")
        paths = list(order)
    if not paths:
        raise TicketError("no prunable layer (no 'scores' in params): tickets exist only for "
                          "mode='biprop' runs")
    return paths


def layer_tickets(params, frozen, keep_fraction: float, pruning: str = "layerwise",
                  order: Sequence[tuple[str, ...]] | None = None, *,
                  alpha: bool = True) -> list[LayerTicket]:
    """Mask, sign bits and alpha of every (scores, weight) pair of a biprop model, in
    ``order`` (module paths) when given.

    layerwise: M = top-k of |scores| with k = ops.kept_count(n, keep_fraction); global:
    tau = ops.global_threshold over all layers, M = |s| > tau. alpha = mean |W| over the
    kept entries (float32, to float32 rounding; ``make_ticket`` refines it to the
    training-time model's value). ``alpha=False`` leaves alpha NaN and compiles nothing
    per layer, for a caller that sets every alpha itself.
    """
    keep_fraction = ops.validate_keep_fraction(keep_fraction)
    flat_p, flat_f = flatten_variables(params), flatten_variables(frozen)
    paths = _prunable_paths(flat_p, order)
    tau = None
    if pruning == "global":
        tau = _global_threshold([jnp.asarray(flat_p[p + ("scores",)]) for p in paths],
                                keep_fraction)
    elif pruning != "layerwise":
        raise TicketError(f"unknown pruning {pruning!r}; valid values: layerwise, global")
    out = []
    for path in paths:
        scores = np.asarray(flat_p[path + ("scores",)], np.float32)
        if path + ("weight",) not in flat_f:
            raise TicketError(f"layer {SEP.join(path)} has scores but no frozen weight; pass "
                              f"the 'frozen' collection of the run")
        weight = np.asarray(flat_f[path + ("weight",)], np.float32)
        if weight.shape != scores.shape:
            raise TicketError(f"layer {SEP.join(path)}: weight shape {weight.shape} != scores "
                              f"shape {scores.shape}")
        if tau is None:
            count = ops.kept_count(scores.size, keep_fraction)
            mask_np = topk_mask_np(np.abs(scores), count)
            kernel = _layerwise_kernel(weight, mask_np, count, True) if alpha else None
        else:
            mask_np = np.abs(scores) > np.float32(tau)
            kernel = _global_kernel(weight, scores, tau, True) if alpha else None
        layer_alpha = _alpha_of(kernel) if alpha else np.float32(np.nan)
        # A kept weight that is exactly 0 has sign 0: its kernel entry is 0 like a pruned
        # one, so the ticket stores it as pruned (one bit cannot hold a third sign). alpha
        # keeps its value: it was computed over the kept set above. (PyTorch's
        # kaiming_normal_ drew 5 exact zeros in 2^26 values here: a WRN-50-2 holds ~5.)
        mask_np &= weight != 0
        out.append(LayerTicket(path, mask_np, weight > 0, layer_alpha))
    return out


_KERNEL_CACHE: dict = {}


def training_kernels(model_name: str, model_opts: Mapping[str, Any], variables, image_shape):
    """The effective kernels alpha * sign(W) * M exactly as the training-time model computes
    them inside a jitted forward pass (``effective_kernel`` of every prunable layer
    intercepted), by layer name. Using these values (not a re-derivation) makes the ticket's
    logits bitwise equal to the training-time model's on the same backend: alpha computed
    by another XLA program can differ by an ulp, which decides exact ties of integer-valued
    logits (MPT-1/1 classifiers with binary inputs)."""
    cache_key = options_key(model_name, model_opts, image_shape)
    fn = _KERNEL_CACHE.get(cache_key)
    if fn is None:
        model = build_model(model_name, stored_options(model_opts))
        dummy = probe.dummy_images(tuple(image_shape))

        def run(variables):
            found = {}

            def record(module, call, args, kwargs):
                out = found[SEP.join(module.path)] = call(*args, **kwargs)
                return out

            with probe.intercept_layers(record, method="effective_kernel"):
                model.apply(variables, dummy, train=False)
            return found

        fn = _KERNEL_CACHE[cache_key] = jax.jit(run)
    return fn(variables)


def _set_training_alphas(lts, model_name, model_opts, variables, image_shape, order):
    """Replaces each layer's alpha by the training-time model's (see ``training_kernels``)."""
    run_vars = {k: variables[k] for k in ("params", "frozen", "batch_stats") if variables.get(k)}
    if model_opts.get("pruning", "layerwise") == "global":
        flat_p = flatten_variables(variables["params"])
        tau = _global_threshold([flat_p[p + ("scores",)] for p in order],
                                model_opts["keep_fraction"])
        shapes = probe.abstract_variables(build_model(model_name, model_opts), image_shape)
        run_vars["pruning"] = jax.tree_util.tree_map(lambda _: tau, shapes["pruning"])
    kernels = training_kernels(model_name, model_opts, run_vars, image_shape)
    for lt in lts:
        if lt.name not in kernels:  # the layer classes must build kernels in that method
            raise TicketError(f"layer {lt.name}: no effective_kernel call was seen in the "
                              f"model's forward pass; cannot take alpha from the model")
        kernel = np.asarray(kernels[lt.name])
        if not np.array_equal(kernel != 0, lt.mask):
            raise TicketError(f"layer {lt.name}: the model's kernel and the ticket's mask "
                              f"differ (ties in |scores|?); cannot freeze this ticket exactly")
        lt.alpha = _alpha_of(kernel)


def _seed_record(lts, model_name, model_opts, image_shape, init_key, exact: bool) -> dict:
    """The init record of a seed-mode ticket; ``exact``: regenerate W and check the signs."""
    if init_key is None:
        raise TicketError("mode='seed' needs the PRNG key the run initialised the model with"
                          " (init_key); or use mode='signs'")
    init = seed.key_info(init_key)
    if exact:
        frozen = seed.regenerate_frozen(model_name, model_opts, image_shape, init)
        try:
            seed.check_regenerated(lts, frozen, {lt.name: lt.signs_sha256() for lt in lts},
                                   init)
        except TicketError:
            raise TicketError("the given init key does not regenerate this run's random "
                              "weights (different kept signs); pass the key the run used for"
                              " model.init, or export with mode='signs'") from None
    return init


def _other_arrays(variables, bn_dtype: str) -> dict[str, np.ndarray]:
    """BatchNorm statistics and every non-score parameter, by "<collection>/<path>"."""
    others = {}
    for coll in ("params", "batch_stats"):
        for path, leaf in flatten_variables(variables.get(coll)).items():
            if coll == "params" and path[-1] == "scores":
                continue
            others[SEP.join((coll, *path))] = np.asarray(leaf, np.float32).astype(bn_dtype)
    return others


def _metrics_json(metrics):
    out = {}
    for k, v in dict(metrics or {}).items():
        try:
            out[str(k)] = float(v) if not isinstance(v, (str, bool)) else v
        except (TypeError, ValueError):
            continue
    return out


def _checked_options(model_opts, mode: str, bn_dtype: str) -> dict:
    if mode not in MODES:
        raise TicketError(f"unknown ticket mode {mode!r}; valid modes: {', '.join(MODES)}")
    if bn_dtype not in BN_DTYPES:
        raise TicketError(f"unknown bn_dtype {bn_dtype!r}; valid values: {', '.join(BN_DTYPES)}")
    model_opts = stored_options(model_opts)
    if model_opts.get("mode", "biprop") != "biprop":
        raise TicketError(f"a ticket needs a mode='biprop' run (binary kernels); this run used "
                          f"mode={model_opts['mode']!r}")
    model_opts["mode"] = "biprop"
    model_opts["keep_fraction"] = ops.validate_keep_fraction(model_opts.get("keep_fraction", 0.5))
    return model_opts


def make_ticket(model_name: str, model_opts: Mapping[str, Any], variables: Mapping[str, Any],
                image_shape: Sequence[int], *, mode: str = "signs", init_key=None,
                metrics: Mapping[str, Any] | None = None, bn_dtype: str = "float32",
                extra: Mapping[str, Any] | None = None, exact: bool = True) -> Ticket:
    """Freezes the ticket of a biprop model's variables (``params``, ``frozen``, ``batch_stats``).

    ``model_opts``: the ``get_model`` options the run used (must include keep_fraction and
    mode="biprop"). mode="seed" needs ``init_key``: the key the run passed to
    ``model.init({'params': key}, ...)``; the regeneration is verified here (the kept sign
    bits must match the given weights), so a wrong key fails now, not at load time.

    ``exact=False`` (the end-of-run summary only: sizes and counts, never for export) skips
    the two compiled checks: alpha stays layer_tickets' float32 value instead of the
    training-time model's (may differ by an ulp), and seed mode does not regenerate the
    weights to verify the key. The same layers, masks and byte sizes; no XLA compilation.
    """
    model_opts = _checked_options(model_opts, mode, bn_dtype)
    keep_fraction = model_opts["keep_fraction"]
    image_shape = tuple(int(d) for d in image_shape)
    order = probe.prunable_layers(build_model(model_name, model_opts), image_shape)
    # exact: _set_training_alphas replaces every alpha, so layer_tickets need not compute it.
    lts = layer_tickets(variables.get("params"), variables.get("frozen"), keep_fraction,
                        model_opts.get("pruning", "layerwise"), order=order, alpha=not exact)
    if exact:
        _set_training_alphas(lts, model_name, model_opts, variables, image_shape, order)
    info = dict(metrics=_metrics_json(metrics), bn_dtype=bn_dtype, extra=dict(extra or {}))
    if mode == "seed":
        info["init"] = _seed_record(lts, model_name, model_opts, image_shape, init_key, exact)
    ticket = Ticket(model_name, model_opts, image_shape, keep_fraction, mode, lts,
                    _other_arrays(variables, bn_dtype), info)
    inference.inference_model(ticket)  # shapes and collections must fit: fail at export time
    return ticket
