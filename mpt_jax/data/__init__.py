"""Datasets for mpt_jax: one call gives the training and evaluation batches of a config.

    ds = get_dataset(config, mesh)
    for batch in ds.train_batches(epoch, start_step): ...   # dict(image, label), global arrays
    for batch in ds.eval_batches(): ...                     # dict(image, label, mask)

The datasets and their facts (image shape, classes, normalisation, split rule, where they are
read from) are the entries of registry.py; ``registry.names()`` lists them. Everything but
ImageNet feeds the same in-memory, on-device pipeline (in_memory.py) from an array source
(sources.py: the embedded digits, tensorflow-datasets arrays; image_folder.py: image-folder
trees and archives); ImageNet streams through tf.data (imagenet.py).
Decoded image folders are cached as .npz under config.cache_dir (default ~/.cache/mpt_jax; ""
disables the cache), keyed by the archive's path, size and mtime (a tree: every file's).
TensorFlow is imported only inside the tfds / ImageNet functions, never by `import mpt_jax`.
"""
from __future__ import annotations

import os

from mpt_jax.data import augment, image_folder, imagenet, registry, sources
from mpt_jax.data.in_memory import InMemoryDataset, check_batch_size
from mpt_jax.data.sources import ArraySource
from mpt_jax.errors import DataError, DataNotFoundError

__all__ = ["get_dataset", "data_seed", "load_source", "InMemoryDataset", "ArraySource", "DataError",
           "DataNotFoundError", "check_batch_size", "augment", "image_folder", "registry",
           "sources"]


def _get(config, field, default):
    return config.get(field, default) if hasattr(config, "get") else getattr(config, field,
                                                                             default)


def load_source(config) -> ArraySource:
    """The host-memory arrays of a dataset that fits in memory, chosen by config.dataset,
    data_dir and input_pipeline (the rule is in registry.py's docstring)."""
    info = registry.get(_get(config, "dataset", "digits"))
    data_dir = _get(config, "data_dir", "") or ""
    pipeline = _get(config, "input_pipeline", "auto")
    registry.check_pipeline(pipeline)
    if info.load is not None:
        return info.load()
    if info.streamed:
        raise DataError(f"{info.name} is too large for the in-memory pipeline; use "
                        f"--config.input_pipeline=tfds (or auto)")
    if info.folder and (info.tfds_name is None or (
            pipeline != "tfds" and data_dir and image_folder.is_image_folder(data_dir))):
        if not data_dir:
            raise DataNotFoundError(f"dataset={info.name} needs --config.data_dir (an "
                                    f"image-folder root or a .tar/.tar.gz archive)")
        return image_folder.load_image_folder(
            data_dir, name=info.name, holdout_per_class=int(_get(config, "holdout_per_class", 0)
                                                             or 0),
            cache_dir=_get(config, "cache_dir", image_folder.DEFAULT_CACHE_DIR) or None)
    if data_dir and not os.path.exists(os.path.expanduser(data_dir)):
        raise DataNotFoundError(f"{data_dir}: no such archive or directory; check "
                                f"--config.data_dir")
    return sources.load_tfds_arrays(info, data_dir or None)  # the real test split evaluates


def data_seed(config) -> int:
    """The seed of the data order and the augmentation: ``data_seed``, or ``seed`` when it is
    unset (so a run's data order follows its seed unless a member program shares one)."""
    value = _get(config, "data_seed", None)
    return int(_get(config, "seed", 0) if value is None else value)


def get_dataset(config, mesh):
    """The dataset object for `config` on `mesh` (batches sharded over mesh axis "data")."""
    info = registry.get(_get(config, "dataset", "digits"))
    if info.streamed:
        if _get(config, "input_pipeline", "auto") == "in_memory":
            raise DataError(f"input_pipeline='in_memory' cannot hold {info.name}; use 'tfds' or "
                            f"'auto' (set --config.input_pipeline=...)")
        return imagenet.ImageNetDataset(config, mesh)
    batch_size = int(_get(config, "batch_size", 128))
    eval_batch_size = int(_get(config, "eval_batch_size", 0) or batch_size)
    # Check the batch before any decoding so a bad config fails at once.
    check_batch_size(batch_size, mesh, "batch_size")
    check_batch_size(eval_batch_size, mesh, "eval_batch_size")
    source = load_source(config)
    return InMemoryDataset(source, mesh, batch_size=batch_size, eval_batch_size=eval_batch_size,
                           seed=data_seed(config),
                           augment=bool(_get(config, "augment", True)))
