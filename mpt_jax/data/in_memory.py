"""The in-memory, on-device pipeline for small datasets (digits, MNIST, CIFAR-10, image folders).

The uint8 dataset is placed on every device of the mesh once (replicated: every host loads the
same arrays, so this also works multi-host). One jitted function per batch gathers the examples
of a step from the epoch's permutation, augments them (augment.py), normalises them and returns
a GLOBAL batch sharded over mesh axis "data" -- no host round trip per step. CIFAR-10 is
150 MB as uint8, small enough for any accelerator.
"""
from __future__ import annotations

import math
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mpt_jax.data import augment as aug
from mpt_jax.data.sources import ArraySource
from mpt_jax.errors import ConfigError, DataError

DATA_AXIS = "data"


def data_axis_size(mesh) -> int:
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh axes {mesh.axis_names} have no {DATA_AXIS!r} axis; build the mesh "
                         f"with jax.make_mesh((n,), ('data',))")
    return mesh.shape[DATA_AXIS]


def check_batch_size(batch_size: int, mesh, field: str = "batch_size"):
    """A global batch must split evenly over the devices of the mesh's data axis."""
    n = data_axis_size(mesh)
    if batch_size <= 0 or batch_size % n:
        fix = max(n, math.ceil(max(batch_size, 1) / n) * n)
        raise ConfigError(f"{field}={batch_size} is not a positive multiple of the {n} devices "
                          f"on the mesh's 'data' axis; set --config.{field} to a multiple of {n} "
                          f"(e.g. {fix})")


def replicate(x: np.ndarray, mesh):
    """Places a host array on every device of the mesh (works when every process has the same x)."""
    sharding = NamedSharding(mesh, P())
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


class InMemoryDataset:
    """The dataset object of get_dataset over an ArraySource held on every device."""

    def __init__(self, source: ArraySource, mesh, *, batch_size: int, eval_batch_size: int,
                 seed: int, augment: bool = True):
        check_batch_size(batch_size, mesh, "batch_size")
        check_batch_size(eval_batch_size, mesh, "eval_batch_size")
        num_train = len(source.train_labels)
        if num_train < batch_size:
            raise DataError(f"batch_size={batch_size} is larger than the {num_train} training "
                            f"images of {source.name}; use a smaller --config.batch_size")
        if len(source.eval_labels) == 0:
            raise DataError(f"{source.name}: the eval split is empty")
        self.name = source.name
        self.class_names = tuple(source.class_names)
        self.num_classes = len(self.class_names)
        self.image_shape = tuple(source.image_shape)
        self.num_train = num_train
        self.num_eval = len(source.eval_labels)
        self.eval_split_name = source.eval_split_name
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        # The last partial batch is dropped, as the reference does.
        self.steps_per_epoch = num_train // batch_size
        self.eval_steps = math.ceil(self.num_eval / eval_batch_size)
        self.seed = int(seed)
        self.mean, self.std = tuple(source.mean), tuple(source.std)
        self.augment = bool(augment) and source.augment_policy == "pad_crop_flip"
        self.mesh = mesh
        self.batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
        self._train = (replicate(source.train_images, mesh), replicate(source.train_labels, mesh))
        self._eval = (replicate(source.eval_images, mesh), replicate(source.eval_labels, mesh))
        self._permutation = jax.jit(
            lambda epoch: aug.train_permutation(self.seed, epoch, num_train),
            out_shardings=NamedSharding(mesh, P()))
        self.train_batch_fn = jax.jit(self._make_train_batch, out_shardings=self.batch_sharding)
        self.eval_batch_fn = jax.jit(self._make_eval_batch, out_shardings=self.batch_sharding)

    # Pure batch builders (traced once; epoch and step are traced ints, so no retracing).
    def _make_train_batch(self, images, labels, perm, epoch, step):
        idx = jax.lax.dynamic_slice_in_dim(perm, step * self.batch_size, self.batch_size)
        x = images[idx]
        if self.augment:
            key = aug.augment_key(self.seed, epoch, step)
            dy, dx, flip = aug.augment_params(key, self.batch_size)
            x = aug.pad_crop_flip(x, dy, dx, flip)
        return dict(image=aug.normalize(x, self.mean, self.std), label=labels[idx])

    def _make_eval_batch(self, images, labels, step):
        idx = step * self.eval_batch_size + jnp.arange(self.eval_batch_size)
        mask = idx < self.num_eval
        idx = jnp.minimum(idx, self.num_eval - 1)  # padding rows repeat the last example, mask 0
        return dict(image=aug.normalize(images[idx], self.mean, self.std), label=labels[idx],
                    mask=mask.astype(jnp.float32))

    def train_indices(self, epoch: int) -> np.ndarray:
        """The epoch's order as a host array (for inspection and tests)."""
        return np.asarray(jax.device_get(self._permutation(epoch)))

    def train_batches(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        """Global batches of one epoch from start_step; a pure function of (seed, epoch, step)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step={start_step} outside [0, {self.steps_per_epoch}]")
        perm = self._permutation(epoch)
        images, labels = self._train
        for step in range(start_step, self.steps_per_epoch):
            yield self.train_batch_fn(images, labels, perm, epoch, step)

    def train_batch_shapes(self) -> dict:
        """ShapeDtypeStructs (with the batch sharding) of every training batch."""
        images, labels = self._train
        perm = jax.eval_shape(self._permutation, 0)
        return self._sharded(jax.eval_shape(self._make_train_batch, images, labels, perm, 0, 0))

    def eval_batch_shapes(self) -> dict:
        """ShapeDtypeStructs (with the batch sharding) of every eval batch (all have one shape)."""
        return self._sharded(jax.eval_shape(self._make_eval_batch, *self._eval, 0))

    def _sharded(self, shapes):
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.batch_sharding), shapes)

    def eval_batches(self) -> Iterator[dict]:
        """Every eval example exactly once; the last batch is padded (mask 0 on padding rows)."""
        images, labels = self._eval
        for step in range(self.eval_steps):
            yield self.eval_batch_fn(images, labels, step)

    def __repr__(self):
        return (f"InMemoryDataset({self.name}: {self.num_train:,} train, {self.num_eval:,} eval "
                f"[{self.eval_split_name}], image {self.image_shape}, {self.num_classes} classes, "
                f"augment={self.augment})")
