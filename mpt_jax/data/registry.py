"""The datasets mpt_jax knows, one entry each: the one place that holds a dataset's facts.

    info = registry.get("cifar10")
    info.image_shape, info.num_classes, info.class_names, info.eval_split

Everything else asks this table: the valid values of ``config.dataset`` (config_fields), the
number of classes and the image shape known before any data is read (config validation, the
ticket tools), and the loaders of this package (which source to read, the normalisation, the
augmentation, the split).

Which copy of a dataset is read:
  * ``load`` (embedded data, no files): always that;
  * ``streamed`` (too large for memory): tf.data from tensorflow-datasets (imagenet.py);
  * otherwise an image-folder tree or .tar(.gz) archive in ``data_dir`` when ``folder`` is set and
    ``data_dir`` is one (or there is no ``tfds_name``), else tensorflow-datasets' arrays
    (``input_pipeline="tfds"`` forces tfds).
The entry's ``mean`` / ``std`` / ``augment_policy`` describe the dataset's own copy: tfds, the
embedded data, or an image folder that holds exactly ``class_names`` at ``image_shape`` (checked).
An image folder for an entry without ``class_names`` is normalised with its training split's
statistics, and its RGB images get the pad-crop-flip augmentation.

Adding a dataset that tensorflow-datasets or an image folder provides is one more entry in
``_ENTRIES`` (and a test in tests/test_data.py); embedded data also needs its loader.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from mpt_jax.data import sources
from mpt_jax.errors import DataError

# How the data is read: "in_memory" decodes it into device memory (the on-device pipeline),
# "tfds" reads tensorflow-datasets, "auto" picks by data_dir (see the module docstring).
INPUT_PIPELINES = ("auto", "in_memory", "tfds")

# The reference's constants (the customary ones of each dataset), on the [0, 1] scale.
CIFAR10_MEAN = (0.491, 0.482, 0.447)
CIFAR10_STD = (0.247, 0.243, 0.262)
MNIST_MEAN = (0.1307,)  # mean / std of the 60,000 MNIST training images
MNIST_STD = (0.3081,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The split rule of the datasets read from tfds or an image folder.
_TEST_OR_HOLDOUT = ("the test split where the copy has one (tfds; test/ in an image folder), "
                    "else the last holdout_per_class images of every class of train")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What mpt_jax knows about one dataset before reading it.

    Attributes:
      name: the value of ``config.dataset``.
      title: how messages name the dataset.
      summary: one line for ``--help`` and the docs.
      image_shape: (H, W, C) of the images the model sees; None: the image folder's own.
      num_classes: classifier outputs; None: the image folder's class count.
      eval_split: the default evaluation split, in words.
      class_names: the label order, where it is fixed; an image folder read for this dataset
        must hold exactly these classes (sorted folder names) at ``image_shape``.
      tfds_name: the tensorflow-datasets name, where tfds has the dataset.
      download_host: the host tensorflow-datasets downloads it from; before a download it is
        probed with a short timeout, so that a machine without network fails in seconds.
      load: embedded data: a function returning its ``sources.ArraySource`` (no files).
      streamed: too large for memory: read through tf.data from tfds, never decoded whole.
      folder: may be read from an image-folder tree or archive given as ``data_dir``.
      mean, std: per-channel normalisation (of [0, 1] pixels); None: the training split's.
      augment_policy: training augmentation of the in-memory pipeline, "pad_crop_flip" or
        "none"; None for streamed data, which augments in its own pipeline.
    """

    name: str
    title: str
    summary: str
    image_shape: Optional[tuple[int, int, int]]
    num_classes: Optional[int]
    eval_split: str
    class_names: Optional[tuple[str, ...]] = None
    tfds_name: Optional[str] = None
    download_host: Optional[str] = None
    load: Optional[Callable[[], sources.ArraySource]] = None
    streamed: bool = False
    folder: bool = False
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    augment_policy: Optional[str] = "none"


_ENTRIES = (
    DatasetInfo(
        name="digits", title="scikit-learn digits",
        summary="scikit-learn's 8x8 handwritten digits (1,797 images), shipped inside "
                "scikit-learn: no data files, no network",
        image_shape=(8, 8, 1), num_classes=10, class_names=tuple("0123456789"),
        eval_split=f"the last {sources.DIGITS_HOLDOUT_FRACTION:.0%} of every class (there is "
                   "no test split)",
        load=sources.load_digits),
    DatasetInfo(
        name="cifar10", title="CIFAR-10",
        summary="CIFAR-10, 32x32 RGB, 10 classes: an image-folder tree or .tar(.gz) archive "
                "in data_dir, or tensorflow-datasets",
        image_shape=(32, 32, 3), num_classes=10,
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                     "ship", "truck"),
        eval_split=_TEST_OR_HOLDOUT, tfds_name="cifar10", download_host="www.cs.toronto.edu",
        folder=True,
        mean=CIFAR10_MEAN, std=CIFAR10_STD, augment_policy="pad_crop_flip"),
    DatasetInfo(
        name="mnist", title="MNIST",
        summary="MNIST, 28x28 grayscale digits: tensorflow-datasets, or an image folder",
        image_shape=(28, 28, 1), num_classes=10, eval_split=_TEST_OR_HOLDOUT,
        tfds_name="mnist", download_host="storage.googleapis.com", folder=True,
        mean=MNIST_MEAN, std=MNIST_STD),
    DatasetInfo(
        name="imagenet2012", title="ImageNet (ILSVRC 2012)",
        summary="ImageNet ILSVRC 2012 through tensorflow-datasets and tf.data; data_dir is the "
                "tfds data dir, with the two ILSVRC2012 tar files for the first run",
        image_shape=(224, 224, 3), num_classes=1000, eval_split="the validation split",
        tfds_name="imagenet2012", streamed=True, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        augment_policy=None),
    DatasetInfo(
        name="image_folder", title="image folder",
        summary="any image-folder tree or .tar(.gz) archive in data_dir: "
                "<root>/train/<class>/<image>, optionally test/<class>/<image>",
        image_shape=None, num_classes=None, eval_split=_TEST_OR_HOLDOUT, folder=True),
)
_BY_NAME = {info.name: info for info in _ENTRIES}


def names() -> tuple[str, ...]:
    """The valid values of ``config.dataset``."""
    return tuple(_BY_NAME)


def find(name: str) -> Optional[DatasetInfo]:
    """The entry of ``name``, None if there is none."""
    return _BY_NAME.get(name)


def get(name: str) -> DatasetInfo:
    """The entry of ``name``; a DataError listing the valid names if there is none."""
    info = _BY_NAME.get(name)
    if info is None:
        raise DataError(f"dataset={name!r} is unknown; valid values: {', '.join(names())} "
                        f"(set --config.dataset=...)")
    return info


def check_pipeline(pipeline: str) -> None:
    """A DataError naming the valid values if ``pipeline`` is not an input pipeline."""
    if pipeline not in INPUT_PIPELINES:
        raise DataError(f"input_pipeline={pipeline!r} is unknown; valid values: "
                        f"{', '.join(INPUT_PIPELINES)} (set --config.input_pipeline=...)")
