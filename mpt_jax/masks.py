"""Mask rules: which entries of a layer's kernel are kept (the M of alpha * sign(W) * M).

A rule turns a layer's scores into ``(mask, count)``: a bool mask of the kernel's shape
and the number of kept entries that alpha divides by. ``mpt_jax.ops.ste_kernel`` then
turns (weight, scores, mask, count) into the kernel and its straight-through gradient.

* ``TopK``            layerwise pruning: every layer keeps its
  ``kept_count(n, keep_fraction)`` largest |scores| (``select.topk_mask``, exact, ties to
  the lowest flat index). The layer searches its own scores unless the training step has
  handed the masks of all layers in, precomputed at once (``precompute``).
* ``BatchedTopK``     the same kept sets, but ``precompute`` finds them for all layers in
  one computation before ``model.apply`` (``mpt_jax.select_many``; the GPU default) and
  passes them in through the ``masks`` collection.
* ``GlobalThreshold`` global pruning: one threshold tau over the |scores| of all layers
  (``global_threshold``, set by the training step in the ``pruning`` collection); a layer
  keeps |s| > tau.

Layers receive their rule (``rule_for_pruning``); the training step builds its rule from
the config (``rule_from_config``) and merges ``rule.precompute(params, keep_fraction)``
into the variables it applies the model with.

Kept counts per layer can also come in as data: a ``kept`` collection
(``kept[<layer path>]["count"]``, int32 scalars, ``kept_counts``) replaces the count of the
layer's static keep fraction in both top-k rules. A member program (``mpt_jax.members``)
trains several keep fractions in one vmapped step this way, each member with the exact
host counts of its own keep fraction (a float32 keep fraction on the device could miss a
count by one, see ``kept_for``).

Counts (fixed conventions, see docs of ``kept_count``): ``keep_fraction`` is the fraction
KEPT (0.2 = "80 % pruned"); a layer of n weights keeps n - floor((1 - keep_fraction) n),
evaluated in float64 on the host.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax import select, select_many

Array = jax.Array

PRUNING = ("layerwise", "global")
MASK_IMPLS = ("auto", "per_layer", "batched")
DEFAULT_METHOD = "radix_many"  # the batched method of the GPU default (benchmarks/RESULTS.md)
BLOCK = select_many.BLOCK
MASKS = "masks"      # collection of the precomputed masks: masks[<layer path>]["mask"]
KEPT = "kept"        # collection of per-layer kept counts: kept[<layer path>]["count"]
PRUNING_COLLECTION = "pruning"  # collection of the global threshold: [<layer>]["threshold"]

# Name scope of the mask search in the compiled step, so that a profile
# (benchmarks/profile_step.py) can tell it apart from the convolutions (XLA op_name metadata).
SCOPE_MASK = "mask_search"

# ---------------------------------------------------------------------------
# Counts


def validate_keep_fraction(keep_fraction: Any, name: str = "keep_fraction") -> float:
    """Returns ``keep_fraction`` as a float, or raises a ValueError that says how to fix it."""
    # Strings and bools are rejected even where float() would accept them ("0.5", True):
    # they are config mistakes, not keep fractions.
    if isinstance(keep_fraction, (str, bytes, bool, np.bool_)):
        raise ValueError(
            f"{name} must be a number in (0, 1] (the fraction of weights KEPT, e.g. 0.2 for "
            f"'80 % pruned'), not a {type(keep_fraction).__name__}; got {keep_fraction!r}")
    try:
        value = float(keep_fraction)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a number in (0, 1] (the fraction of weights KEPT, e.g. 0.2 for "
            f"'80 % pruned'); got {keep_fraction!r}") from None
    if not (0.0 < value <= 1.0):  # also rejects NaN
        raise ValueError(
            f"{name} must be in (0, 1] (the fraction of weights KEPT, e.g. 0.2 for "
            f"'80 % pruned'); got {keep_fraction!r}")
    return value


def check_keep_fraction(keep_fraction) -> None:
    """Validates host values and concrete (non-traced) arrays; traced values cannot raise."""
    if isinstance(keep_fraction, jax.core.Tracer):
        return
    if isinstance(keep_fraction, (jax.Array, np.ndarray)):
        if keep_fraction.shape != ():
            raise ValueError(f"keep_fraction must be a scalar, got an array of shape "
                             f"{keep_fraction.shape}")
        keep_fraction = keep_fraction.item()
    validate_keep_fraction(keep_fraction)


def kept_count(n: int, keep_fraction: float) -> int:
    """Number of entries a layer of ``n`` weights keeps: n - floor((1 - k) n).

    Evaluated in float64 exactly as the reference does, so e.g. (n, k) = (2560, 0.8) keeps
    2049 entries, because 1 - 0.8 = 0.19999999999999996 in float64.
    """
    keep_fraction = validate_keep_fraction(keep_fraction)
    if n <= 0:
        raise ValueError(f"a layer must have at least one weight, got n={n}")
    return int(n - math.floor((1.0 - keep_fraction) * n))


def kept_for(n: int, keep_fraction) -> Array | int:
    """Static int kept count for host numbers; a traced int32 for jax.Array keep fractions.

    A jax.Array keep fraction (traced or not: eager and jitted calls must agree) is turned
    into a count on device, in the array's own precision. With a float64 array (x64
    enabled) that is exactly the host formula. With float32 it can differ by ONE entry
    from the Python-float count whenever (1 - k) n lies within float32 rounding of an
    integer, because float32(k) is not float64(k): e.g. (n, k) = (180, 0.3) keeps 54 with
    jnp.float32(0.3) but 55 with 0.3 (the float64 rule); about 7 % of (layer size,
    k = 0.05 ... 0.95) pairs differ. For the exact float64 count pass a Python float (the
    layers do) or a float64 array. Exact float64 emulation on device is not attempted:
    XLA rewrites x / c into x * (1 / c), and TPUs have no IEEE float64.
    """
    if not isinstance(keep_fraction, jax.Array):
        return kept_count(n, validate_keep_fraction(keep_fraction))
    k = keep_fraction
    if not jnp.issubdtype(k.dtype, jnp.floating):
        k = k.astype(jnp.float32)
    # Clamped to [1, n] so the mask is never empty (a traced value cannot raise).
    kept = n - jnp.floor((1.0 - k) * n).astype(jnp.int32)
    return jnp.clip(kept, 1, n)


# ---------------------------------------------------------------------------
# Rules


def topk(scores: Array, keep_fraction) -> tuple[Array, Array | int]:
    """(mask, count) of the layerwise rule: the kept_for(n, keep_fraction) largest |scores|."""
    kept = kept_for(scores.size, keep_fraction)
    return select.topk_mask(jnp.abs(jax.lax.stop_gradient(scores)), kept), kept


def above_threshold(scores: Array, threshold) -> tuple[Array, Array]:
    """(mask, count) of the global rule in one layer: |scores| > threshold (strict). A layer
    that keeps nothing gets count 1, so alpha = 0 (the reference yields 0/0 = NaN)."""
    tau = jax.lax.stop_gradient(jnp.asarray(threshold, scores.dtype))
    mask = jnp.abs(jax.lax.stop_gradient(scores)) > tau
    return mask, jnp.maximum(jnp.sum(mask.astype(scores.dtype)), 1.0)


@dataclasses.dataclass(frozen=True)
class TopK:
    """Layerwise pruning, each layer searching its own scores (or reading the mask the
    training step precomputed for it)."""

    def layer_mask(self, layer, scores: Array, keep_fraction: float):
        """(mask, count) of ``layer`` (a Flax module, for its variables); the count is the
        layer's entry of the ``kept`` collection when one is given."""
        given = layer.has_variable(KEPT, "count")
        kept = (layer.get_variable(KEPT, "count") if given
                else kept_count(scores.size, keep_fraction))
        if layer.has_variable(MASKS, "mask"):
            # Handed in by the training step (BatchedTopK.precompute); only read, never
            # created at init. Same kept set, found for all layers at once.
            return layer.get_variable(MASKS, "mask"), kept
        if given:
            return select.topk_mask(jnp.abs(jax.lax.stop_gradient(scores)), kept), kept
        return topk(scores, keep_fraction)

    def precompute(self, params, keep_fraction: float, counts: Any = None) -> dict:
        """Variables to add before ``model.apply``: none, the layers search themselves."""
        del params, keep_fraction, counts
        return {}


@dataclasses.dataclass(frozen=True)
class BatchedTopK(TopK):
    """Layerwise pruning with the masks of all layers found at once before the forward
    pass (``select_many.topk_masks`` with ``method``) and handed to the layers."""

    method: str = DEFAULT_METHOD
    block: int = BLOCK

    def __post_init__(self):
        select_many.check_method(self.method)

    def precompute(self, params, keep_fraction: float, counts: Any = None) -> dict:
        """``{"masks": ...}``: a bool mask for every ``scores`` leaf of ``params``, keeping
        the counts of ``keep_fraction`` or those of the ``kept`` collection ``counts``."""
        found = params_masks(jax.lax.stop_gradient(params), keep_fraction, self.method,
                             self.block, counts)
        return {MASKS: found} if found else {}


@dataclasses.dataclass(frozen=True)
class GlobalThreshold:
    """Global pruning: the layer keeps |s| > tau, tau read from the ``pruning`` collection
    (-inf, i.e. everything kept, until the training step sets it)."""

    def layer_mask(self, layer, scores: Array, keep_fraction: float):
        del keep_fraction  # decided network-wide by tau
        tau = layer.variable(PRUNING_COLLECTION, "threshold", lambda: jnp.array(-jnp.inf))
        return above_threshold(scores, tau.value)

    def precompute(self, params, keep_fraction: float, counts: Any = None) -> dict:
        """Nothing: tau depends on the kept count of the ramp, which the training state holds
        (the step writes it with ``global_threshold_for_count``)."""
        del params, keep_fraction, counts
        return {}


def rule_for_pruning(pruning: str):
    """The rule a layer receives for the model option ``pruning``."""
    if pruning == "layerwise":
        return TopK()
    if pruning == "global":
        return GlobalThreshold()
    raise ValueError(f"unknown pruning {pruning!r}; valid values: {', '.join(PRUNING)}")


def resolve_mask_impl(mask_impl: str, backend: str | None = None) -> str:
    """``mask_impl`` with "auto" resolved: batched on GPU, per_layer on CPU/TPU (measured:
    on XLA:CPU the batched path is 2-3x slower; TPU unmeasured)."""
    if mask_impl not in MASK_IMPLS:
        raise ValueError(f"mask_impl must be one of {', '.join(MASK_IMPLS)}; got {mask_impl!r}")
    if mask_impl == "auto":
        backend = jax.default_backend() if backend is None else backend
        return "batched" if backend == "gpu" else "per_layer"
    return mask_impl


def rule_from_config(mode: str, pruning: str, mask_impl: str = "auto",
                     mask_method: str = DEFAULT_METHOD):
    """The training step's rule from the config values (mask_impl resolved here): the
    same kept sets whatever the implementation, so none of this enters checkpoints."""
    rule = rule_for_pruning(pruning)
    if (isinstance(rule, TopK) and mode in ("biprop", "edgepopup")
            and resolve_mask_impl(mask_impl) == "batched"):
        return BatchedTopK(mask_method)
    return rule


# ---------------------------------------------------------------------------
# All layers at once (the batched implementation of TopK)


def check_method(method: str) -> str:
    """A valid ``mask_method`` (see ``select_many.check_method``), else a ValueError."""
    return select_many.check_method(method)


def takes_traced_counts(method: str) -> bool:
    """Whether the batched ``method`` also finds the masks of counts given as data (a
    ``kept`` collection): every built-in one; not the benchmarks' registered variants."""
    return select_many.is_builtin(select_many.check_method(method))


def layer_masks(scores: Any, keep_fraction: float, method: str = "compare",
                block: int = BLOCK) -> Any:
    """Boolean top-k masks of every leaf of the pytree ``scores`` (same structure).

    Each leaf keeps ``kept_count(leaf.size, keep_fraction)`` entries with the largest
    |scores|, ties to the lowest flat indices: leaf for leaf identical to
    ``select.topk_mask(jnp.abs(leaf), kept)``. ``keep_fraction`` is a Python float (static;
    the layerwise keep fraction never changes during a run). No gradient flows to the
    scores. ``method``: "compare" ("compare<D>" picks D-bit digits, default 4),
    "radix_many" (scatter histograms), "per_layer".
    """
    check_method(method)
    keep_fraction = validate_keep_fraction(keep_fraction)
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int; got {block!r}")
    leaves, treedef = jax.tree.flatten(scores)
    if not leaves:
        return scores
    for x in leaves:
        if not jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) or jnp.size(x) == 0:
            raise ValueError(f"layer_masks expects non-empty float score arrays; got "
                             f"{jnp.asarray(x).dtype}{tuple(jnp.shape(x))}")
    leaves = [jnp.asarray(x) for x in leaves]
    ks = [kept_count(int(np.prod(x.shape)), keep_fraction) for x in leaves]
    return jax.tree.unflatten(treedef, select_many.topk_masks(leaves, ks, method, block))


def score_paths(params: Any) -> list[tuple]:
    """Key paths (tuples of dict keys) of the ``scores`` leaves of a Flax params tree: the
    prunable layers (the one place that finds them for the batched masks)."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [tuple(getattr(k, "key", k) for k in path) for path, _ in flat
            if getattr(path[-1], "key", None) == "scores"]


def _at(tree: Any, path: Sequence) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _layer_tree(paths: Sequence[tuple], leaf_name: str, values: Sequence) -> dict:
    """{layer path: {leaf_name: value}} for the ``scores`` paths of a params tree."""
    out: dict = {}
    for path, value in zip(paths, values):
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[leaf_name] = value
    return out


def params_masks(params: Any, keep_fraction: float, method: str = "compare",
                 block: int = BLOCK, counts: Any = None) -> dict:
    """The ``masks`` collection for ``model.apply``: for every ``params[...]["scores"]`` a
    bool ``masks[...]["mask"]`` (layer_masks of all of them together). {} if none.
    ``counts``: a ``kept`` collection (``kept_counts``) whose counts, possibly traced,
    replace those of ``keep_fraction``."""
    paths = score_paths(params)
    if not paths:
        return {}
    leaves = [_at(params, path) for path in paths]
    if counts is None:
        found = layer_masks(leaves, keep_fraction, method, block)
    else:
        check_method(method)
        ks = [_at(counts, path[:-1])["count"] for path in paths]
        found = select_many.topk_masks([jnp.asarray(x) for x in leaves], ks, method, block)
    return _layer_tree(paths, "mask", found)


def kept_counts(params: Any, keep_fraction: float) -> dict:
    """The ``kept`` collection of ``keep_fraction``: for every ``params[...]["scores"]`` an
    int32 ``kept[...]["count"]`` = ``kept_count(n, keep_fraction)`` (float64, on the host).
    {} if the params hold no scores."""
    paths = score_paths(params)
    return _layer_tree(paths, "count", [
        np.int32(kept_count(math.prod(np.shape(_at(params, path))), keep_fraction))
        for path in paths])


# ---------------------------------------------------------------------------
# Global pruning: one threshold over all layers


def global_kept_count(total: int, keep_fraction: float) -> int:
    """Entries kept network-wide: N - floor((1 - k) N), float64 on the host."""
    return kept_count(total, keep_fraction)


def _total_size(score_leaves: Sequence[Array]) -> int:
    if not score_leaves:
        raise ValueError("global_threshold needs at least one score array, got none")
    return sum(math.prod(jnp.shape(s)) for s in score_leaves)


def global_threshold(score_leaves: Sequence[Array], keep_fraction) -> Array:
    """One threshold tau over the |scores| of all layers.

    tau = z[p - 1] with z the ascending |scores| of every layer and p = floor((1 - k) N)
    the number of pruned entries; layers then keep |s| > tau (strict). keep_fraction == 1
    returns -inf (nothing pruned; the reference's p = 0 case pruned everything, a bug).
    ``keep_fraction`` may be a Python float or a traced scalar (for the ramp schedule; a
    float32 one can miss the float64 count by one entry, see ``kept_for``: for exact
    counts compute them on the host and call ``global_threshold_for_count``, as training
    does). No gradient flows through tau.
    """
    check_keep_fraction(keep_fraction)
    total = _total_size(score_leaves)
    return global_threshold_for_count(score_leaves, kept_for(total, keep_fraction))


def global_threshold_for_count(score_leaves: Sequence[Array], kept) -> Array:
    """tau of the global rule for a network-wide kept count ``kept`` = N - p (a Python int,
    or an int32 scalar array so that a changing count does not recompile; clamped to
    [1, N])."""
    total = _total_size(score_leaves)
    if isinstance(kept, (int, np.integer)) and not 1 <= kept <= total:
        raise ValueError(f"kept must be in [1, {total}] (entries kept network-wide), got {kept}")
    with jax.named_scope(SCOPE_MASK):
        z = jnp.concatenate([jnp.abs(jax.lax.stop_gradient(s)).reshape(-1)
                             for s in score_leaves])
        if isinstance(kept, (int, np.integer)):
            if kept == total:
                return jnp.array(-jnp.inf, z.dtype)
            # the p-th smallest = the (kept+1)-th largest
            return select.kth_largest(z, int(kept) + 1)
        kept = jnp.clip(jnp.asarray(kept, jnp.int32), 1, total)
        tau = select.kth_largest(z, jnp.minimum(kept + 1, total))
        return jnp.where(kept == total, -jnp.inf, tau).astype(z.dtype)


def global_keep_schedule(epoch: int, final_keep_fraction: float, ramp_epochs: int = 10,
                         current: float | None = None) -> float:
    """Keep fraction k_t at the start of ``epoch`` under the global-pruning ramp.

    If the final keep fraction p <= 0.5, k_t decays cubically from 0.5 at epoch 0 to p at
    ``ramp_epochs``: k_t = p + (0.5 - p) (1 - e / E_p)^3. If p > 0.5 no ramp applies.
    (The reference keys the condition on the mutated current value; for p <= 0.5 the
    current value is always <= 0.5 so both readings agree.)
    """
    p = validate_keep_fraction(final_keep_fraction)
    if ramp_epochs <= 0 or p > 0.5:
        return p
    if epoch >= ramp_epochs:
        return p
    if current is not None and current > 0.5:
        return current
    decay = (1.0 - epoch / ramp_epochs) ** 3
    return p + (0.5 - p) * decay
