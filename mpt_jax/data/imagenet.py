"""ImageNet (tfds `imagenet2012`) through tf.data, per-host sharded, preprocessed as the reference.

TensorFlow and tensorflow_datasets are imported only inside this module's functions. Each
process reads its own slice of the split (tfds.split_for_jax_process), decodes and augments
uint8 images on the CPU with stateless random ops seeded by (seed, epoch, example index), and
the per-host batches become one global array with jax.make_array_from_process_local_data;
normalisation to float32 happens on the device (4x fewer bytes to transfer).

Train: RandomResizedCrop 224 (scale (0.08, 1), ratio (3/4, 4/3), bilinear) + horizontal flip.
Eval:  resize the shorter side to 256 + centre crop 224. The image shape and the mean/std are
the registry entry's (registry.py).
config.data_dir is the tfds data dir (prepared TFRecords in data_dir/imagenet2012/<version>;
"" = tfds' default, ~/tensorflow_datasets or $TFDS_DATA_DIR). The first run prepares them from
the manual download ILSVRC2012_img_train.tar + ILSVRC2012_img_val.tar, looked for in data_dir
itself, else in tfds' default manual dir data_dir/downloads/manual.
"""
from __future__ import annotations

import math
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mpt_jax.data import augment as aug
from mpt_jax.data import registry, sources
from mpt_jax.data.in_memory import DATA_AXIS, check_batch_size
from mpt_jax.errors import DataError, DataNotFoundError

INFO = registry.get("imagenet2012")
IMAGE_SIZE = INFO.image_shape[0]  # square crops
RESIZE_SIZE = 256
SHUFFLE_BUFFER = 16 * 1024
MANUAL_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def import_tf():
    """TensorFlow + tfds, imported lazily; TF is kept off the accelerators (JAX owns them)."""
    tfds = sources.import_tfds()
    try:
        import tensorflow as tf  # noqa: PLC0415  (only here: mpt_jax runs without TensorFlow)
    except ImportError as e:
        raise DataError(f"tensorflow is not installed ({e}); {sources.TFDS_INSTALL_HINT}") from None
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF's runtime already started (a second dataset in this process)
        pass
    return tf, tfds


def resolve_dirs(data_dir):
    """(tfds data dir, manual dir) for config.data_dir (see the module docstring); None = tfds'
    default. "~" is expanded: tfds would otherwise create a directory literally named "~"."""
    if not data_dir:
        return None, None
    data_dir = os.path.expanduser(data_dir)
    has_tars = any(os.path.isfile(os.path.join(data_dir, tar)) for tar in MANUAL_TARS)
    return data_dir, (data_dir if has_tars else None)


def prepare_builder(tfds, data_dir):
    """The imagenet2012 builder, its TFRecords prepared (a no-op once they exist).

    A missing manual download becomes one DataNotFoundError line naming both places looked in
    (tfds raises a multi-line AssertionError)."""
    data_dir, manual_dir = resolve_dirs(data_dir)
    builder = tfds.builder(INFO.tfds_name, data_dir=data_dir)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except AssertionError as e:
        if "anual dir" not in str(e):
            raise
        # tfds' default manual dir: <data dir root>/downloads/manual (builder.data_dir is
        # <root>/imagenet2012/<version>; the root may come from $TFDS_DATA_DIR).
        root = os.path.dirname(os.path.dirname(os.fspath(builder.data_dir)))
        looked_in = manual_dir or os.path.join(root, "downloads", "manual")
        raise DataNotFoundError(
            f"imagenet2012: no prepared copy in {builder.data_dir} and no manual download in "
            f"{looked_in}; download {' and '.join(MANUAL_TARS)} from https://image-net.org (needs "
            f"registration) into that directory or into --config.data_dir, then rerun (the first "
            f"run converts them to TFRecords)") from None
    return builder


def num_examples(builder, split):
    """The size of a prepared split (from the dataset's metadata)."""
    try:
        return builder.info.splits[split].num_examples
    except KeyError:
        raise DataError(f"imagenet2012 in {builder.data_dir} has no {split!r} split metadata; "
                        f"delete that directory and rerun to prepare it again") from None


# libjpeg's accurate integer IDCT: the decoder PIL uses (the reference reads ImageNet with
# PIL through torchvision). TensorFlow's default ("", INTEGER_FAST) differs from it by up to
# ~4 levels; with this the full decode is PIL's exactly (tested), and a windowed decode
# differs only in the window's first and last columns (chroma upsampling at the edge).
DCT_METHOD = "INTEGER_ACCURATE"


def _to_uint8(tf, image):
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def random_resized_crop(tf, image_bytes, seed):
    """torchvision's RandomResizedCrop(224) on an encoded JPEG: sample a box with area fraction
    in (0.08, 1) and aspect ratio in (3/4, 4/3) (10 attempts, else the whole image), decode only
    that window, resize bilinear (antialiased) to 224x224."""
    shape = tf.image.extract_jpeg_shape(image_bytes)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), seed=seed,
        min_object_covered=0.08, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)
    window = tf.stack([offset_y, offset_x, height, width])
    image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3, dct_method=DCT_METHOD)
    image = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE], method="bilinear", antialias=True)
    return _to_uint8(tf, image)


def train_image(tf, image_bytes, seed):
    """The training augmentation of one encoded JPEG: ``random_resized_crop`` and a horizontal
    flip, each with its own half of ``seed`` (benchmarks/input_pipeline.py times this)."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = random_resized_crop(tf, image_bytes, crop_seed)
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def resize_center_crop(tf, image_bytes):
    """Resize the shorter side to 256 (bilinear, antialiased), then centre crop 224."""
    image = tf.io.decode_jpeg(image_bytes, channels=3, dct_method=DCT_METHOD)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = RESIZE_SIZE / tf.reduce_min(shape)
    new_hw = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new_hw, method="bilinear", antialias=True)
    top = (new_hw[0] - IMAGE_SIZE) // 2
    left = (new_hw[1] - IMAGE_SIZE) // 2
    image = image[top:top + IMAGE_SIZE, left:left + IMAGE_SIZE]
    return _to_uint8(tf, image)


class ImageNetDataset:
    """The dataset object of get_dataset for imagenet2012 (tf.data, per-host shards)."""

    name = INFO.name
    image_shape = INFO.image_shape

    def __init__(self, config, mesh):
        self._tf, self._tfds = import_tf()
        tfds = self._tfds
        self.batch_size = int(config.batch_size)
        self.eval_batch_size = int(config.get("eval_batch_size", 0) or self.batch_size)
        check_batch_size(self.batch_size, mesh, "batch_size")
        check_batch_size(self.eval_batch_size, mesh, "eval_batch_size")
        processes = jax.process_count()
        for field, value in (("batch_size", self.batch_size),
                             ("eval_batch_size", self.eval_batch_size)):
            if value % processes:
                raise ValueError(f"{field}={value} is not divisible by the {processes} processes")
        # data_seed when set, else seed (mpt_jax.data.data_seed; imported there, not here:
        # the package's __init__ imports this module).
        data_seed = config.get("data_seed", None)
        self.seed = int(config.get("seed", 0) if data_seed is None else data_seed)
        self.augment = bool(config.get("augment", True))
        self._builder = prepare_builder(tfds, config.get("data_dir", "") or None)
        info = self._builder.info
        self.class_names = tuple(info.features["label"].names)
        self.num_classes = len(self.class_names)
        self.num_train = num_examples(self._builder, "train")
        self.num_eval = num_examples(self._builder, "validation")
        self.eval_split_name = f"validation ({self.num_eval:,} images)"
        self.steps_per_epoch = self.num_train // self.batch_size
        self.local_batch = self.batch_size // processes
        self.local_eval_batch = self.eval_batch_size // processes
        # Hosts may hold one example more than others: all run the same number of eval steps.
        self.eval_steps = math.ceil(math.ceil(self.num_eval / processes) / self.local_eval_batch)
        self.mesh = mesh
        self.batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
        self._normalize = jax.jit(lambda x: aug.normalize(x, INFO.mean, INFO.std),
                                  out_shardings=self.batch_sharding)

    def _read(self, split, shuffle_seed=None):
        tfds = self._tfds
        return self._builder.as_dataset(
            split=tfds.split_for_jax_process(split, drop_remainder=split == "train"),
            shuffle_files=shuffle_seed is not None,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed))

    def _train_dataset(self, epoch, start_step):
        tf = self._tf
        epoch_seed = self.seed * 1_000_003 + epoch  # order and augmentation differ every epoch
        ds = self._read("train", shuffle_seed=epoch_seed)
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=epoch_seed, reshuffle_each_iteration=False)
        ds = ds.take(self.steps_per_epoch * self.local_batch).enumerate()
        ds = ds.skip(start_step * self.local_batch)  # resume: skip before decoding
        host = jax.process_index()
        processes = jax.process_count()

        def preprocess(index, example):
            seed = tf.stack([tf.constant(epoch_seed, tf.int64), index * processes + host])
            if self.augment:
                image = train_image(tf, example["image"], seed)
            else:
                image = resize_center_crop(tf, example["image"])
            return dict(image=image, label=tf.cast(example["label"], tf.int32))

        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(self.local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def _eval_dataset(self):
        tf = self._tf

        def preprocess(example):
            return dict(image=resize_center_crop(tf, example["image"]),
                        label=tf.cast(example["label"], tf.int32),
                        mask=tf.constant(1.0, tf.float32))

        real = self._read("validation").map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        padding = tf.data.Dataset.from_tensors(dict(
            image=tf.zeros(self.image_shape, tf.uint8), label=tf.constant(0, tf.int32),
            mask=tf.constant(0.0, tf.float32))).repeat()
        ds = real.concatenate(padding).take(self.eval_steps * self.local_eval_batch)
        return ds.batch(self.local_eval_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def _to_global(self, local_batch):
        out = {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
               for k, v in local_batch.items()}
        out["image"] = self._normalize(out["image"])
        return out

    def train_batches(self, epoch, start_step=0):
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step={start_step} outside [0, {self.steps_per_epoch}]")
        for batch in self._tfds.as_numpy(self._train_dataset(epoch, start_step)):
            yield self._to_global(batch)

    def eval_batches(self):
        for batch in self._tfds.as_numpy(self._eval_dataset()):
            yield self._to_global(batch)
