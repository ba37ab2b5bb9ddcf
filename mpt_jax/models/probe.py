"""Which layers of a model are prunable, in the order the model calls them.

A variable tree is a dict, and pytrees sort dict keys ("conv10" before "conv2"), so the
tree alone loses the order in which the model calls its layers. Layer tables, ticket files
and the import of reference checkpoints (which list layers in call order) need that order.
It comes from tracing ``model.init`` with every layer call intercepted: an abstract
evaluation, no FLOPs and no memory.

``intercept_layers`` is the one Flax interceptor of the package: recording calls, reading
what a layer computes, or replacing a layer's computation all go through it.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mpt_jax import layers

PRUNABLE = (layers.BipropConv, layers.BipropDense)

# on_call(module, call, args, kwargs) -> the call's result (call(*args, **kwargs) to let
# the layer compute as usual).
OnCall = Callable[[nn.Module, Callable[..., Any], tuple, dict], Any]


def is_prunable(module: nn.Module) -> bool:
    """True for the layers that hold scores and a frozen random weight."""
    return isinstance(module, PRUNABLE)


def dummy_images(image_shape: Sequence[int]) -> jax.Array:
    """One all-zero float32 image batch of ``image_shape`` (H, W, C): enough to init."""
    return jnp.zeros((1, *image_shape), jnp.float32)


def abstract_variables(model: nn.Module, image_shape: Sequence[int]):
    """``model.init``'s variables as ``jax.ShapeDtypeStruct`` leaves (nothing computed)."""
    return jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                             dummy_images(image_shape), train=False))


@contextlib.contextmanager
def intercept_layers(on_call: OnCall, kinds: tuple[type, ...] = PRUNABLE,
                     method: str = "__call__") -> Iterator[None]:
    """Inside the block, every call of ``method`` on a module of ``kinds`` returns
    ``on_call(module, call, args, kwargs)``; other calls run unchanged."""
    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == method and isinstance(context.module, kinds):
            return on_call(context.module, next_fun, args, kwargs)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield


def prunable_layers(model: nn.Module, image_shape: Sequence[int],
                    kinds: tuple[type, ...] = PRUNABLE) -> list[tuple[str, ...]]:
    """Module paths of the model's prunable layers (or of its modules of ``kinds``) in the
    order of their first call, from an abstract init on images of ``image_shape``."""
    order: list[tuple[str, ...]] = []

    def record(module, call, args, kwargs):
        path = tuple(module.path)
        if path not in order:
            order.append(path)
        return call(*args, **kwargs)

    with intercept_layers(record, kinds):
        abstract_variables(model, image_shape)
    return order
