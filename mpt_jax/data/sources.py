"""Array sources for the in-memory pipeline: uint8 NHWC images, int32 labels, class names.

Every source returns an `ArraySource`; the in-memory pipeline (in_memory.py) only ever sees
this type, so the digits, tfds and image-folder sources are interchangeable. What each dataset
is (shape, classes, normalisation, split rule) is registry.py's; these functions read it.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
import socket
import threading
import urllib.parse
import urllib.request
from typing import Optional

import numpy as np

from mpt_jax.errors import DataError, DataNotFoundError
from mpt_jax.stages import stage

# Fraction of each digits class held out for evaluation (the last images of every class).
DIGITS_HOLDOUT_FRACTION = 0.2


@dataclasses.dataclass
class ArraySource:
    """A decoded dataset held in host memory.

    Attributes:
      name: dataset name (config.dataset).
      class_names: label i is class_names[i].
      train_images / eval_images: uint8 arrays (N, H, W, C).
      train_labels / eval_labels: int32 arrays (N,).
      eval_split_name: human-readable description of the eval split (printed with accuracies).
      mean / std: per-channel normalisation constants on the [0, 1] scale.
      augment_policy: "pad_crop_flip" (the CIFAR augmentation, augment.py) or "none".
    """
    name: str
    class_names: tuple
    train_images: np.ndarray
    train_labels: np.ndarray
    eval_images: np.ndarray
    eval_labels: np.ndarray
    eval_split_name: str
    mean: tuple
    std: tuple
    augment_policy: str = "none"

    @property
    def image_shape(self):
        return tuple(self.train_images.shape[1:])

    @property
    def num_classes(self):
        return len(self.class_names)


def channel_stats(images: np.ndarray):
    """Per-channel mean and std of uint8 images on the [0, 1] scale (float64 accumulation)."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant channel must not divide by zero
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def holdout_last_per_class(labels: np.ndarray, per_class: int):
    """Indices (train_idx, eval_idx) holding out the LAST `per_class` examples of each class.

    "Last" is in the order of `labels` (for image folders: sorted file names). Both index arrays
    keep the original order, so the split is a pure function of the data.
    """
    eval_mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if per_class >= len(idx):
            raise DataError(
                f"holdout_per_class={per_class} leaves no training images of class {int(c)} "
                f"({len(idx)} images); use a smaller holdout_per_class")
        eval_mask[idx[len(idx) - per_class:]] = True
    return np.flatnonzero(~eval_mask), np.flatnonzero(eval_mask)


def sklearn_digits_csv() -> Optional[str]:
    """The file scikit-learn's ``load_digits`` reads (inside the installed package), or None."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            return path
    return None


def _digits_arrays():
    """(images (1797, 8, 8) float64 with pixel values 0..16, labels 0..9), as scikit-learn's
    ``load_digits`` gives them. Read straight from its CSV when it is where scikit-learn keeps
    it: importing scikit-learn takes about a second, a third of a small run's start-up."""
    path = sklearn_digits_csv()
    if path is None:  # another layout of the package: ask scikit-learn itself
        from sklearn import datasets as sk_datasets  # noqa: PLC0415  (slow to import)

        digits = sk_datasets.load_digits()
        return digits.images, digits.target
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")  # 64 pixel values, then the label, per row
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def load_digits() -> ArraySource:
    """scikit-learn's 8x8 digits (1,797 images, ships inside scikit-learn: no files, no network).

    Pixel values 0..16 are scaled to uint8 0..255 (x * 255 / 16, rounded). The eval split is the
    last 20 % of every class (in the dataset's order), a fixed, stratified hold-out. No
    augmentation: flipping digits changes their meaning, and they are too small to crop.
    Normalisation uses the mean/std of the training split (computed, so there are no magic numbers).
    """
    raw_images, raw_labels = _digits_arrays()
    images = np.round(raw_images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = raw_labels.astype(np.int32)
    counts = np.bincount(labels)
    train_idx, eval_idx = [], []
    for c in range(len(counts)):
        idx = np.flatnonzero(labels == c)
        n_eval = int(round(DIGITS_HOLDOUT_FRACTION * len(idx)))
        train_idx.append(idx[:len(idx) - n_eval])
        eval_idx.append(idx[len(idx) - n_eval:])
    train_idx = np.sort(np.concatenate(train_idx))
    eval_idx = np.sort(np.concatenate(eval_idx))
    mean, std = channel_stats(images[train_idx])
    return ArraySource(
        name="digits",
        class_names=tuple(str(c) for c in range(len(counts))),
        train_images=images[train_idx], train_labels=labels[train_idx],
        eval_images=images[eval_idx], eval_labels=labels[eval_idx],
        eval_split_name=(f"held-out: last {DIGITS_HOLDOUT_FRACTION:.0%} per class of sklearn "
                         f"digits ({len(eval_idx):,} images)"),
        mean=mean, std=std, augment_policy="none")


# mpt_jax is installed from its checkout (it is not on PyPI): extras are `-e ".[tf]"` there.
TFDS_INSTALL_HINT = ("install TensorFlow Datasets with `pip install -e \".[tf]\"` in the "
                     "mpt_jax checkout, or set "
                     "--config.data_dir to an image-folder tree or .tar(.gz) archive "
                     "(e.g. ../shared/data/cifar10_train_jpeg.tar.gz)")


def import_tfds():
    """Imports tensorflow_datasets lazily (never at `import mpt_jax`) with a helpful error."""
    try:
        import tensorflow_datasets as tfds  # noqa: PLC0415  (only here: mpt_jax runs without it)
    except ImportError as e:
        raise DataError(f"tensorflow_datasets is not installed ({e}); "
                        f"{TFDS_INSTALL_HINT}") from None
    return tfds


# Examples per tf.data batch when reading a whole split into host memory (see _read_split).
_READ_BATCH = 10_000


def _read_split(tfds, builder, split):
    """All (images, labels) of a split as numpy arrays.

    Reads fixed-size batches and concatenates them instead of `batch_size=-1`: that asks the
    split metadata for the example count and, where it is missing (a mocked or partly written
    dataset), TensorFlow aborts the whole process (std::length_error) instead of raising.
    """
    images, labels = [], []
    for batch in tfds.as_numpy(builder.as_dataset(split=split, batch_size=_READ_BATCH)):
        images.append(np.asarray(batch["image"], np.uint8))
        labels.append(np.asarray(batch["label"], np.int32))
    if not labels:
        raise DataError(f"{builder.name}: the tfds split {split!r} in {builder.data_dir} is empty; "
                        f"delete that directory so tensorflow-datasets prepares it again")
    return np.concatenate(images), np.concatenate(labels)


def download_failed(name: str, data_dir, error: Exception) -> DataError:
    """The one-line error for a tfds dataset that is neither prepared nor downloadable."""
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return DataNotFoundError(
        f"{name}: tensorflow-datasets found no prepared copy in {data_dir} and could not download "
        f"it ({type(error).__name__}: {first_line}); without network, copy a prepared tfds "
        f"{name} directory into --config.data_dir, or set --config.data_dir to an image-folder "
        f"tree or .tar(.gz) archive (e.g. ../shared/data/cifar10_train_jpeg.tar.gz)")


# Seconds a download host has to accept a connection before the machine counts as offline.
PROBE_TIMEOUT_S = 3.0


def can_reach(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host`` (or to the HTTPS proxy, if one is set) opens
    within ``timeout`` seconds, name lookup included (in a thread: a lookup without a
    reachable name server ignores socket timeouts)."""
    proxy = urllib.request.getproxies().get("https")
    if proxy:
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = parts.hostname, parts.port or 80
    opened = []

    def connect():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                opened.append(True)
        except OSError:
            pass

    probe = threading.Thread(target=connect, name="network_probe", daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(opened)


def prepare_tfds(builder, info) -> None:
    """Makes sure the tfds copy of dataset ``info`` is on disk: nothing to do when the data
    dir holds it prepared; otherwise download and prepare it, once its download host was
    seen to answer (without network, tfds retries for minutes before it fails)."""
    if builder.is_prepared():
        return
    if info.download_host and not can_reach(info.download_host):
        raise download_failed(info.name, builder.data_dir, OSError(
            f"cannot connect to {info.download_host} within {PROBE_TIMEOUT_S:g} s: no network?"))
    with stage(f"downloading and preparing {info.name} with tensorflow-datasets into "
               f"{builder.data_dir}"):
        try:
            builder.download_and_prepare()
        except Exception as e:  # pylint: disable=broad-except  (requests.ConnectionError, ...)
            raise download_failed(info.name, builder.data_dir, e) from e


def load_tfds_arrays(info, data_dir: Optional[str] = None) -> ArraySource:
    """The train and test splits of a tensorflow-datasets dataset as numpy arrays.

    ``info`` is the dataset's registry entry (its tfds name, download host, normalisation
    and augmentation); the tfds test split is the eval split.
    """
    tfds = import_tfds()
    builder = tfds.builder(info.tfds_name,
                           data_dir=os.path.expanduser(data_dir) if data_dir else None)
    prepare_tfds(builder, info)
    with stage(f"reading {info.name} from tensorflow-datasets ({builder.data_dir})"):
        splits = {split: _read_split(tfds, builder, split) for split in ("train", "test")}
    class_names = tuple(builder.info.features["label"].names)
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    return ArraySource(name=info.name, class_names=class_names, train_images=train_x,
                       train_labels=train_y, eval_images=test_x, eval_labels=test_y,
                       eval_split_name=f"test ({len(test_y):,} images)", mean=info.mean,
                       std=info.std, augment_policy=info.augment_policy)


def held_out_name(per_class: int, total: int) -> str:
    """How accuracies name a split held out of train by ``holdout_last_per_class``."""
    return f"held-out: last {per_class:,} per class of train ({total:,} images)"
