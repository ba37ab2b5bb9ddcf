"""The training step's warm-started masks (``mask_method="warm"``): every step's top-k search
starts from the previous step's thresholds, which the training state carries.

The kept sets are exactly those of every other mask method (``mpt_jax.select_band``: the
previous thresholds only decide how fast the search is), so the carried values are a
hint, not training state: a run resumed from a checkpoint (which does not save them), or
the first step, starts from none and runs the full search once.

What the state carries (``TrainState.mask_state``), a dict of int32 arrays:

* ``thresholds``: (L,) the k-th largest |score| code (float32 bit pattern) of every
  prunable layer, in ``masks.score_paths`` order, 0 = none yet;
* ``band_steps``: how many steps the band search served all layers (the rest ran the
  full search): read it after a benchmark to see how often the warm start paid off.

* ``uses_carried_state(config)``: whether the config's mask rule carries state;
* ``initial_state(params)``: the state before the first step;
* ``step_masks(params, carried, keep_fraction, block)``: (the ``masks`` collection for
  ``model.apply``, the new state).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mpt_jax import masks, select_band

METHOD = "warm"


def uses_carried_state(config) -> bool:
    """True when the training step's rule is the warm-started batched search."""
    rule = masks.rule_from_config(config.mode, config.get("pruning", "layerwise"),
                                  config.get("mask_impl", "auto"),
                                  config.get("mask_method", masks.DEFAULT_METHOD))
    return isinstance(rule, masks.BatchedTopK) and rule.method == METHOD


def _leaves(params: Any, paths: list[tuple]) -> list:
    out = []
    for path in paths:
        node = params
        for key in path:
            node = node[key]
        out.append(node)
    return out


def initial_state(params: Any) -> dict:
    """No previous thresholds yet (zeros: the band search will miss and run the full one)."""
    num = len(masks.score_paths(params))
    return dict(thresholds=jnp.zeros((num,), jnp.int32), band_steps=jnp.zeros((), jnp.int32))


def step_masks(params: Any, carried: dict, keep_fraction: float,
               block: int = masks.BLOCK) -> tuple[dict, dict]:
    """(the ``masks`` collection: a bool mask for every ``scores`` leaf, the new carried
    state). The masks equal ``masks.params_masks(params, keep_fraction, ...)``'s."""
    paths = masks.score_paths(params)
    if not paths:
        return {}, carried
    leaves = _leaves(jax.lax.stop_gradient(params), paths)
    ks = [masks.kept_count(x.size, keep_fraction) for x in leaves]
    found, thresholds, in_band = select_band.warm_search(leaves, ks, carried["thresholds"],
                                                        block)
    out: dict = {}
    for path, m in zip(paths, found):
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node["mask"] = m
    new = dict(thresholds=thresholds,
               band_steps=carried["band_steps"] + in_band.astype(jnp.int32))
    return out, new
