"""Running a ticket: the ticket as the variables of a dense-kernel model, predictions,
accuracy over batches, and the comparison with the training-time model of its run.

The ticket becomes the variables of the SAME architecture built with ``mode="dense"``, whose
kernels are the effective kernels alpha * sign(W) * M. Dense mode makes BatchNorm affine; a
non-affine ticket gets scale 1 and bias 0, which is exact (x * 1 + 0 == x in floating
point). The logits therefore equal the training-time model's (same kernel values, same
convolutions). The bit-packed XNOR-popcount path for binary-activation tickets is
``mpt_jax.ticket.bitpack``.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mpt_jax import checkpoint, layers, ops
from mpt_jax.models import probe
from mpt_jax.ticket.core import SEP, Ticket, TicketError, build_model, flatten_variables


def inference_options(model_opts: Mapping[str, Any]) -> dict:
    """Options of the dense-kernel model that runs a ticket (float32, layerwise, dense)."""
    opts = dict(model_opts)
    opts.update(mode="dense", pruning="layerwise")
    opts.pop("dtype", None)
    return opts


def _param_value(ticket: Ticket, key: tuple[str, ...], sds, by_path) -> np.ndarray:
    name = SEP.join(("params", *key))
    if key[-1] == "kernel":
        value = by_path[key[:-1]].kernel()
    elif name in ticket.others:
        value = np.asarray(ticket.others[name], np.float32)
    elif key[-1] == "scale":  # non-affine BN of the ticket: scale 1 is exact
        value = np.ones(sds.shape, np.float32)
    elif key[-1] == "bias":
        value = np.zeros(sds.shape, np.float32)
    else:
        raise TicketError(f"model parameter {name} is not in the ticket")
    if tuple(value.shape) != tuple(sds.shape):
        raise TicketError(f"{name}: ticket shape {value.shape} != model shape {sds.shape} "
                          f"(wrong model, options or image shape)")
    return value


def _stat_value(ticket: Ticket, key: tuple[str, ...], sds) -> np.ndarray:
    name = SEP.join(("batch_stats", *key))
    if name not in ticket.others:
        raise TicketError(f"BatchNorm statistic {name} is missing from the ticket")
    value = np.asarray(ticket.others[name], np.float32)
    if tuple(value.shape) != tuple(sds.shape):
        raise TicketError(f"{name}: ticket shape {value.shape} != model shape {sds.shape}")
    return value


def inference_model(ticket: Ticket):
    """(model, variables): the ticket as a dense-kernel model (float32, no scores)."""
    model = build_model(ticket.model, inference_options(ticket.model_options))
    shapes = probe.abstract_variables(model, ticket.image_shape)
    flat_params = flatten_variables(shapes.get("params", {}))
    flat_stats = flatten_variables(shapes.get("batch_stats", {}))
    extra = sorted(set(shapes) - {"params", "batch_stats"})
    if extra:
        raise TicketError(f"model {ticket.model!r} has variable collections {extra} that a "
                          f"ticket does not carry")
    by_path = {lt.path: lt for lt in ticket.layers}
    kernel_paths = [k[:-1] for k in flat_params if k[-1] == "kernel"]
    if sorted(kernel_paths) != sorted(by_path):
        raise TicketError(f"ticket layers {sorted(map(SEP.join, by_path))} do not match model "
                          f"{ticket.model!r} (layers {sorted(map(SEP.join, kernel_paths))}): "
                          f"wrong model or options for this ticket")
    params = {k: _param_value(ticket, k, sds, by_path) for k, sds in flat_params.items()}
    stats = {k: _stat_value(ticket, k, sds) for k, sds in flat_stats.items()}
    used = {SEP.join(("params", *k)) for k in params} | {SEP.join(("batch_stats", *k))
                                                        for k in stats}
    unused = sorted(set(ticket.others) - used)
    if unused:
        raise TicketError(f"ticket arrays {unused[:4]} have no place in model {ticket.model!r}: "
                          f"wrong model for this ticket")
    variables = {"params": traverse_util.unflatten_dict(params)}
    if stats:
        variables["batch_stats"] = traverse_util.unflatten_dict(stats)
    return model, jax.tree_util.tree_map(jnp.asarray, variables)


def predict_fn(ticket: Ticket):
    """A jitted ``images -> logits`` function of the ticket (eval mode)."""
    model, variables = inference_model(ticket)

    @jax.jit
    def apply(variables, images):
        return model.apply(variables, images, train=False)

    return lambda images: apply(variables, images)


def probe_layers(ticket: Ticket, batch: int = 2, seed: int = 0) -> dict[str, dict]:
    """Per prunable layer (by name): kind ("conv" / "dense"), output spatial positions and
    whether its input is binary (+-1).

    Model-agnostic: one jitted forward pass of the ticket on a random image batch with the
    layer calls intercepted. An input is binary when every value is exactly +1 or -1 (the
    output of a sign activation; images, ReLU outputs and averages of signs are not).
    """
    model, variables = inference_model(ticket)
    static: dict[str, dict] = {}

    def run(variables, x):
        flags = {}

        def record(module, call, args, kwargs):
            out = call(*args, **kwargs)
            name = SEP.join(module.path)
            static[name] = dict(
                kind="conv" if isinstance(module, layers.BipropConv) else "dense",
                out_positions=int(np.prod(out.shape[1:-1])) if out.ndim > 2 else 1)
            flags[name] = jnp.all(jnp.abs(args[0]) == 1.0)
            return out

        with probe.intercept_layers(record):
            model.apply(variables, x, train=False)
        return flags

    # Drawn in NumPy: an eager jax.random draw would compile a program per image shape.
    x = np.random.default_rng(seed).standard_normal((batch, *ticket.image_shape))
    flags = jax.jit(run)(variables, x.astype(np.float32))
    return {k: dict(v, binary_input=bool(flags[k])) for k, v in static.items()}


def evaluate_batches(ticket: Ticket, batches: Iterable[Mapping[str, Any]]) -> dict:
    """Top-1 accuracy (%) of the ticket over ``batches`` (dict(image, label[, mask]))."""
    predict = predict_fn(ticket)
    correct = total = 0.0
    for batch in batches:
        logits = predict(batch["image"])
        hit = (jnp.argmax(logits, -1) == jnp.asarray(batch["label"])).astype(jnp.float32)
        weight = jnp.asarray(batch["mask"], jnp.float32) if "mask" in batch else jnp.ones_like(hit)
        correct += float(jnp.sum(hit * weight))
        total += float(jnp.sum(weight))
    if total == 0:
        raise TicketError("no evaluation examples")
    return dict(accuracy=100.0 * correct / total, examples=int(total))


def compare_with_run(ticket: Ticket, workdir: str, which: str, images) -> float:
    """Max |logits(ticket) - logits(training-time model)| on ``images`` (float32)."""
    run = checkpoint.load_for_inference(workdir, which)
    model = build_model(ticket.model, ticket.model_options)
    variables = {k: run[k] for k in ("params", "frozen", "batch_stats", "pruning") if run.get(k)}
    if ticket.model_options.get("pruning") == "global":
        flat = flatten_variables(run["params"])
        tau = ops.global_threshold([flat[k] for k in flat if k[-1] == "scores"],
                                   ticket.keep_fraction)
        variables["pruning"] = jax.tree_util.tree_map(lambda _: tau, run["pruning"])
    ref = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    out = predict_fn(ticket)(images)
    return float(jnp.max(jnp.abs(out - ref)))
