"""Tests for mpt_jax.data: sources, the in-memory on-device pipeline, image folders, bad input,
the dataset registry."""
import dataclasses
import io
import os
import pathlib
import sys
import tarfile

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from PIL import Image

from mpt_jax import data
from mpt_jax.data import augment, image_folder, registry, sources
from mpt_jax.errors import DataError, DataNotFoundError

SHARED_ARCHIVE = (pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" /
                  "cifar10_train_jpeg.tar.gz")
CIFAR_MEAN = np.array([0.491, 0.482, 0.447])  # the reference's normalisation constants
CIFAR_STD = np.array([0.247, 0.243, 0.262])


def make_config(**kw):
    base = dict(dataset="digits", data_dir="", input_pipeline="auto", holdout_per_class=0,
                cache_dir="", augment=True, batch_size=64, eval_batch_size=64, seed=0)
    base.update(kw)
    return ml_collections.ConfigDict(base)


@pytest.fixture(scope="module")
def digits_ds(mesh8):
    return data.get_dataset(make_config(), mesh8)


def np_normalize(x_uint8, mean, std):
    return (x_uint8.astype(np.float64) / 255.0 - np.asarray(mean)) / np.asarray(std)


# ---------------------------------------------------------------------------------------------
# digits source
# ---------------------------------------------------------------------------------------------
def test_digits_source_split_and_scaling():
    from sklearn.datasets import load_digits
    raw = load_digits()
    src = sources.load_digits()
    assert src.image_shape == (8, 8, 1) and src.num_classes == 10
    assert src.train_images.dtype == np.uint8 and src.train_labels.dtype == np.int32
    assert len(src.train_labels) + len(src.eval_labels) == 1797
    # Independent reference: the last 20 % (rounded) of each class is held out, order kept.
    eval_idx = np.concatenate([np.flatnonzero(raw.target == c)[-int(round(0.2 * n)):]
                               for c, n in enumerate(np.bincount(raw.target))])
    eval_idx = np.sort(eval_idx)
    train_idx = np.setdiff1d(np.arange(1797), eval_idx)
    np.testing.assert_array_equal(src.eval_labels, raw.target[eval_idx])
    np.testing.assert_array_equal(src.train_labels, raw.target[train_idx])
    expected = np.round(raw.images[train_idx] * 255.0 / 16.0)
    np.testing.assert_array_equal(src.train_images[..., 0], expected)
    assert src.train_images.max() == 255
    assert "held-out" in src.eval_split_name and "359" in src.eval_split_name
    again = sources.load_digits()
    np.testing.assert_array_equal(again.train_images, src.train_images)
    # Normalisation constants are the training split's statistics.
    x = src.train_images.astype(np.float64) / 255.0
    np.testing.assert_allclose(src.mean, [x.mean()], rtol=1e-12)
    np.testing.assert_allclose(src.std, [x.std()], rtol=1e-12)


def test_digits_are_read_without_importing_scikit_learn(monkeypatch):
    """The digits come from scikit-learn's own CSV without its (second-long) import, and the
    same arrays come from scikit-learn itself where that file is not found."""
    import builtins  # noqa: PLC0415

    assert sources.sklearn_digits_csv() is not None  # the fast path is the one tested here
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        assert name.split(".")[0] != "sklearn", f"imported {name}"
        return real_import(name, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "__import__", no_sklearn)
        fast = sources.load_digits()
    monkeypatch.setattr(sources, "sklearn_digits_csv", lambda: None)
    slow = sources.load_digits()
    for field in ("train_images", "train_labels", "eval_images", "eval_labels", "mean", "std"):
        a, b = np.asarray(getattr(fast, field)), np.asarray(getattr(slow, field))
        assert a.dtype == b.dtype, field
        np.testing.assert_array_equal(a, b, err_msg=field)
    assert fast.class_names == slow.class_names == tuple("0123456789")


# ---------------------------------------------------------------------------------------------
# the in-memory pipeline
# ---------------------------------------------------------------------------------------------
def test_train_batches_sharded_and_match_reference(digits_ds):
    ds = digits_ds
    src = sources.load_digits()
    assert (ds.num_train, ds.num_eval, ds.num_classes) == (1438, 359, 10)
    assert ds.image_shape == (8, 8, 1)
    assert ds.steps_per_epoch == 1438 // 64 and ds.eval_steps == 6
    assert not ds.augment  # digits: no augmentation
    perm = ds.train_indices(0)
    batches = list(ds.train_batches(0))
    assert len(batches) == ds.steps_per_epoch
    for step in (0, len(batches) - 1):
        b = batches[step]
        assert b["image"].shape == (64, 8, 8, 1) and b["image"].dtype == np.float32
        assert b["label"].shape == (64,) and b["label"].dtype == np.int32
        assert b["image"].sharding.spec == P("data")
        assert len(b["image"].addressable_shards) == 8
        assert {s.data.shape for s in b["image"].addressable_shards} == {(8, 8, 8, 1)}
        idx = perm[step * 64:(step + 1) * 64]
        np.testing.assert_array_equal(np.asarray(b["label"]), src.train_labels[idx])
        ref = np_normalize(src.train_images[idx], src.mean, src.std)
        np.testing.assert_allclose(np.asarray(b["image"]), ref, atol=1e-5)
    # One trace for the whole epoch: epoch/step are traced, not static.
    assert ds.train_batch_fn._cache_size() == 1


def test_order_is_a_per_epoch_permutation(digits_ds, mesh8):
    ds = digits_ds
    p0, p1 = ds.train_indices(0), ds.train_indices(1)
    np.testing.assert_array_equal(np.sort(p0), np.arange(ds.num_train))
    np.testing.assert_array_equal(np.sort(p1), np.arange(ds.num_train))
    assert (p0 != p1).mean() > 0.9
    same = data.get_dataset(make_config(), mesh8)
    np.testing.assert_array_equal(same.train_indices(1), p1)
    other = data.get_dataset(make_config(seed=1), mesh8)
    assert (other.train_indices(1) != p1).mean() > 0.9
    # Labels over one epoch: every non-dropped example exactly once.
    labels = np.concatenate([np.asarray(b["label"]) for b in ds.train_batches(1)])
    np.testing.assert_array_equal(labels, ds_labels(ds)[p1[:len(labels)]])


def ds_labels(ds):
    return np.asarray(ds._train[1])


def test_start_step_resumes_same_batches(digits_ds):
    full = list(digits_ds.train_batches(3))
    resumed = list(digits_ds.train_batches(3, start_step=5))
    assert len(resumed) == len(full) - 5
    for a, b in zip(full[5:], resumed):
        np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))
    with pytest.raises(ValueError, match="start_step"):
        next(digits_ds.train_batches(0, start_step=10_000))


def test_eval_covers_each_example_once(digits_ds):
    src = sources.load_digits()
    batches = list(digits_ds.eval_batches())
    assert len(batches) == 6  # ceil(359 / 64)
    mask = np.concatenate([np.asarray(b["mask"]) for b in batches])
    assert mask.dtype == np.float32 and mask.sum() == 359
    np.testing.assert_array_equal(mask, (np.arange(6 * 64) < 359).astype(np.float32))
    real = mask == 1
    labels = np.concatenate([np.asarray(b["label"]) for b in batches])[real]
    images = np.concatenate([np.asarray(b["image"]) for b in batches])[real]
    np.testing.assert_array_equal(labels, src.eval_labels)
    np.testing.assert_allclose(images, np_normalize(src.eval_images, src.mean, src.std), atol=1e-5)
    assert batches[-1]["image"].sharding.spec == P("data")


def synthetic_rgb_source(n=64, size=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, size=(n, size, size, 3), dtype=np.uint8)  # no zeros: padding shows
    y = (np.arange(n) % 10).astype(np.int32)
    return sources.ArraySource(name="cifar10", class_names=registry.get("cifar10").class_names,
                               train_images=x, train_labels=y, eval_images=x[:8], eval_labels=y[:8],
                               eval_split_name="test", mean=tuple(CIFAR_MEAN), std=tuple(CIFAR_STD),
                               augment_policy="pad_crop_flip")


def reference_augment(images, dy, dx, flip, pad=4):
    """float64 NumPy version of the reference's CIFAR augmentation: zero pad raw uint8, crop,
    flip, then normalise."""
    n, h, w, _ = images.shape
    padded = np.pad(images.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    out = np.where(flip[:, None, None, None], out[:, :, ::-1], out)
    return (out / 255.0 - CIFAR_MEAN) / CIFAR_STD


def test_augmentation_matches_float64_reference(mesh8):
    src = synthetic_rgb_source()
    ds = data.InMemoryDataset(src, mesh8, batch_size=16, eval_batch_size=8, seed=7, augment=True)
    assert ds.augment
    epoch, step = 2, 1
    batch = list(ds.train_batches(epoch))[step]
    perm = ds.train_indices(epoch)
    idx = perm[step * 16:(step + 1) * 16]
    dy, dx, flip = (np.asarray(a) for a in augment.augment_params(
        augment.augment_key(7, epoch, step), 16))
    # The test is only meaningful if crops and flips actually vary.
    assert flip.any() and (~flip).any() and len(set(dy.tolist())) > 1 and (dx != 4).any()
    assert dy.min() >= 0 and dy.max() <= 8 and dx.min() >= 0 and dx.max() <= 8
    ref = reference_augment(src.train_images[idx], dy, dx, flip)
    np.testing.assert_allclose(np.asarray(batch["image"]), ref, atol=1e-5)
    # Different steps get different augmentation; eval batches are never augmented.
    other = augment.augment_params(augment.augment_key(7, epoch, step + 1), 16)
    assert not all(np.array_equal(np.asarray(a), b) for a, b in zip(other, (dy, dx, flip)))
    ev = next(ds.eval_batches())
    np.testing.assert_allclose(np.asarray(ev["image"]),
                               (src.eval_images / 255.0 - CIFAR_MEAN) / CIFAR_STD, atol=1e-5)


def test_batch_shapes_are_the_batches_shapes(mesh8):
    """eval_batch_shapes() / train_batch_shapes() (what train.py compiles the steps for, ahead
    of time) equal every batch's shape, dtype and sharding, the padded last eval batch too."""
    src = synthetic_rgb_source()
    ds = data.InMemoryDataset(src, mesh8, batch_size=16, eval_batch_size=24, seed=7)
    assert ds.num_eval % 24  # a padded last batch exists
    for shapes, batches in ((ds.eval_batch_shapes(), list(ds.eval_batches())),
                             (ds.train_batch_shapes(), list(ds.train_batches(1)))):
        assert len(batches) in (ds.eval_steps, ds.steps_per_epoch)
        for batch in batches:
            assert sorted(batch) == sorted(shapes)
            for key, arr in batch.items():
                assert (arr.shape, arr.dtype) == (shapes[key].shape, shapes[key].dtype), key
                assert arr.sharding.is_equivalent_to(shapes[key].sharding, arr.ndim), key


def test_batch_not_divisible_by_devices(mesh8):
    with pytest.raises(ValueError, match=r"batch_size=60 .*8 devices.*multiple of 8"):
        data.get_dataset(make_config(batch_size=60), mesh8)
    with pytest.raises(ValueError, match=r"eval_batch_size=12 "):
        data.get_dataset(make_config(eval_batch_size=12), mesh8)


def test_unknown_dataset_lists_valid_names(mesh8):
    with pytest.raises(ValueError, match="dataset='svhn'.*digits.*cifar10"):
        data.get_dataset(make_config(dataset="svhn"), mesh8)
    with pytest.raises(ValueError, match="input_pipeline='tf'.*auto"):
        data.get_dataset(make_config(input_pipeline="tf"), mesh8)


# ---------------------------------------------------------------------------------------------
# image folders and archives
# ---------------------------------------------------------------------------------------------
CLASSES = ("cat", "ant", "bee")  # sorted order: ant, bee, cat


def png_bytes(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_tree(root, per_class=4, splits=("train",), size=6, seed=0):
    """Writes root/<split>/<class>/<i>.png with random pixels; returns {(split, class, i): array}."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in splits:
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                (d / f"{i:03d}.png").write_bytes(png_bytes(arr))
                arrays[(split, c, i)] = arr
    return arrays


def make_tar(tree_root, target, prefix="."):
    with tarfile.open(target, "w:gz") as tar:
        tar.add(tree_root, arcname=prefix)
    return target


def expected_split(arrays, split, indices):
    xs, ys = [], []
    for label, c in enumerate(sorted(CLASSES)):
        for i in indices:
            xs.append(arrays[(split, c, i)])
            ys.append(label)
    return np.stack(xs), np.array(ys)


def test_image_folder_directory_holdout(tmp_path):
    arrays = make_tree(tmp_path / "tree")
    src = image_folder.load_image_folder(str(tmp_path / "tree"), holdout_per_class=1,
                                         cache_dir=str(tmp_path / "cache"))
    assert src.class_names == ("ant", "bee", "cat") and src.image_shape == (6, 6, 3)
    x, y = expected_split(arrays, "train", range(3))
    np.testing.assert_array_equal(src.train_images, x)
    np.testing.assert_array_equal(src.train_labels, y)
    x, y = expected_split(arrays, "train", [3])  # the last file of every class is held out
    np.testing.assert_array_equal(src.eval_images, x)
    np.testing.assert_array_equal(src.eval_labels, y)
    assert src.eval_split_name == "held-out: last 1 per class of train (3 images)"
    assert src.augment_policy == "pad_crop_flip"
    with pytest.raises(DataError, match="holdout_per_class=0"):
        image_folder.load_image_folder(str(tmp_path / "tree"), holdout_per_class=0, cache_dir=None)
    with pytest.raises(DataError, match="not CIFAR-10.*dataset=image_folder"):
        image_folder.load_image_folder(str(tmp_path / "tree"), name="cifar10", holdout_per_class=1,
                                       cache_dir=None)


def test_archive_with_test_split_and_cache(tmp_path, monkeypatch, mesh8):
    arrays = make_tree(tmp_path / "tree", splits=("train", "test"))
    archive = make_tar(tmp_path / "tree", tmp_path / "images.tar.gz", prefix="dataset")
    cache = tmp_path / "cache"
    src = image_folder.load_image_folder(str(archive), holdout_per_class=1, cache_dir=str(cache))
    x, y = expected_split(arrays, "train", range(4))
    np.testing.assert_array_equal(src.train_images, x)
    np.testing.assert_array_equal(src.train_labels, y)
    x, y = expected_split(arrays, "test", range(4))
    np.testing.assert_array_equal(src.eval_images, x)
    assert src.eval_split_name == "test (12 images)"
    assert len(list(cache.glob("*.npz"))) == 1 and not list(cache.glob("*.tmp"))

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(image_folder, "_decode_image", no_decode)
    cfg = make_config(dataset="image_folder", data_dir=str(archive), cache_dir=str(cache),
                      batch_size=8, eval_batch_size=8)
    ds = data.get_dataset(cfg, mesh8)  # served from the cache
    assert (ds.num_train, ds.num_eval, ds.num_classes) == (12, 12, 3)
    assert next(ds.train_batches(0))["image"].shape == (8, 6, 6, 3)
    # A changed archive (new mtime) invalidates the cache key.
    os.utime(archive, ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded again"):
        image_folder.load_image_folder(str(archive), cache_dir=str(cache))


def test_missing_path_names_it(tmp_path, mesh8):
    missing = tmp_path / "nope.tar.gz"
    with pytest.raises(DataNotFoundError, match=str(missing)):
        data.get_dataset(make_config(dataset="cifar10", data_dir=str(missing)), mesh8)
    with pytest.raises(DataNotFoundError, match="nope_dir"):
        image_folder.read_image_folder(str(tmp_path / "nope_dir"), cache_dir=None)


def test_empty_class_folder_names_it(tmp_path):
    make_tree(tmp_path / "tree", per_class=2)
    (tmp_path / "tree" / "train" / "dog").mkdir()
    with pytest.raises(DataError, match=r"train/dog/ contains no images"):
        image_folder.read_image_folder(str(tmp_path / "tree"), cache_dir=None)
    archive = make_tar(tmp_path / "tree", tmp_path / "a.tar")
    with pytest.raises(DataError, match=r"a\.tar: class folder train/dog/ contains no images"):
        image_folder.read_image_folder(str(archive), cache_dir=None)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("as_archive", [False, True])
def test_corrupt_image_names_the_file(tmp_path, damage, as_archive):
    make_tree(tmp_path / "tree", per_class=3)
    bad = tmp_path / "tree" / "train" / "bee" / "001.png"
    content = bad.read_bytes()
    bad.write_bytes(b"not an image at all" if damage == "garbage" else content[:len(content) // 2])
    path = make_tar(tmp_path / "tree", tmp_path / "a.tar.gz") if as_archive else tmp_path / "tree"
    with pytest.raises(DataError, match=r"train/bee/001\.png: corrupt or truncated image"):
        image_folder.read_image_folder(str(path), cache_dir=None)


def test_archive_not_in_image_folder_layout(tmp_path):
    d = tmp_path / "flat" / "images" / "cat"
    d.mkdir(parents=True)
    (d / "0.png").write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    archive = make_tar(tmp_path / "flat", tmp_path / "flat.tar.gz")
    with pytest.raises(DataError, match=r"flat\.tar\.gz: no images found under train/<class>/"):
        image_folder.read_image_folder(str(archive), cache_dir=None)
    (tmp_path / "flat2" / "train").mkdir(parents=True)
    (tmp_path / "flat2" / "train" / "0.png").write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(DataError, match=r"train/0\.png: image directly under train/"):
        image_folder.read_image_folder(str(tmp_path / "flat2"), cache_dir=None)
    with pytest.raises(DataError, match="no train/ folder"):
        image_folder.read_image_folder(str(tmp_path / "flat"), cache_dir=None)


def test_truncated_archive_names_it(tmp_path):
    make_tree(tmp_path / "tree", per_class=20, size=16)
    archive = make_tar(tmp_path / "tree", tmp_path / "big.tar.gz")
    blob = archive.read_bytes()
    archive.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(DataError, match=r"big\.tar\.gz: .*(corrupt or truncated|truncated)"):
        image_folder.read_image_folder(str(archive), cache_dir=None)


def test_tfds_missing_gives_install_hint(monkeypatch, mesh8):
    # Hidden whether installed or not: a None entry in sys.modules makes `import` raise
    # (tests/test_data_tfds.py hides tensorflow itself where it is installed).
    missing = "tensorflow_datasets"
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(DataError, match=r'pip install -e "\.\[tf\]"` in the mpt_jax checkout.*'
                                        r'data_dir'):
        data.get_dataset(make_config(dataset="cifar10"), mesh8)
    with pytest.raises(DataError, match=rf'{missing} is not installed.*pip install -e "\.\[tf\]"'):
        data.get_dataset(make_config(dataset="imagenet2012", batch_size=8, eval_batch_size=8), mesh8)


# ---------------------------------------------------------------------------------------------
# the dataset registry
# ---------------------------------------------------------------------------------------------
def test_registry_entries_are_consistent():
    from mpt_jax import config_fields

    assert registry.names() == ("digits", "cifar10", "mnist", "imagenet2012", "image_folder")
    assert config_fields.BY_NAME["dataset"].valid == registry.names()  # what validation accepts
    for name in registry.names():
        info = registry.get(name)
        assert info.name == name and info.summary and info.eval_split and info.title
        if info.class_names is not None:
            assert len(info.class_names) == info.num_classes, name
        if info.image_shape is not None:
            assert len(info.image_shape) == 3, name
            if info.mean is not None:
                assert len(info.mean) == len(info.std) == info.image_shape[-1], name
        if info.streamed:  # exactly one kind of source
            assert info.tfds_name and not info.folder and info.load is None, name
        elif info.load is not None:
            assert not info.folder and info.tfds_name is None, name
        else:
            assert info.folder or info.tfds_name, name
        assert info.augment_policy in (("pad_crop_flip", "none") if not info.streamed else (None,))
    assert registry.get("imagenet2012").image_shape == (224, 224, 3)
    assert registry.get("imagenet2012").num_classes == 1000
    assert registry.find("svhn") is None
    with pytest.raises(DataError, match=r"dataset='svhn' is unknown; valid values: digits, "):
        registry.get("svhn")


def test_digits_entry_matches_the_data():
    from sklearn.datasets import load_digits

    raw, info = load_digits(), registry.get("digits")
    assert info.image_shape == raw.images.shape[1:] + (1,)
    assert info.class_names == tuple(str(c) for c in raw.target_names)
    src = info.load()
    assert (src.image_shape, src.class_names, src.num_classes) == (
        info.image_shape, info.class_names, info.num_classes)


def test_a_new_dataset_is_one_registry_entry(tmp_path, monkeypatch, mesh8):
    """An image-folder dataset with fixed classes needs only its entry: the loaders check the
    folder against it and use its normalisation and augmentation."""
    arrays = make_tree(tmp_path / "tree", splits=("train", "test"))
    info = registry.DatasetInfo(
        name="tiny3", title="Tiny-3", summary="three classes of 6x6 RGB", image_shape=(6, 6, 3),
        num_classes=3, eval_split="test", class_names=("ant", "bee", "cat"), folder=True,
        mean=(0.5, 0.25, 0.125), std=(0.5, 0.5, 0.25), augment_policy="none")
    monkeypatch.setitem(registry._BY_NAME, "tiny3", info)
    cfg = make_config(dataset="tiny3", data_dir=str(tmp_path / "tree"), batch_size=8,
                      eval_batch_size=8)
    ds = data.get_dataset(cfg, mesh8)
    assert (ds.name, ds.class_names, ds.image_shape) == ("tiny3", info.class_names, (6, 6, 3))
    assert not ds.augment and ds.eval_split_name == "test (12 images)"
    x, _ = expected_split(arrays, "test", range(4))
    batch = next(ds.eval_batches())
    np.testing.assert_allclose(np.asarray(batch["image"]), np_normalize(x[:8], info.mean,
                                                                        info.std), atol=1e-5)
    monkeypatch.setitem(registry._BY_NAME, "tiny3",
                        dataclasses.replace(info, class_names=("ant", "bee", "dog")))
    with pytest.raises(DataError, match=r"tree: not Tiny-3 \(classes \['ant', 'bee', 'cat'\]"):
        data.get_dataset(cfg, mesh8)


# ---------------------------------------------------------------------------------------------
# the real shared CIFAR-10 archive
# ---------------------------------------------------------------------------------------------
@pytest.mark.full_size  # all 50,000 images
def test_shared_cifar10_archive(tmp_path):
    if not SHARED_ARCHIVE.exists():
        pytest.skip(f"shared CIFAR-10 archive not found at {SHARED_ARCHIVE}")
    cfg = make_config(dataset="cifar10", data_dir=str(SHARED_ARCHIVE), holdout_per_class=500,
                      cache_dir=str(tmp_path / "cache"), batch_size=128, eval_batch_size=1000)
    mesh1 = jax.make_mesh((1,), ("data",))  # one device: no 8x replication of 150 MB in tests
    ds = data.get_dataset(cfg, mesh1)
    assert (ds.num_train, ds.num_eval, ds.num_classes) == (45_000, 5_000, 10)
    assert ds.image_shape == (32, 32, 3) and ds.augment
    assert ds.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                              "horse", "ship", "truck")
    assert ds.eval_split_name == "held-out: last 500 per class of train (5,000 images)"
    np.testing.assert_array_equal(np.bincount(np.asarray(ds._train[1])), [4500] * 10)
    np.testing.assert_array_equal(np.bincount(np.asarray(ds._eval[1])), [500] * 10)
    # The first held-out image is train/airplane/4500.jpg, decoded independently here.
    with tarfile.open(SHARED_ARCHIVE, "r|gz") as tar:
        for member in tar:
            if member.name.endswith("train/airplane/4500.jpg"):
                ref = np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
                break
    np.testing.assert_array_equal(np.asarray(ds._eval[0][0]), ref)
    batch = next(ds.eval_batches())
    np.testing.assert_allclose(np.asarray(batch["image"][0]), (ref / 255.0 - CIFAR_MEAN) / CIFAR_STD,
                               atol=1e-5)
    assert next(ds.train_batches(0))["image"].shape == (128, 32, 32, 3)

