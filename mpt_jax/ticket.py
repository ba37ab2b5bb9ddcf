"""Multi-Prize Tickets as artifacts: export, exact reload, summary (SPEC 1.0, 8 item 7, 10).

A ticket is what a biprop run found: per prunable layer the mask M (fixed from the final
scores), sign(W) on the kept entries and one gain alpha, plus the BatchNorm statistics (and,
for "+BN", scale/bias). The training-time model recomputes M and alpha from the scores at
every forward pass (SPEC 8 item 7); a ticket freezes them, so evaluation needs neither the
scores nor the optimizer state.

File format (one file, little endian)::

    header  = magic b"MPTJAXTK" | format version u32 | reserved u32 | manifest length u64
              | sha256 of (manifest bytes + payload), 32 bytes           (56 bytes)
    manifest = UTF-8 JSON: model name and options, keep_fraction, mode, versions, metrics,
              per layer path/shape/kept/signs hash, and the byte layout of every array
    payload  = the arrays, back to back (offsets and dtypes in the manifest)

Per prunable layer the payload holds ``np.packbits`` of the mask (1 bit per weight) and,
in mode "signs", the packed sign bits of the KEPT weights only (k bits per weight); one
float32 alpha per layer. In mode "seed" no weight information is stored: the random
weights are regenerated with ``model.init`` from the recorded PRNG key (implementation,
``jax_threefry_partitionable`` and JAX version recorded too) and the sha256 of the kept
sign bits recorded in the manifest is checked on load. Budgets: <= 1.1 bits per prunable
weight ("seed") and <= 2.2 ("signs"), BatchNorm arrays and the manifest excluded (they are
reported separately by ``summary``).

Reload: the ticket becomes the variables of the SAME architecture built with
``mode="dense"``, whose kernels are the effective kernels alpha * sign(W) * M. Dense mode
makes BatchNorm affine; a non-affine ticket gets scale 1 and bias 0, which is exact
(x * 1 + 0 == x in floating point). The logits therefore equal the training-time model's
(same kernel values, same convolutions): alpha is taken from the training-time model's own
jitted forward pass, so on the backend that exports, the logits are bitwise equal and exact
ties of integer-valued logits (binary-input classifiers) break the same way. A run trained
on another backend (GPU) can still differ by an ulp of alpha, i.e. on exactly tied examples.

Command line (``python -m mpt_jax.ticket COMMAND``): ``export --workdir --out [--which]
[--mode=seed|signs] [--bn_dtype]``, ``evaluate --ticket [--config] [--workdir]``,
``summary --ticket|--workdir [--json]``, ``import-torch --checkpoint --model
--keep_fraction --out [--model_options]`` (see ``mpt_jax.torch_import``).

Library: ``make_ticket`` (from variable trees), ``ticket_from_run`` (from a workdir),
``save_ticket`` / ``load_ticket`` / ``ticket_bytes`` / ``ticket_from_bytes``,
``inference_model`` / ``predict_fn``, ``evaluate_batches``, ``summary`` / ``summary_table``
(the Larq-style table; ``summary_table(make_ticket(name, opts, variables, image_shape))``
prints it for a training log), ``init_variables`` / ``run_init_key`` (the training init).

Every malformed, truncated, corrupted or mismatched file raises ``TicketError`` (a
ValueError) with a one-line message; nothing is silently reinterpreted.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import sys
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

import mpt_jax
from mpt_jax import layers, ops
from mpt_jax.data import registry as datasets
from mpt_jax.models import get_model, model_options

MAGIC = b"MPTJAXTK"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIIQ32s")
HEADER_BYTES = _HEADER.size
MODES = ("seed", "signs")
BN_DTYPES = ("float32", "float16")
_SEP = "/"


class TicketError(ValueError):
    """A ticket file or ticket request that cannot be used (message says why and the fix)."""


# ---------------------------------------------------------------------------
# Data structures


@dataclasses.dataclass
class LayerTicket:
    """One prunable layer: mask, sign bits (meaningful where ``mask``) and alpha."""

    path: tuple[str, ...]
    mask: np.ndarray  # bool, kernel shape
    signs: np.ndarray  # bool, kernel shape: True where W > 0 (only kept entries are used)
    alpha: np.float32

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)

    @property
    def name(self) -> str:
        return _SEP.join(self.path)

    @property
    def kept(self) -> int:
        return int(self.mask.sum())

    def kernel(self) -> np.ndarray:
        """alpha * sign(W) * M as float32 (exactly the training-time kernel values)."""
        alpha = np.float32(self.alpha)
        return np.where(self.mask, np.where(self.signs, alpha, -alpha), np.float32(0)).astype(
            np.float32)

    def ternary(self) -> np.ndarray:
        """sign(W) * M in {-1, 0, +1} (int8)."""
        return np.where(self.mask, np.where(self.signs, 1, -1), 0).astype(np.int8)


@dataclasses.dataclass
class Ticket:
    """An in-memory ticket. ``others``: BN statistics / affine parameters by
    "<collection>/<module path>/<leaf>" (float32 or float16)."""

    model: str
    model_options: dict
    image_shape: tuple[int, ...]
    keep_fraction: float
    mode: str
    layers: list[LayerTicket]
    others: dict[str, np.ndarray]
    info: dict = dataclasses.field(default_factory=dict)  # versions, metrics, init, bn_dtype

    def layer(self, name: str) -> LayerTicket:
        for lt in self.layers:
            if lt.name == name:
                return lt
        raise KeyError(name)


# ---------------------------------------------------------------------------
# Variable trees


def _flat(tree) -> dict[tuple[str, ...], Any]:
    if tree is None:
        return {}
    tree = _unfreeze(tree)
    return traverse_util.flatten_dict(tree) if tree else {}


def _unfreeze(tree):
    if hasattr(tree, "unfreeze"):
        return tree.unfreeze()
    if isinstance(tree, Mapping):
        return {k: _unfreeze(v) for k, v in tree.items()}
    return tree


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TicketError(f"model option value {value!r} cannot be stored in a ticket manifest; "
                      f"use str/int/float/bool/list options")


def _restore_option(value):
    # JSON turns tuples into lists; Flax module fields must stay hashable.
    if isinstance(value, list):
        return tuple(_restore_option(v) for v in value)
    return value


def build_model(model_name: str, model_opts: Mapping[str, Any], **overrides):
    opts = {k: _restore_option(v) for k, v in model_opts.items()}
    opts.update(overrides)
    try:
        return get_model(model_name, **opts)
    except ValueError as e:
        raise TicketError(f"cannot build model {model_name!r} from the ticket: {e}") from None


def inference_options(model_opts: Mapping[str, Any]) -> dict:
    """Options of the dense-kernel model that runs a ticket (float32, layerwise, dense)."""
    opts = dict(model_opts)
    opts.update(mode="dense", pruning="layerwise")
    opts.pop("dtype", None)
    return opts


def model_spec(model_name: str, module) -> dict:
    """The JSON-able ``get_model`` options of a built model (everything except dtype)."""
    opts = {}
    for name in model_options(model_name):
        if name == "dtype":
            continue
        opts[name] = _jsonable(getattr(module, name))
    return opts


def _dummy(image_shape):
    return jnp.zeros((1, *image_shape), jnp.float32)


def _shapes(model, image_shape):
    return jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, _dummy(image_shape),
                                             train=False))


def _is_prunable(module) -> bool:
    return isinstance(module, (layers.BipropConv, layers.BipropDense))


def _prunable_order(model_name, model_opts, image_shape) -> list[tuple[str, ...]]:
    """Module paths of the prunable layers in call order (traced, nothing computed)."""
    import flax.linen as nn

    model = build_model(model_name, model_opts)
    order: list[tuple[str, ...]] = []

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and _is_prunable(context.module):
            path = tuple(context.module.path)
            if path not in order:
                order.append(path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        _shapes(model, image_shape)
    return order


# ---------------------------------------------------------------------------
# Masks and alphas exactly as the training-time layers compute them (SPEC 1.2-1.4, 1.7)


# alpha from the ops' own kernel functions (kept count static for layerwise, as in
# ops.biprop_kernel), jitted; alpha = max |kernel| (kept entries are sign(W) * (alpha * 1)
# = +-alpha exactly). ``make_ticket`` then takes alpha from the training-time model's own
# jitted forward (``training_kernels``): a separately compiled float32 reduction can differ
# by an ulp, which decides exact ties of integer-valued logits (MPT-1/1 classifiers whose
# input is binary).
_layerwise_kernel = jax.jit(ops._apply_mask, static_argnums=(2, 3))  # noqa: SLF001
_global_kernel = jax.jit(ops.threshold_kernel, static_argnums=(3,))


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


def layer_tickets(params, frozen, keep_fraction: float, pruning: str = "layerwise",
                  order: Sequence[tuple[str, ...]] | None = None) -> list[LayerTicket]:
    """Mask, sign bits and alpha of every (scores, weight) pair of a biprop model.

    layerwise: M = top-k of |scores| with k = ops.kept_count(n, keep_fraction) (ties to the
    lowest flat index, as ops.topk_mask); global: tau = ops.global_threshold over all
    layers, M = |s| > tau (SPEC 1.7). alpha = mean |W| over the kept entries (float32,
    to float32 rounding; ``make_ticket`` refines it to the training-time model's value).
    """
    keep_fraction = ops.validate_keep_fraction(keep_fraction)
    flat_p, flat_f = _flat(params), _flat(frozen)
    paths = [k[:-1] for k in flat_p if k[-1] == "scores"]
    if order is not None:
        if sorted(order) != sorted(paths):
            raise TicketError(f"the variables' prunable layers {sorted(map(_SEP.join, paths))} "
                              f"do not match the model's {sorted(map(_SEP.join, order))}")
        paths = list(order)
    if not paths:
        raise TicketError("no prunable layer (no 'scores' in params): tickets exist only for "
                          "mode='biprop' runs")
    tau = None
    if pruning == "global":
        tau = ops.global_threshold([jnp.asarray(flat_p[p + ("scores",)]) for p in paths],
                                   keep_fraction)
    elif pruning != "layerwise":
        raise TicketError(f"unknown pruning {pruning!r}; valid values: layerwise, global")
    out = []
    for path in paths:
        scores = np.asarray(flat_p[path + ("scores",)], np.float32)
        if path + ("weight",) not in flat_f:
            raise TicketError(f"layer {_SEP.join(path)} has scores but no frozen weight; pass "
                              f"the 'frozen' collection of the run")
        weight = np.asarray(flat_f[path + ("weight",)], np.float32)
        if weight.shape != scores.shape:
            raise TicketError(f"layer {_SEP.join(path)}: weight shape {weight.shape} != scores "
                              f"shape {scores.shape}")
        if tau is None:
            count = ops.kept_count(scores.size, keep_fraction)
            mask_np = topk_mask_np(np.abs(scores), count)
            alpha = _alpha_of(_layerwise_kernel(weight, mask_np, count, True))
        else:
            mask_np = np.abs(scores) > np.float32(tau)
            alpha = _alpha_of(_global_kernel(weight, scores, tau, True))
        # A kept weight that is exactly 0 has sign 0 (SPEC 8 item 27): its kernel entry is 0
        # like a pruned one, so the ticket stores it as pruned (one bit cannot hold a third
        # sign). alpha keeps its value: it was computed over the kept set above. (PyTorch's
        # kaiming_normal_ drew 5 exact zeros in 2^26 values here: a WRN-50-2 holds ~5.)
        mask_np &= weight != 0
        out.append(LayerTicket(path, mask_np, weight > 0, alpha))
    return out


_KERNEL_CACHE: dict = {}


def training_kernels(model_name: str, model_opts: Mapping[str, Any], variables, image_shape):
    """The effective kernels alpha * sign(W) * M exactly as the training-time model computes
    them inside a jitted forward pass (``effective_kernel`` of every prunable layer
    intercepted), by layer name. Using these values (not a re-derivation) makes the ticket's
    logits bitwise equal to the training-time model's on the same backend: alpha computed
    by another XLA program can differ by an ulp, which decides exact ties of integer-valued
    logits (MPT-1/1 classifiers with binary inputs)."""
    import flax.linen as nn

    model_opts = {k: _jsonable(v) for k, v in model_opts.items() if k != "dtype"}
    cache_key = (model_name, json.dumps(model_opts, sort_keys=True), tuple(image_shape))
    fn = _KERNEL_CACHE.get(cache_key)
    if fn is None:
        model = build_model(model_name, model_opts)
        dummy = _dummy(tuple(image_shape))

        def run(variables):
            found = {}

            def interceptor(next_fun, args, kwargs, context):
                out = next_fun(*args, **kwargs)
                if context.method_name == "effective_kernel" and _is_prunable(context.module):
                    found[_SEP.join(context.module.path)] = out
                return out

            with nn.intercept_methods(interceptor):
                model.apply(variables, dummy, train=False)
            return found

        fn = _KERNEL_CACHE[cache_key] = jax.jit(run)
    return fn(variables)


# ---------------------------------------------------------------------------
# Seed mode: regenerating W


def key_info(key) -> dict:
    """JSON record of the PRNG key given to ``model.init`` as the 'params' stream."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(key))
        data = np.asarray(jax.random.key_data(key))
    else:  # raw uint32 key (jax.random.PRNGKey)
        impl = jax.config.jax_default_prng_impl
        data = np.asarray(key)
    return dict(key_data=[int(x) for x in data.reshape(-1)], key_shape=list(data.shape),
                impl=impl, threefry_partitionable=bool(jax.config.jax_threefry_partitionable),
                jax_version=jax.__version__)


def _key_from_info(init: Mapping[str, Any]):
    data = np.asarray(init["key_data"], np.uint32).reshape(init["key_shape"])
    impl = init.get("impl", "threefry2x32")
    try:
        return jax.random.wrap_key_data(data, impl=impl)
    except Exception as e:  # unknown impl name in this JAX
        raise TicketError(f"cannot rebuild the PRNG key (impl {impl!r}) in JAX {jax.__version__}:"
                          f" {e}; re-export the ticket with mode='signs'") from None


_INIT_CACHE: dict = {}


def init_variables(model_name: str, model_opts: Mapping[str, Any], image_shape, key):
    """``model.init({'params': key}, zeros((1, *image_shape)), train=False)`` under jit, as
    ``train.create_train_state`` does; the compiled function is cached per model."""
    model_opts = {k: _jsonable(v) for k, v in model_opts.items() if k != "dtype"}
    cache_key = (model_name, json.dumps(model_opts, sort_keys=True), tuple(image_shape))
    fn = _INIT_CACHE.get(cache_key)
    if fn is None:
        model = build_model(model_name, model_opts)
        dummy = _dummy(tuple(image_shape))
        fn = _INIT_CACHE[cache_key] = jax.jit(
            lambda k: model.init({"params": k}, dummy, train=False))
    return fn(key)


def regenerate_frozen(model_name, model_opts, image_shape, init: Mapping[str, Any]):
    """The frozen random weights ``model.init`` draws from the recorded key (SPEC 10)."""
    key = _key_from_info(init)
    with jax.threefry_partitionable(bool(init.get("threefry_partitionable", True))):
        variables = init_variables(model_name, model_opts, image_shape, key)
    return variables.get("frozen", {})


def _signs_hash(lt: LayerTicket) -> str:
    return hashlib.sha256(np.packbits(lt.signs[lt.mask]).tobytes()).hexdigest()


def _check_regenerated(layers_: Sequence[LayerTicket], frozen, hashes: Mapping[str, str],
                       init) -> list[LayerTicket]:
    flat_f = _flat(frozen)
    out = []
    for lt in layers_:
        w = flat_f.get(lt.path + ("weight",))
        if w is None or tuple(w.shape) != lt.shape:
            raise TicketError(f"regenerated weights have no layer {lt.name} of shape {lt.shape}")
        signs = np.asarray(w) > 0
        new = dataclasses.replace(lt, signs=signs)
        if _signs_hash(new) != hashes[lt.name]:
            raise TicketError(
                f"regenerating the random weights of layer {lt.name} from the recorded seed "
                f"gives different signs (ticket written with JAX {init.get('jax_version')}, PRNG "
                f"{init.get('impl')}, threefry_partitionable={init.get('threefry_partitionable')};"
                f" this is JAX {jax.__version__}); use a ticket exported with mode='signs'")
        out.append(new)
    return out


# ---------------------------------------------------------------------------
# Building a ticket


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
    if mode not in MODES:
        raise TicketError(f"unknown ticket mode {mode!r}; valid modes: {', '.join(MODES)}")
    if bn_dtype not in BN_DTYPES:
        raise TicketError(f"unknown bn_dtype {bn_dtype!r}; valid values: {', '.join(BN_DTYPES)}")
    model_opts = {k: _jsonable(v) for k, v in dict(model_opts).items() if k != "dtype"}
    if model_opts.get("mode", "biprop") != "biprop":
        raise TicketError(f"a ticket needs a mode='biprop' run (binary kernels); this run used "
                          f"mode={model_opts['mode']!r}")
    model_opts["mode"] = "biprop"
    keep_fraction = ops.validate_keep_fraction(model_opts.get("keep_fraction", 0.5))
    model_opts["keep_fraction"] = keep_fraction
    image_shape = tuple(int(d) for d in image_shape)
    order = _prunable_order(model_name, model_opts, image_shape)
    pruning = model_opts.get("pruning", "layerwise")
    lts = layer_tickets(variables.get("params"), variables.get("frozen"), keep_fraction,
                        pruning, order=order)
    if exact:  # alpha exactly as the training-time model computes it
        run_vars = {k: variables[k] for k in ("params", "frozen", "batch_stats")
                    if variables.get(k)}
        if pruning == "global":
            flat_p = _flat(variables["params"])
            tau = ops.global_threshold([flat_p[p + ("scores",)] for p in order], keep_fraction)
            shapes = _shapes(build_model(model_name, model_opts), image_shape)
            run_vars["pruning"] = jax.tree_util.tree_map(lambda _: tau, shapes["pruning"])
        kernels = training_kernels(model_name, model_opts, run_vars, image_shape)
        for lt in lts:
            kernel = np.asarray(kernels[lt.name])
            if not np.array_equal(kernel != 0, lt.mask):
                raise TicketError(f"layer {lt.name}: the model's kernel and the ticket's mask "
                                  f"differ (ties in |scores|?); cannot freeze this ticket "
                                  f"exactly")
            lt.alpha = _alpha_of(kernel)
    others = {}
    for coll in ("params", "batch_stats"):
        for path, leaf in _flat(variables.get(coll)).items():
            if coll == "params" and path[-1] == "scores":
                continue
            others[_SEP.join((coll, *path))] = np.asarray(leaf, np.float32).astype(bn_dtype)
    info = dict(metrics=_metrics_json(metrics), bn_dtype=bn_dtype, extra=dict(extra or {}))
    if mode == "seed":
        if init_key is None:
            raise TicketError("mode='seed' needs the PRNG key the run initialised the model with"
                              " (init_key); or use mode='signs'")
        init = key_info(init_key)
        if exact:
            frozen = regenerate_frozen(model_name, model_opts, image_shape, init)
            try:
                _check_regenerated(lts, frozen, {lt.name: _signs_hash(lt) for lt in lts}, init)
            except TicketError:
                raise TicketError("the given init key does not regenerate this run's random "
                                  "weights (different kept signs); pass the key the run used for"
                                  " model.init, or export with mode='signs'") from None
        info["init"] = init
    ticket = Ticket(model_name, model_opts, image_shape, keep_fraction, mode, lts, others, info)
    inference_model(ticket)  # shapes and collections must fit the model: fail at export time
    return ticket


def _metrics_json(metrics):
    out = {}
    for k, v in dict(metrics or {}).items():
        try:
            out[str(k)] = float(v) if not isinstance(v, (str, bool)) else v
        except (TypeError, ValueError):
            continue
    return out


# ---------------------------------------------------------------------------
# Serialisation


def _layout(arrays: Sequence[tuple[str, np.ndarray]]):
    entries, offset, chunks = [], 0, []
    for name, arr in arrays:
        arr = np.ascontiguousarray(arr)
        data = arr.tobytes()
        entries.append(dict(name=name, dtype=arr.dtype.str, shape=list(arr.shape),
                            offset=offset, nbytes=len(data)))
        chunks.append(data)
        offset += len(data)
    return entries, b"".join(chunks)


def ticket_bytes(ticket: Ticket) -> bytes:
    """The file contents of ``ticket`` (see the module docstring)."""
    arrays = []
    layer_entries = []
    for i, lt in enumerate(ticket.layers):
        arrays.append((f"layer{i}/mask", np.packbits(lt.mask.reshape(-1))))
        if ticket.mode == "signs":
            arrays.append((f"layer{i}/signs", np.packbits(lt.signs[lt.mask])))
        layer_entries.append(dict(path=list(lt.path), shape=list(lt.shape), kept=lt.kept,
                                  signs_sha256=_signs_hash(lt)))
    arrays.append(("alphas", np.array([lt.alpha for lt in ticket.layers], np.float32)))
    for name, arr in ticket.others.items():
        arrays.append((name, arr))
    entries, payload = _layout(arrays)
    manifest = dict(
        format="mpt_jax ticket", format_version=FORMAT_VERSION, model=ticket.model,
        model_options=ticket.model_options, image_shape=list(ticket.image_shape),
        keep_fraction=ticket.keep_fraction, mode=ticket.mode, layers=layer_entries,
        arrays=entries, payload_bytes=len(payload), package_version=mpt_jax.__version__,
        jax_version=jax.__version__,
        **{k: v for k, v in ticket.info.items() if k not in ("package_version", "jax_version")})
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(manifest_bytes + payload).digest()
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(manifest_bytes), digest)
    return header + manifest_bytes + payload


def save_ticket(ticket: Ticket, path: str | os.PathLike) -> int:
    """Writes ``ticket`` to ``path`` (atomically) and returns the file size in bytes."""
    data = ticket_bytes(ticket)
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


def parse_ticket_bytes(data: bytes, source: str = "ticket") -> tuple[dict, dict[str, np.ndarray]]:
    """Validates header, version, length and checksum; returns (manifest, arrays)."""
    if len(data) < HEADER_BYTES:
        raise TicketError(f"{source}: file is {len(data)} bytes, shorter than the {HEADER_BYTES}"
                          f"-byte header (truncated or not a ticket)")
    magic, version, _, manifest_len, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise TicketError(f"{source}: bad magic bytes {magic!r} (expected {MAGIC!r}): not an "
                          f"mpt_jax ticket file")
    if version != FORMAT_VERSION:
        raise TicketError(f"{source}: ticket format version {version}, this mpt_jax "
                          f"({mpt_jax.__version__}) reads version {FORMAT_VERSION}; use the "
                          f"mpt_jax version that wrote it or re-export the ticket")
    body = data[HEADER_BYTES:]
    if manifest_len > len(body):
        raise TicketError(f"{source}: truncated: manifest needs {manifest_len} bytes, only "
                          f"{len(body)} present")
    if hashlib.sha256(body).digest() != digest:
        raise TicketError(f"{source}: checksum mismatch (sha256 of manifest+payload): the file "
                          f"is corrupted or truncated; re-export or re-download it")
    try:
        manifest = json.loads(body[:manifest_len].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TicketError(f"{source}: unreadable manifest ({e})") from None
    payload = body[manifest_len:]
    if manifest.get("payload_bytes") != len(payload):
        raise TicketError(f"{source}: payload is {len(payload)} bytes, manifest says "
                          f"{manifest.get('payload_bytes')}")
    arrays = {}
    try:
        for e in manifest["arrays"]:
            dt = np.dtype(e["dtype"])
            n = int(np.prod(e["shape"], dtype=np.int64)) * dt.itemsize
            if n != e["nbytes"] or e["offset"] + n > len(payload) or e["offset"] < 0:
                raise TicketError(f"{source}: array {e['name']} does not fit the payload")
            arrays[e["name"]] = np.frombuffer(payload, dt, count=n // dt.itemsize,
                                              offset=e["offset"]).reshape(e["shape"])
    except (KeyError, TypeError) as e:
        raise TicketError(f"{source}: malformed manifest array table ({e!r})") from None
    return manifest, arrays


def _unpack(bits: np.ndarray, count: int, name: str) -> np.ndarray:
    if bits.dtype != np.uint8 or bits.ndim != 1 or bits.size != (count + 7) // 8:
        raise TicketError(f"bit array {name} has {bits.size} bytes, expected {(count + 7) // 8}")
    return np.unpackbits(bits, count=count).astype(bool)


def ticket_from_bytes(data: bytes, source: str = "ticket", *, verify_seed: bool = True) -> Ticket:
    manifest, arrays = parse_ticket_bytes(data, source)
    try:
        mode = manifest["mode"]
        if mode not in MODES:
            raise TicketError(f"{source}: unknown ticket mode {mode!r}")
        alphas = arrays["alphas"]
        entries = manifest["layers"]
        if alphas.shape != (len(entries),):
            raise TicketError(f"{source}: {alphas.shape} alphas for {len(entries)} layers")
        lts = []
        for i, e in enumerate(entries):
            shape = tuple(int(d) for d in e["shape"])
            n = math.prod(shape)
            mask = _unpack(arrays[f"layer{i}/mask"], n, f"layer{i}/mask").reshape(shape)
            if int(mask.sum()) != e["kept"]:
                raise TicketError(f"{source}: layer {_SEP.join(e['path'])} mask keeps "
                                  f"{int(mask.sum())}, manifest says {e['kept']}")
            signs = np.zeros(shape, bool)
            if mode == "signs":
                signs[mask] = _unpack(arrays[f"layer{i}/signs"], e["kept"], f"layer{i}/signs")
            lts.append(LayerTicket(tuple(e["path"]), mask, signs, np.float32(alphas[i])))
        others = {k: np.array(v) for k, v in arrays.items()
                  if k.startswith(("params/", "batch_stats/"))}
        info = {k: manifest[k] for k in ("metrics", "bn_dtype", "extra", "init")
                if k in manifest}
        info["written_with"] = {k: manifest.get(k) for k in ("package_version", "jax_version")}
        ticket = Ticket(manifest["model"], dict(manifest["model_options"]),
                        tuple(manifest["image_shape"]), float(manifest["keep_fraction"]), mode,
                        lts, others, info)
        hashes = {_SEP.join(e["path"]): e["signs_sha256"] for e in entries}
    except KeyError as e:
        raise TicketError(f"{source}: manifest or payload lacks {e}") from None
    if mode == "signs":
        for lt in ticket.layers:
            if _signs_hash(lt) != hashes[lt.name]:
                raise TicketError(f"{source}: sign bits of layer {lt.name} do not match the "
                                  f"manifest hash")
    elif verify_seed:
        if "init" not in manifest:
            raise TicketError(f"{source}: mode 'seed' ticket without an init record")
        frozen = regenerate_frozen(ticket.model, ticket.model_options, ticket.image_shape,
                                   manifest["init"])
        ticket.layers = _check_regenerated(ticket.layers, frozen, hashes, manifest["init"])
    return ticket


def load_ticket(path: str | os.PathLike, *, verify_seed: bool = True) -> Ticket:
    """Reads and validates a ticket file (regenerating and checking W for mode "seed")."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TicketError(f"cannot read ticket {os.fspath(path)!r}: {e.strerror}") from None
    return ticket_from_bytes(data, os.fspath(path), verify_seed=verify_seed)


# ---------------------------------------------------------------------------
# Inference


def inference_model(ticket: Ticket):
    """(model, variables): the ticket as a dense-kernel model (float32, no scores)."""
    model = build_model(ticket.model, inference_options(ticket.model_options))
    shapes = _shapes(model, ticket.image_shape)
    flat_params = _flat(shapes.get("params", {}))
    flat_stats = _flat(shapes.get("batch_stats", {}))
    extra = sorted(set(shapes) - {"params", "batch_stats"})
    if extra:
        raise TicketError(f"model {ticket.model!r} has variable collections {extra} that a "
                          f"ticket does not carry")
    by_path = {lt.path: lt for lt in ticket.layers}
    kernel_paths = [k[:-1] for k in flat_params if k[-1] == "kernel"]
    if sorted(kernel_paths) != sorted(by_path):
        raise TicketError(f"ticket layers {sorted(map(_SEP.join, by_path))} do not match model "
                          f"{ticket.model!r} (layers {sorted(map(_SEP.join, kernel_paths))}): "
                          f"wrong model or options for this ticket")
    params, stats = {}, {}
    for key, sds in flat_params.items():
        name = _SEP.join(("params", *key))
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
        params[key] = value
    for key, sds in flat_stats.items():
        name = _SEP.join(("batch_stats", *key))
        if name not in ticket.others:
            raise TicketError(f"BatchNorm statistic {name} is missing from the ticket")
        value = np.asarray(ticket.others[name], np.float32)
        if tuple(value.shape) != tuple(sds.shape):
            raise TicketError(f"{name}: ticket shape {value.shape} != model shape {sds.shape}")
        stats[key] = value
    used = {_SEP.join(("params", *k)) for k in params} | {_SEP.join(("batch_stats", *k))
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


# ---------------------------------------------------------------------------
# Summary (Larq-style)


def _probe_layers(ticket: Ticket, batch: int = 2, seed: int = 0) -> dict[str, dict]:
    """Per prunable layer: kind, output spatial size and whether its input is binary (+-1).

    Model-agnostic: one jitted forward pass of the ticket on a random image batch with the
    layer calls intercepted. An input is binary when every value is exactly +1 or -1 (the
    output of a sign activation; images, ReLU outputs and averages of signs are not).
    """
    import flax.linen as nn

    model, variables = inference_model(ticket)
    static: dict[str, dict] = {}

    def run(variables, x):
        flags = {}

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            mod = context.module
            if context.method_name == "__call__" and _is_prunable(mod):
                name = _SEP.join(mod.path)
                static[name] = dict(
                    kind="conv" if isinstance(mod, layers.BipropConv) else "dense",
                    out_positions=int(np.prod(out.shape[1:-1])) if out.ndim > 2 else 1)
                flags[name] = jnp.all(jnp.abs(args[0]) == 1.0)
            return out

        with nn.intercept_methods(interceptor):
            model.apply(variables, x, train=False)
        return flags

    x = jax.random.normal(jax.random.key(seed), (batch, *ticket.image_shape), jnp.float32)
    flags = jax.jit(run)(variables, x)
    return {k: dict(v, binary_input=bool(flags[k])) for k, v in static.items()}


def summary(ticket: Ticket, file_bytes: int | None = None,
            checkpoint_bytes: int | None = None) -> dict:
    """Per layer and total sizes, bits per weight, compression and MACs (per example).

    bits per weight = (mask bits + sign bits stored + 32 alpha bits) / weights, counted from
    the actual packed byte sizes; MACs are of the dense layer (every weight position, as the
    bit-packed kernel computes them) and are "binary" when the layer input is binary AND the
    weights are binary (1-bit x 1-bit XNOR-popcount), otherwise "other".
    """
    probe = _probe_layers(ticket)
    rows = []
    for lt in ticket.layers:
        n = int(np.prod(lt.shape))
        mask_bytes = (n + 7) // 8
        sign_bytes = (lt.kept + 7) // 8 if ticket.mode == "signs" else 0
        nbytes = mask_bytes + sign_bytes + 4
        p = probe[lt.name]
        macs = n * p["out_positions"]
        rows.append(dict(
            layer=lt.name, kind=p["kind"], shape=list(lt.shape), weights=n, kept=lt.kept,
            kept_fraction=lt.kept / n, bits_per_weight=8.0 * nbytes / n, bytes=nbytes,
            fp32_bytes=4 * n, compression=4.0 * n / nbytes, binary_input=p["binary_input"],
            binary_macs=macs if p["binary_input"] else 0,
            other_macs=0 if p["binary_input"] else macs))
    bn_bytes = int(sum(a.nbytes for a in ticket.others.values()))
    bn_values = int(sum(a.size for a in ticket.others.values()))
    total_w = sum(r["weights"] for r in rows)
    layer_bytes = sum(r["bytes"] for r in rows)
    size = len(ticket_bytes(ticket)) if file_bytes is None else int(file_bytes)
    fp32_total = 4 * (total_w + bn_values)
    totals = dict(
        weights=total_w, kept=sum(r["kept"] for r in rows), layer_bytes=layer_bytes,
        bits_per_weight=8.0 * layer_bytes / total_w, bn_values=bn_values, bn_bytes=bn_bytes,
        overhead_bytes=size - layer_bytes - bn_bytes, file_bytes=size,
        file_bits_per_weight=8.0 * size / total_w, fp32_bytes=fp32_total,
        compression=fp32_total / size,
        binary_macs=sum(r["binary_macs"] for r in rows),
        other_macs=sum(r["other_macs"] for r in rows))
    if checkpoint_bytes is not None:
        totals["checkpoint_bytes"] = int(checkpoint_bytes)
    return dict(model=ticket.model, mode=ticket.mode, keep_fraction=ticket.keep_fraction,
                image_shape=list(ticket.image_shape), layers=rows, totals=totals,
                metrics=ticket.info.get("metrics", {}))


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024.0
    return str(n)


def _fmt_macs(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def summary_table(source, **kwargs) -> str:
    """Larq-style text table of ``summary(...)``; ``source`` is a Ticket or a summary dict.

    For a training run: ``summary_table(make_ticket(name, opts, variables, image_shape))``.
    """
    s = summary(source, **kwargs) if isinstance(source, Ticket) else source
    head = ("layer", "kind", "weights", "kept", "bits/w", "bytes", "fp32", "ratio",
            "binary MACs", "other MACs")
    lines = []
    for r in s["layers"]:
        lines.append((r["layer"], r["kind"], f"{r['weights']:,}", f"{r['kept']:,}",
                      f"{r['bits_per_weight']:.3f}", _fmt_bytes(r["bytes"]),
                      _fmt_bytes(r["fp32_bytes"]), f"{r['compression']:.1f}x",
                      _fmt_macs(r["binary_macs"]), _fmt_macs(r["other_macs"])))
    t = s["totals"]
    lines.append(("BatchNorm / other", "", f"{t['bn_values']:,}", "", "", _fmt_bytes(t["bn_bytes"]),
                  _fmt_bytes(4 * t["bn_values"]), "", "", ""))
    lines.append(("header + manifest", "", "", "", "", _fmt_bytes(t["overhead_bytes"]), "", "",
                  "", ""))
    lines.append(("TOTAL (file)", "", f"{t['weights']:,}", f"{t['kept']:,}",
                  f"{t['file_bits_per_weight']:.3f}", _fmt_bytes(t["file_bytes"]),
                  _fmt_bytes(t["fp32_bytes"]), f"{t['compression']:.1f}x",
                  _fmt_macs(t["binary_macs"]), _fmt_macs(t["other_macs"])))
    widths = [max(len(str(row[i])) for row in [head, *lines]) for i in range(len(head))]

    def fmt(row):
        return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))

    rule = "-" * len(fmt(head))
    out = [f"Ticket of {s['model']} (keep_fraction={s['keep_fraction']}, mode={s['mode']}; "
           f"MACs per example)", rule, fmt(head), rule]
    out += [fmt(r) for r in lines[:-3]]
    out += [rule] + [fmt(r) for r in lines[-3:]]
    extra = [f"prunable weights only: {t['bits_per_weight']:.3f} bits/weight"]
    if "checkpoint_bytes" in t:
        extra.append(f"run checkpoint: {_fmt_bytes(t['checkpoint_bytes'])} "
                     f"({t['checkpoint_bytes'] / t['file_bytes']:.1f}x the ticket)")
    acc = {k: v for k, v in s.get("metrics", {}).items() if "acc" in k}
    if acc:
        extra.append("run metrics: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float)
                                                 else f"{k}={v}" for k, v in acc.items()))
    return "\n".join(out + [rule] + extra)


# ---------------------------------------------------------------------------
# Runs (workdirs written by mpt_jax.train) and evaluation

def run_init_key(seed: int):
    """The key ``train.create_train_state`` gives ``model.init`` for ``config.seed``:
    ``split(PRNGKey(seed))[0]`` (keep in sync with mpt_jax.train)."""
    return jax.random.split(jax.random.PRNGKey(int(seed)))[0]


def run_image_shape(config, image_shape=None) -> tuple[int, ...]:
    if image_shape:
        return tuple(int(d) for d in image_shape)
    if config.get("image_shape"):
        return tuple(int(d) for d in config.image_shape)
    dataset = config.get("dataset", "")
    info = datasets.find(dataset)
    if info is None or info.image_shape is None:
        raise TicketError(f"cannot tell the image shape of dataset {dataset!r}; pass "
                          f"--image_shape=H,W,C")
    return info.image_shape


def _num_classes(config, params) -> int:
    flat = _flat(params)
    if ("classifier", "scores") in flat:  # every model of the zoo names its last layer so
        return int(flat[("classifier", "scores")].shape[-1])
    from mpt_jax import config_utils
    return config_utils.num_classes_hint(config)


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def checkpoint_bytes(workdir: str, which: str = "latest") -> int | None:
    """Bytes of the newest ``which`` checkpoint of a run (None if there is none)."""
    directory = os.path.join(workdir, "checkpoints", which)
    steps = [d for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
    if not steps:
        return None
    return _dir_bytes(os.path.join(directory, max(steps, key=int)))


def ticket_from_run(workdir: str, which: str = "latest", *, mode: str = "seed",
                    bn_dtype: str = "float32", image_shape=None, exact: bool = True) -> Ticket:
    """The ticket of a training run's latest (or best) checkpoint (``exact``: make_ticket)."""
    from mpt_jax import checkpoint, config_utils

    run = checkpoint.load_for_inference(workdir, which)
    config = run["config"]
    opts = config_utils.model_kwargs(config, _num_classes(config, run["params"]))
    if opts.get("pruning") == "global" and run["metrics"].get("keep_fraction") is not None:
        # The current keep fraction k_t of the global ramp (SPEC 1.7) at the checkpoint.
        opts["keep_fraction"] = float(run["metrics"]["keep_fraction"])
    variables = dict(params=run["params"], frozen=run["frozen"], batch_stats=run["batch_stats"])
    # The manifest records how the ticket was found: the whole resolved config and the run's
    # result (epochs, accuracy with its split, hardware, versions) when the run has finished.
    result = None
    result_path = os.path.join(workdir, "result.json")
    if os.path.exists(result_path):
        try:
            with open(result_path) as f:
                result = json.load(f)
        except (OSError, ValueError):
            result = None
    return make_ticket(config.model, opts, variables, run_image_shape(config, image_shape),
                       mode=mode, init_key=run_init_key(config.seed) if mode == "seed" else None,
                       metrics=run["metrics"], bn_dtype=bn_dtype,
                       extra=dict(workdir=os.path.abspath(workdir), which=which,
                                  seed=int(config.seed), dataset=config.get("dataset"),
                                  config=json.loads(config_utils.to_json(config)),
                                  result=result),
                       exact=exact)


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
    from mpt_jax import checkpoint

    run = checkpoint.load_for_inference(workdir, which)
    model = build_model(ticket.model, ticket.model_options)
    variables = {k: run[k] for k in ("params", "frozen", "batch_stats", "pruning") if run.get(k)}
    if ticket.model_options.get("pruning") == "global":
        flat = _flat(run["params"])
        tau = ops.global_threshold([flat[k] for k in flat if k[-1] == "scores"],
                                   ticket.keep_fraction)
        variables["pruning"] = jax.tree_util.tree_map(lambda _: tau, run["pruning"])
    ref = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    out = predict_fn(ticket)(images)
    return float(jnp.max(jnp.abs(out - ref)))


# ---------------------------------------------------------------------------
# Command line


_FLAGS = None


def _define_flags():
    """This command's own flags (not absl's global FLAGS, where ``python -m mpt_jax.main``
    defines a --config of its own: a notebook may call both)."""
    global _FLAGS
    from absl import flags
    from ml_collections import config_flags

    if _FLAGS is not None:
        return _FLAGS
    F = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "Config (configs/*.py) of the evaluation "
                                    "data; --config.<field>=... overrides.", flag_values=F,
                                    lock_config=False)
    flags.DEFINE_string("workdir", None, "Training run directory (export; evaluate/summary "
                        "compare with it).", flag_values=F)
    flags.DEFINE_enum("which", "latest", ["latest", "best"], "Which checkpoint of the run.",
                      flag_values=F)
    flags.DEFINE_string("out", None, "Output ticket file (export, import-torch).", flag_values=F)
    flags.DEFINE_string("ticket", None, "Ticket file (evaluate, summary).", flag_values=F)
    flags.DEFINE_enum("mode", "seed", list(MODES), "seed: regenerate W from the run's PRNG key "
                      "(<= 1.1 bits/weight); signs: store the kept sign bits (<= 2.2).",
                      flag_values=F)
    flags.DEFINE_enum("bn_dtype", "float32", list(BN_DTYPES), "Storage dtype of BN arrays.",
                      flag_values=F)
    flags.DEFINE_list("image_shape", None, "H,W,C when the dataset does not imply it.",
                      flag_values=F)
    flags.DEFINE_bool("json", False, "summary: machine-readable JSON on stdout.", flag_values=F)
    flags.DEFINE_string("checkpoint", None, "import-torch: PyTorch checkpoint (.pth).",
                        flag_values=F)
    flags.DEFINE_string("model", None, "import-torch: mpt_jax model name (e.g. resnet18_cifar).",
                        flag_values=F)
    flags.DEFINE_float("keep_fraction", None, "import-torch: the run's prune_rate (fraction "
                       "KEPT).", flag_values=F)
    flags.DEFINE_string("model_options", "{}", "import-torch: JSON of extra get_model options, "
                        "e.g. '{\"width_mult\": 10}'.", flag_values=F)
    flags.DEFINE_integer("num_classes", None, "import-torch: classifier outputs (default: from "
                         "the checkpoint).", flag_values=F)
    _FLAGS = F
    return F


USAGE = """usage: python -m mpt_jax.ticket COMMAND [flags]
  export        --workdir=RUN --out=FILE [--which=latest|best] [--mode=seed|signs]
  evaluate      --ticket=FILE [--config=configs/X.py] [--workdir=RUN]
  summary       --ticket=FILE | --workdir=RUN   [--json]
  import-torch  --checkpoint=model_best.pth --model=NAME --keep_fraction=K --out=FILE"""


def _cmd_export(F) -> int:
    if not F.workdir or not F.out:
        raise TicketError("export needs --workdir=RUN and --out=FILE")
    ticket = ticket_from_run(F.workdir, F.which, mode=F.mode, bn_dtype=F.bn_dtype,
                             image_shape=F.image_shape)
    size = save_ticket(ticket, F.out)
    s = summary(ticket, file_bytes=size, checkpoint_bytes=checkpoint_bytes(F.workdir, F.which))
    print(summary_table(s))
    t = s["totals"]
    print(f"wrote {F.out}: {size:,} bytes = {t['file_bits_per_weight']:.3f} bits/weight "
          f"({t['bits_per_weight']:.3f} for the prunable layers alone); fp32 dense "
          f"{t['fp32_bytes']:,} bytes" + (f"; run checkpoint {t['checkpoint_bytes']:,} bytes"
                                          if "checkpoint_bytes" in t else ""))
    return 0


def _cmd_evaluate(F) -> int:
    if not F.ticket:
        raise TicketError("evaluate needs --ticket=FILE")
    ticket = load_ticket(F.ticket)
    config = F.config
    recorded = ticket.info.get("metrics", {})
    if config is None:
        if not F.workdir:
            raise TicketError("evaluate needs --config=configs/X.py (the evaluation data) "
                              "and/or --workdir=RUN (logit comparison)")
        from mpt_jax import checkpoint
        config = checkpoint.load_for_inference(F.workdir, F.which)["config"]
    if config.get("model") and config.model != ticket.model:
        raise TicketError(f"ticket is for model {ticket.model!r} but the config asks for "
                          f"{config.model!r}; use the run's config")
    from mpt_jax import data, parallel

    ds = data.get_dataset(config, parallel.make_mesh())
    if tuple(ds.image_shape) != tuple(ticket.image_shape):
        raise TicketError(f"ticket expects images {ticket.image_shape}, dataset gives "
                          f"{tuple(ds.image_shape)}")
    result = evaluate_batches(ticket, ds.eval_batches())
    line = (f"ticket {F.ticket}: top-1 {result['accuracy']:.2f}% on {result['examples']:,} "
            f"examples ({ds.eval_split_name})")
    if recorded.get("accuracy") is not None:
        line += f"; run recorded {recorded['accuracy']:.2f}%"
    print(line)
    if F.workdir:
        images = next(iter(ds.eval_batches()))["image"]
        diff = compare_with_run(ticket, F.workdir, F.which, images)
        print(f"max |logit difference| vs the training-time model on one batch: {diff:.3g}")
    return 0


def _cmd_summary(F) -> int:
    if F.ticket:
        ticket = load_ticket(F.ticket)
        size = os.path.getsize(F.ticket)
    elif F.workdir:
        ticket = ticket_from_run(F.workdir, F.which, mode=F.mode, image_shape=F.image_shape)
        size = None
    else:
        raise TicketError("summary needs --ticket=FILE or --workdir=RUN")
    s = summary(ticket, file_bytes=size,
                checkpoint_bytes=checkpoint_bytes(F.workdir, F.which) if F.workdir else None)
    print(json.dumps(s, indent=1) if F.json else summary_table(s))
    return 0


def _cmd_import_torch(F) -> int:
    from mpt_jax import torch_import

    if not (F.checkpoint and F.model and F.keep_fraction and F.out):
        raise TicketError("import-torch needs --checkpoint, --model, --keep_fraction and --out")
    try:
        options = json.loads(F.model_options)
    except json.JSONDecodeError as e:
        raise TicketError(f"--model_options is not JSON ({e})") from None
    ticket = torch_import.ticket_from_torch(
        F.checkpoint, F.model, F.keep_fraction, model_opts=options, num_classes=F.num_classes,
        image_shape=F.image_shape)
    size = save_ticket(ticket, F.out)
    print(summary_table(summary(ticket, file_bytes=size,
                                checkpoint_bytes=os.path.getsize(F.checkpoint))))
    print(f"wrote {F.out}: {size:,} bytes")
    return 0


COMMANDS = {"export": _cmd_export, "evaluate": _cmd_evaluate, "summary": _cmd_summary,
            "import-torch": _cmd_import_torch}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) >= 2 and argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if len(argv) < 2 or argv[1] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    if any(a in ("-h", "--help") for a in argv[2:]):
        print(USAGE)
        return 0
    command = argv.pop(1)
    F = _define_flags()
    from mpt_jax import cli
    from mpt_jax.errors import UserError, one_line
    try:
        cli.parse_command_line(F, argv)
        return COMMANDS[command](F)
    except BrokenPipeError:  # `ticket summary ... | head`: output is printed after the work
        cli.stdout_closed()
        return 0
    except (TicketError, UserError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # absl flag errors
        from absl import flags
        if isinstance(e, flags.Error):
            print(f"error: {one_line(e)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
