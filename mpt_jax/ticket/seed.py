"""Seed mode: the frozen random weights are not stored but drawn again from the PRNG key the
run gave ``model.init``.

A "seed" ticket records the key (its data, the PRNG implementation, the
``jax_threefry_partitionable`` setting and the JAX version) and, per layer, the sha256 of
the kept sign bits. Loading regenerates W with the same jitted ``model.init`` as training
and refuses the ticket when the kept signs differ (another JAX version may draw other
numbers from the same key); a ticket written with mode "signs" stores the bits instead.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax.models import probe
from mpt_jax.ticket.core import LayerTicket, TicketError, build_model, flatten_variables, \
    options_key, stored_options


def run_init_key(seed: int):
    """The key training gives ``model.init`` for ``config.seed``: ``split(PRNGKey(seed))[0]``
    (mpt_jax.train creates the train state with it; keep the two in sync)."""
    return jax.random.split(jax.random.PRNGKey(int(seed)))[0]


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
    training creates its state; the compiled function is cached per model. A raw uint32 key
    is wrapped as a typed key of the default PRNG (the same random stream), so that the
    training key and the key a seed ticket rebuilds share one compiled init."""
    if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    cache_key = options_key(model_name, model_opts, image_shape)
    fn = _INIT_CACHE.get(cache_key)
    if fn is None:
        model = build_model(model_name, stored_options(model_opts))
        dummy = probe.dummy_images(tuple(image_shape))
        fn = _INIT_CACHE[cache_key] = jax.jit(
            lambda k: model.init({"params": k}, dummy, train=False))
    return fn(key)


def check_layer_shapes(model_name, model_opts, image_shape, init: Mapping[str, Any],
                       layers: Sequence[LayerTicket]) -> None:
    """Refuses a seed ticket whose model (from its options) has other prunable weight shapes
    than its layers, without drawing anything (``jax.eval_shape``): a forged manifest cannot
    make the regeneration allocate more than the file's masks describe."""
    key = _key_from_info(init)
    model = build_model(model_name, stored_options(model_opts))
    dummy = jax.ShapeDtypeStruct((1, *tuple(image_shape)), jnp.float32)
    shapes = jax.eval_shape(lambda k, x: model.init({"params": k}, x, train=False), key, dummy)
    flat = flatten_variables(shapes.get("frozen", {}))
    for lt in layers:
        w = flat.get(lt.path + ("weight",))
        if w is None or tuple(w.shape) != lt.shape:
            raise TicketError(f"the model of the manifest has no layer {lt.name} of shape "
                              f"{lt.shape} (its options do not match the stored masks)")


def regenerate_frozen(model_name, model_opts, image_shape, init: Mapping[str, Any]):
    """The frozen random weights ``model.init`` draws from the recorded key (``key_info``),
    under the recorded ``jax_threefry_partitionable`` setting."""
    key = _key_from_info(init)
    with jax.threefry_partitionable(bool(init.get("threefry_partitionable", True))):
        variables = init_variables(model_name, model_opts, image_shape, key)
    return variables.get("frozen", {})


def check_regenerated(layers: Sequence[LayerTicket], frozen, hashes: Mapping[str, str],
                      init: Mapping[str, Any]) -> list[LayerTicket]:
    """``layers`` with the signs of the regenerated weights ``frozen``, after checking that
    the kept signs hash to the recorded ``hashes`` (by layer name)."""
    flat_f = flatten_variables(frozen)
    out = []
    for lt in layers:
        w = flat_f.get(lt.path + ("weight",))
        if w is None or tuple(w.shape) != lt.shape:
            raise TicketError(f"regenerated weights have no layer {lt.name} of shape {lt.shape}")
        new = dataclasses.replace(lt, signs=np.asarray(w) > 0)
        if new.signs_sha256() != hashes[lt.name]:
            raise TicketError(
                f"regenerating the random weights of layer {lt.name} from the recorded seed "
                f"gives different signs (ticket written with JAX {init.get('jax_version')}, PRNG "
                f"{init.get('impl')}, threefry_partitionable={init.get('threefry_partitionable')};"
                f" this is JAX {jax.__version__}); use a ticket exported with mode='signs'")
        out.append(new)
    return out
