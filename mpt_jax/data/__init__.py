"""Datasets for mpt_jax (PREAMBLE "Data" contract; SPEC 6.5).

    ds = get_dataset(config, mesh)
    for batch in ds.train_batches(epoch, start_step): ...   # dict(image, label), global arrays
    for batch in ds.eval_batches(): ...                     # dict(image, label, mask)

Sources (all feed the same in-memory, on-device pipeline except ImageNet):
  digits        scikit-learn's 8x8 digits, embedded (no files, no network); last 20 % per class held out.
  cifar10       an image-folder tree / .tar(.gz) archive given by data_dir (e.g.
                ../shared/data/cifar10_train_jpeg.tar.gz), or tensorflow-datasets arrays
                (input_pipeline="tfds", or "auto" without an image-folder data_dir).
  mnist         as cifar10 (tfds, or an image folder of grayscale images).
  image_folder  any image-folder tree / archive (data_dir).
  imagenet2012  tf.data through tfds; data_dir = the tfds data dir, the ILSVRC2012 tars in it or
                in its downloads/manual (imagenet.py).
Eval split: the real test split when the source has one; otherwise the last holdout_per_class
images of every class of the training split (eval_split_name says which).
Decoded image folders are cached as .npz under config.cache_dir (default ~/.cache/mpt_jax; ""
disables the cache), keyed by the archive's path, size and mtime (a tree: every file's).
TensorFlow is imported only inside the tfds / ImageNet functions, never by `import mpt_jax`.
"""
from __future__ import annotations

import os

from mpt_jax.data import augment, image_folder, sources
from mpt_jax.data.errors import DataError, DataNotFoundError
from mpt_jax.data.in_memory import InMemoryDataset, check_batch_size
from mpt_jax.data.sources import ArraySource

DATASETS = ("digits", "cifar10", "mnist", "imagenet2012", "image_folder")
INPUT_PIPELINES = ("auto", "in_memory", "tfds")

__all__ = ["get_dataset", "load_source", "InMemoryDataset", "ArraySource", "DataError",
           "DataNotFoundError", "DATASETS", "INPUT_PIPELINES", "check_batch_size", "augment",
           "image_folder", "sources"]


def _get(config, field, default):
    return config.get(field, default) if hasattr(config, "get") else getattr(config, field, default)


def _is_image_folder(path: str) -> bool:
    path = os.path.expanduser(path)
    return image_folder.is_archive(path) or os.path.isfile(path) or os.path.isdir(
        os.path.join(path, "train"))


def load_source(config) -> ArraySource:
    """The host-memory arrays for a small dataset, chosen by config.dataset / data_dir /
    input_pipeline (see the module docstring)."""
    name = _get(config, "dataset", "digits")
    data_dir = _get(config, "data_dir", "") or ""
    pipeline = _get(config, "input_pipeline", "auto")
    holdout = int(_get(config, "holdout_per_class", 0) or 0)
    cache_dir = _get(config, "cache_dir", image_folder.DEFAULT_CACHE_DIR) or None
    if name not in DATASETS:
        raise DataError(f"dataset={name!r} is unknown; choose one of {', '.join(DATASETS)}")
    if pipeline not in INPUT_PIPELINES:
        raise DataError(f"input_pipeline={pipeline!r} is unknown; choose one of "
                         f"{', '.join(INPUT_PIPELINES)}")
    if name == "digits":
        return sources.load_digits()
    if name == "imagenet2012":
        raise DataError("imagenet2012 is too large for the in-memory pipeline; use "
                         "--config.input_pipeline=tfds (or auto)")
    if name == "image_folder" or (pipeline != "tfds" and data_dir and _is_image_folder(data_dir)):
        if not data_dir:
            raise DataNotFoundError("dataset=image_folder needs --config.data_dir (an image-folder root "
                                    "or a .tar/.tar.gz archive)")
        return image_folder.load_image_folder(data_dir, name=name, holdout_per_class=holdout,
                                              cache_dir=cache_dir)
    if data_dir and not os.path.exists(os.path.expanduser(data_dir)):
        raise DataNotFoundError(f"{data_dir}: no such archive or directory; check --config.data_dir")
    # tfds arrays: the real test split is the eval split.
    return sources.load_tfds_arrays(name, data_dir or None)


def get_dataset(config, mesh):
    """The dataset object of the PREAMBLE contract for `config` on `mesh` (axis "data")."""
    batch_size = int(_get(config, "batch_size", 128))
    eval_batch_size = int(_get(config, "eval_batch_size", 0) or batch_size)
    if _get(config, "dataset", "digits") == "imagenet2012":
        if _get(config, "input_pipeline", "auto") == "in_memory":
            raise DataError("input_pipeline='in_memory' cannot hold imagenet2012; use 'tfds' or 'auto'")
        from mpt_jax.data import imagenet  # pylint: disable=g-import-not-at-top
        return imagenet.ImageNetDataset(config, mesh)
    # Check the batch before any decoding so a bad config fails at once.
    check_batch_size(batch_size, mesh, "batch_size")
    check_batch_size(eval_batch_size, mesh, "eval_batch_size")
    source = load_source(config)
    return InMemoryDataset(source, mesh, batch_size=batch_size, eval_batch_size=eval_batch_size,
                           seed=int(_get(config, "seed", 0)), augment=bool(_get(config, "augment",
                                                                                    True)))
