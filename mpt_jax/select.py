"""Exact k-th largest value of a flat array: the threshold of the top-k score mask.

``kth_largest(values, k)`` returns the value of the k-th largest entry (1-based) of a
flat float array; ``k`` may be a Python int or a traced int32 scalar.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def kth_largest_sort(values: jax.Array, k) -> jax.Array:
    """Reference implementation: one ascending sort, then an index."""
    n = values.shape[0]
    ordered = jnp.sort(values)
    return jax.lax.dynamic_index_in_dim(ordered, n - jnp.asarray(k, jnp.int32), keepdims=False)


def kth_largest(values: jax.Array, k) -> jax.Array:
    return kth_largest_sort(values, k)
