"""Data parallelism with ``jax.jit`` over a device mesh, not ``jax.pmap``
(docs/decisions.md#data-parallelism).

One code path from one CPU to many GPUs / TPU cores / hosts: the training state is replicated
(``P()``), batches are sharded along the mesh axis "data" (``P('data')``) and XLA inserts the
gradient all-reduce. BatchNorm statistics are global-batch statistics
(docs/decisions.md#batchnorm).
Multi-host: ``maybe_initialize_distributed()`` calls ``jax.distributed.initialize()`` when the
environment asks for it; each host then feeds only its own shard of every global batch
(``host_batch_to_global``).
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "MPT_JAX_MULTIHOST")


def maybe_initialize_distributed(force: bool = False) -> bool:
    """Calls ``jax.distributed.initialize()`` for multi-host runs; returns whether it did.

    Triggered by ``force`` (the ``--multihost`` flag) or by ``JAX_COORDINATOR_ADDRESS`` /
    ``MPT_JAX_MULTIHOST=1`` in the environment. With JAX_COORDINATOR_ADDRESS, the process
    count and id come from JAX_NUM_PROCESSES / JAX_PROCESS_ID; on TPU pods and SLURM /
    Open MPI clusters ``initialize()`` discovers them itself.
    """
    wanted = force or any(os.environ.get(k) for k in _DISTRIBUTED_ENV)
    if not wanted:
        return False
    kwargs = {}
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
        if os.environ.get("JAX_NUM_PROCESSES"):
            kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
        if os.environ.get("JAX_PROCESS_ID"):
            kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    return True


def make_mesh(devices=None) -> Mesh:
    """1-D mesh over all devices (of all hosts) with axis "data"."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over "data"."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh: Mesh):
    """Places every leaf of ``tree`` on every device of ``mesh`` (same value everywhere)."""
    return jax.device_put(tree, replicated(mesh))


def host_batch_to_global(batch, mesh: Mesh):
    """Turns this host's slice of a global batch (numpy arrays) into global sharded arrays.

    Single host: the slice is the whole batch. Multi-host: every host passes its own
    consecutive slice of global_batch / process_count rows.
    """
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is True on any (a collective: all processes must call
    it at the same point). Used to stop all hosts together when one receives SIGTERM."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils  # noqa: PLC0415
    flags = multihost_utils.process_allgather(np.asarray([flag], np.int32))
    return bool(np.any(flags))


def to_host(tree):
    """Fetches arrays to numpy on every host.

    Replicated arrays (the training state, step metrics) are read from a local replica, which
    also works on multi-host meshes where they are not fully addressable; sharded ones are
    gathered across processes.
    """
    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            from jax.experimental import multihost_utils  # noqa: PLC0415
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x) if isinstance(x, jax.Array) else x
    return jax.tree.map(fetch, tree)
