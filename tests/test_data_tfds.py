"""The TensorFlow input pipelines under tfds.testing.mock_data (no download, no dataset files).

  * cifar10 with input_pipeline="tfds": tfds' own random mock examples, read back through tfds
    directly as the independent reference for normalisation, order and eval coverage.
  * imagenet2012 (imagenet.py): the tfds builder with real split metadata written to a temporary
    data_dir (tfds ships none) and crafted JPEG examples (as_dataset_fn) whose content is known:
    channel R is a horizontal ramp, B a vertical ramp, G = 20 + 10 * label. That gives NumPy
    references for the centre crop, the random-resized-crop bounds, the flip and the image/label
    pairing, with tolerances for JPEG and uint8 rounding.
  * a two-step train_and_evaluate on the mocked imagenet2012 from configs/imagenet_wrn50.py.
  * the one-line errors when the data is missing (no mock); tests/test_data_tfds_offline.py: within
    seconds without network.

No test here reaches the network: the download host probe answers "reachable" for the
mocked datasets (whose download tfds' mock replaces), and the offline tests make every
connection fail.

These need TensorFlow (`pip install -e ".[test,tf]"`; CI must install the tf extra). Without it the
whole file is skipped, with the reason in pytest's -ra summary.
"""
import importlib.util
import io
import os
import pathlib
import sys

import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

tf = pytest.importorskip(
    "tensorflow", reason="TensorFlow is not installed; pip install -e '.[test,tf]' to run the "
    "tfds / ImageNet pipeline tests")
tfds = pytest.importorskip(
    "tensorflow_datasets", reason="tensorflow-datasets is not installed; pip install -e "
    "'.[test,tf]' to run the tfds / ImageNet pipeline tests")

from PIL import Image  # noqa: E402

from mpt_jax import data  # noqa: E402
from mpt_jax.data import imagenet, sources  # noqa: E402
from mpt_jax.errors import DataError, DataNotFoundError  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
CIFAR_MEAN = np.array([0.491, 0.482, 0.447])  # the reference's normalisation constants
CIFAR_STD = np.array([0.247, 0.243, 0.262])
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])  # the reference's (torchvision's) constants
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
N_CIFAR = 40  # mock examples per split (tfds' mock yields the same examples for every split)
N_IMAGENET = 20
JPEG_TOL = 3.0  # uint8 levels: JPEG (q=95, 4:4:4) + the pipeline's uint8 rounding


@pytest.fixture(scope="module", autouse=True)
def download_host_answers():
    """The mocked datasets are never prepared on disk: without this, loading them would
    probe their real download host first."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sources, "can_reach", lambda *args, **kwargs: True)
        yield


def make_config(**kw):
    base = dict(dataset="cifar10", data_dir="", input_pipeline="tfds", holdout_per_class=500,
                cache_dir="", augment=True, batch_size=16, eval_batch_size=16, seed=0)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def np_normalize(x_uint8, mean, std):
    return (x_uint8.astype(np.float64) / 255.0 - mean) / std


def to_uint8_scale(x, mean, std):
    """Inverts the normalisation (float64): back to the [0, 255] scale of the uint8 input."""
    return (np.asarray(x, np.float64) * std + mean) * 255.0


def check_global_batch(batch, mesh, batch_size, image_shape, keys):
    assert set(batch) == set(keys)
    assert batch["image"].shape == (batch_size,) + tuple(image_shape)
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    assert batch["label"].shape == (batch_size,)
    for value in batch.values():
        assert isinstance(value.sharding, NamedSharding) and value.sharding.mesh == mesh
        assert value.sharding.spec == P("data")
        assert {s.data.shape[0] for s in value.addressable_shards} == {batch_size // 8}
    if "mask" in batch:
        assert batch["mask"].dtype == np.float32 and batch["mask"].shape == (batch_size,)


def stack(batches):
    return {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in batches[0]}


# ---------------------------------------------------------------------------------------------
# (a) cifar10 through tfds (input_pipeline="tfds") on 8 devices
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar(mesh8):
    """Datasets built inside mock_data, plus tfds' own reading of the same mock examples."""
    with tfds.testing.mock_data(num_examples=N_CIFAR):
        ref = {split: tfds.as_numpy(tfds.builder("cifar10").as_dataset(split=split,
                                                                        batch_size=N_CIFAR))
               for split in ("train", "test")}
        for split in ref:
            ref[split] = next(iter(ref[split]))
        plain = data.get_dataset(make_config(augment=False), mesh8)
        augmented = data.get_dataset(make_config(), mesh8)
        again = data.get_dataset(make_config(), mesh8)
        other_seed = data.get_dataset(make_config(seed=1), mesh8)
    return dict(ref=ref, plain=plain, augmented=augmented, again=again, other_seed=other_seed)


class TestCifar10Tfds:

    def test_attributes(self, cifar):
        ds = cifar["plain"]
        assert ds.name == "cifar10" and ds.num_classes == 10
        # tfds' label names (without prepared metadata, as here, tfds names them "0".."9").
        with tfds.testing.mock_data(num_examples=1):
            assert ds.class_names == tuple(tfds.builder("cifar10").info.features["label"].names)
        assert ds.image_shape == (32, 32, 3)
        assert ds.num_train == N_CIFAR and ds.num_eval == N_CIFAR
        assert ds.eval_split_name.startswith("test")  # the real test split, not a hold-out
        assert ds.steps_per_epoch == N_CIFAR // 16 == 2  # last partial batch dropped
        # (docs/decisions.md#partial-batch)
        assert ds.eval_steps == 3
        assert cifar["augmented"].augment and not ds.augment

    def test_train_batches_normalised_sharded_in_epoch_order(self, cifar, mesh8):
        ds, ref = cifar["plain"], cifar["ref"]["train"]
        batches = list(ds.train_batches(epoch=0))
        assert len(batches) == ds.steps_per_epoch
        for batch in batches:
            check_global_batch(batch, mesh8, 16, (32, 32, 3), ("image", "label"))
        got = stack(batches)
        order = ds.train_indices(0)
        np.testing.assert_array_equal(np.sort(order), np.arange(N_CIFAR))  # a permutation
        idx = order[:2 * 16]
        # Independent reference: tfds' own reading of the mock images, normalised in float64.
        np.testing.assert_allclose(got["image"], np_normalize(ref["image"][idx], CIFAR_MEAN,
                                                              CIFAR_STD), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got["label"], ref["label"][idx])
        assert len(set(idx.tolist())) == 32  # no example twice within an epoch

    def test_augmented_batches_are_padded_crops_of_the_same_examples(self, cifar):
        ds, ref = cifar["augmented"], cifar["ref"]["train"]
        got = stack(list(ds.train_batches(epoch=0)))
        idx = ds.train_indices(0)[:32]
        np.testing.assert_array_equal(got["label"], ref["label"][idx])
        u = to_uint8_scale(got["image"], CIFAR_MEAN, CIFAR_STD)
        np.testing.assert_allclose(u, np.round(u), atol=2e-3)  # normalised uint8, these constants
        raw = ref["image"][idx].astype(np.float64)
        # Each row is the source image shifted by <= 4 pixels (zero padding of the raw image, as
        # the reference pads) and maybe flipped, so its centre 24x24 is a 24x24 window of the
        # image or its mirror.
        for row in range(32):
            centre = u[row, 4:28, 4:28]
            assert any(np.allclose(centre, img[sy:sy + 24, sx:sx + 24], atol=1e-3)
                       for img in (raw[row], raw[row][:, ::-1])
                       for sy in range(9) for sx in range(9)), f"row {row}: no shift/flip of {idx[row]}"

    def test_eval_every_example_once_padding_masked(self, cifar, mesh8):
        ds, ref = cifar["plain"], cifar["ref"]["test"]
        batches = list(ds.eval_batches())
        assert len(batches) == ds.eval_steps
        for batch in batches:
            check_global_batch(batch, mesh8, 16, (32, 32, 3), ("image", "label", "mask"))
        got = stack(batches)
        np.testing.assert_array_equal(got["mask"], np.r_[np.ones(N_CIFAR), np.zeros(48 - N_CIFAR)])
        real = got["mask"] == 1
        np.testing.assert_allclose(got["image"][real], np_normalize(ref["image"], CIFAR_MEAN,
                                                                    CIFAR_STD), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got["label"][real], ref["label"])
        # Eval never augments, even when training does.
        aug_eval = stack(list(cifar["augmented"].eval_batches()))
        np.testing.assert_array_equal(aug_eval["image"], got["image"])

    def test_order_is_a_function_of_seed_and_epoch_and_resumes(self, cifar):
        ds, again, other = cifar["augmented"], cifar["again"], cifar["other_seed"]
        first = stack(list(ds.train_batches(epoch=3)))
        np.testing.assert_array_equal(first["image"], stack(list(again.train_batches(3)))["image"])
        np.testing.assert_array_equal(first["label"], stack(list(again.train_batches(3)))["label"])
        assert not np.array_equal(ds.train_indices(3), ds.train_indices(4))
        assert not np.array_equal(ds.train_indices(3), other.train_indices(3))
        resumed = list(again.train_batches(3, start_step=1))
        assert len(resumed) == 1
        np.testing.assert_array_equal(np.asarray(resumed[0]["image"]), first["image"][16:])
        np.testing.assert_array_equal(np.asarray(resumed[0]["label"]), first["label"][16:])
        assert list(ds.train_batches(3, start_step=ds.steps_per_epoch)) == []
        with pytest.raises(ValueError, match="start_step=3"):
            next(ds.train_batches(3, start_step=3))


# ---------------------------------------------------------------------------------------------
# (b) imagenet2012 through the tf.data pipeline (imagenet.py)
# ---------------------------------------------------------------------------------------------
IMAGENET_SIZES = ((48, 56), (60, 48), (52, 52), (64, 60), (40, 50))  # (H, W); aspect in [3/4, 4/3]


def ramp_image(label, height, width):
    """R: horizontal ramp 10..245, B: vertical ramp 10..245, G: 20 + 10 * label (constant)."""
    x = 10.0 + 235.0 * np.arange(width) / (width - 1)
    y = 10.0 + 235.0 * np.arange(height) / (height - 1)
    img = np.empty((height, width, 3))
    img[..., 0] = x[None, :]
    img[..., 1] = 20.0 + 10.0 * label
    img[..., 2] = y[:, None]
    return np.round(img).astype(np.uint8)


def crafted_examples():
    out = []
    for label in range(N_IMAGENET):  # label i <=> example i (labels unique)
        height, width = IMAGENET_SIZES[label % len(IMAGENET_SIZES)]
        buf = io.BytesIO()
        Image.fromarray(ramp_image(label, height, width)).save(buf, "JPEG", quality=95,
                                                               subsampling=0)
        out.append((buf.getvalue(), label, height, width))
    return out


def write_imagenet_metadata(data_dir, num_examples):
    """The split metadata tfds would have written after preparing (sizes only)."""
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    info = builder.info
    info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[num_examples], num_bytes=0)
        for split in ("train", "validation")]))
    path = os.path.join(data_dir, "imagenet2012", str(builder.version))
    os.makedirs(path, exist_ok=True)
    info.write_to_directory(path)


def crafted_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    """Replaces tfds' file reader: the crafted examples as stored (JPEG bytes) or decoded."""
    del self, split, read_config, shuffle_files
    examples = crafted_examples()
    ds = tf.data.Dataset.from_tensor_slices(dict(
        image=tf.constant([e[0] for e in examples]),
        label=tf.constant([e[1] for e in examples], tf.int64),
        file_name=tf.constant([f"n{e[1]:08d}.JPEG" for e in examples])))
    if not (decoders and "image" in decoders):
        ds = ds.map(lambda ex: dict(ex, image=tf.io.decode_jpeg(ex["image"], channels=3)))
    return ds


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds_imagenet"))
    write_imagenet_metadata(path, N_IMAGENET)
    return path


def mock_imagenet(data_dir):
    return tfds.testing.mock_data(num_examples=N_IMAGENET, data_dir=data_dir,
                                  policy=tfds.testing.MockPolicy.USE_FILES,
                                  as_dataset_fn=crafted_as_dataset)


def imagenet_config(data_dir, **kw):
    return make_config(dataset="imagenet2012", data_dir=data_dir, batch_size=8,
                       eval_batch_size=8, **kw)


EVAL_TOL = 1.0  # uint8 levels: rounding of the resized image to uint8


def decode_like_the_pipeline(jpeg):
    """The pixels the pipeline starts from: PIL's decode (the reference's), which the
    pipeline's TensorFlow decode equals exactly (test_jpeg_decode_is_pils)."""
    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im.convert("RGB")).astype(np.float64)


def test_jpeg_decode_is_pils():
    """imagenet.DCT_METHOD: TensorFlow decodes a 4:2:0 JPEG exactly as PIL does (the
    default DCT would not), and a windowed decode equals PIL's crop except the window's
    first and last columns."""
    rng = np.random.default_rng(5)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(181, 243, 3)), 0), 1)
    smooth = (smooth - smooth.min()) / np.ptp(smooth) * 255.0
    buf = io.BytesIO()
    Image.fromarray(smooth.astype(np.uint8)).save(buf, format="JPEG", quality=85)
    jpeg = buf.getvalue()
    want = decode_like_the_pipeline(jpeg)
    got = tf.io.decode_jpeg(jpeg, channels=3, dct_method=imagenet.DCT_METHOD).numpy()
    np.testing.assert_array_equal(got, want)
    default = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    assert np.abs(default - want).max() > 0  # the check above is not vacuous
    y, x, h, w = 11, 21, 99, 149
    window = tf.image.decode_and_crop_jpeg(jpeg, [y, x, h, w], channels=3,
                                           dct_method=imagenet.DCT_METHOD).numpy()
    np.testing.assert_array_equal(window[:, 1:-1], want[y:y + h, x + 1:x + w - 1])


def bilinear_matrix(size, new):
    """(new, size) weights of a bilinear resize with half-pixel centres (TF/torchvision)."""
    src = np.clip((np.arange(new) + 0.5) * size / new - 0.5, 0, size - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, size - 1)
    m = np.zeros((new, size))
    np.add.at(m, (np.arange(new), lo), 1.0 - (src - lo))
    np.add.at(m, (np.arange(new), hi), src - lo)
    return m


def np_resize_center_crop(image):
    """NumPy float64 reference of the ImageNet eval transform: shorter side -> 256 (bilinear;
    these images are upsampled, so antialiasing does not apply), centre crop 224."""
    height, width = image.shape[:2]
    scale = 256.0 / min(height, width)
    new_h, new_w = int(round(height * scale)), int(round(width * scale))
    rows = np.einsum("yh,hwc->ywc", bilinear_matrix(height, new_h), image)
    resized = np.einsum("ywc,xw->yxc", rows, bilinear_matrix(width, new_w))
    top, left = (new_h - 224) // 2, (new_w - 224) // 2
    return np.clip(np.round(resized[top:top + 224, left:left + 224]), 0, 255)


def crop_extent(ramp_row, size):
    """The source pixel span that a (resized) ramp row covers: ramp 10..245 over size-1 px."""
    return (ramp_row.max() - ramp_row.min()) / 235.0 * (size - 1) + 1.0


@pytest.fixture(scope="module")
def imnet(mesh8, imagenet_dir):
    with mock_imagenet(imagenet_dir):
        ds = data.get_dataset(imagenet_config(imagenet_dir), mesh8)
        train0 = list(ds.train_batches(epoch=0))
        train0_again = list(ds.train_batches(epoch=0))
        train1 = list(ds.train_batches(epoch=1))
        resumed = list(ds.train_batches(epoch=0, start_step=1))
        evals = list(ds.eval_batches())
        plain = data.get_dataset(imagenet_config(imagenet_dir, augment=False), mesh8)
        train_plain = list(plain.train_batches(epoch=0))
    return dict(ds=ds, train0=train0, train0_again=train0_again, train1=train1,
                resumed=resumed, evals=evals, train_plain=train_plain)


class TestImageNet:

    def test_attributes_from_split_metadata(self, imnet):
        ds = imnet["ds"]
        assert ds.name == "imagenet2012" and ds.num_classes == 1000
        assert ds.image_shape == (224, 224, 3)
        assert ds.num_train == N_IMAGENET and ds.num_eval == N_IMAGENET
        assert ds.steps_per_epoch == N_IMAGENET // 8 == 2
        assert ds.eval_steps == 3
        assert ds.eval_split_name.startswith("validation")

    def test_train_batches_random_resized_crop_and_flip(self, imnet, mesh8):
        batches = imnet["train0"]
        assert len(batches) == 2
        for batch in batches:
            check_global_batch(batch, mesh8, 8, (224, 224, 3), ("image", "label"))
        got = stack(batches)
        labels = got["label"]
        assert ((labels >= 0) & (labels < N_IMAGENET)).all()  # crafted labels, in [0, 1000)
        assert len(set(labels.tolist())) == 16  # 16 distinct examples of 20: none twice
        u = to_uint8_scale(got["image"], IMAGENET_MEAN, IMAGENET_STD)
        np.testing.assert_allclose(u, np.round(u), atol=2e-3)  # normalised uint8, these constants
        flips = []
        for row, label in enumerate(labels):
            height, width = IMAGENET_SIZES[label % len(IMAGENET_SIZES)]
            # Image and label stay paired: G carries the label.
            np.testing.assert_allclose(u[row, ..., 1], 20.0 + 10.0 * label, atol=JPEG_TOL)
            r_row, b_col = u[row, 112, :, 0], u[row, :, 112, 2]
            # Horizontal ramp: increasing unless flipped; the vertical ramp is never flipped.
            flips.append(bool(r_row[-1] < r_row[0]))
            assert b_col[-1] >= b_col[0] - JPEG_TOL
            # RandomResizedCrop bounds (area 0.08..1 of the image, aspect 3/4..4/3), recovered
            # from the ramps' spans; 2 px slack for JPEG and the crop's integer rounding.
            crop_w, crop_h = crop_extent(r_row, width), crop_extent(b_col, height)
            assert crop_w <= width + 2 and crop_h <= height + 2
            assert crop_w * crop_h >= 0.08 * width * height - 2 * (width + height)
            assert 3 / 4 - 0.12 <= crop_w / crop_h <= 4 / 3 + 0.12, (crop_w, crop_h)
        assert any(flips) and not all(flips)
        # Crops differ between examples (area fractions are not all the same).
        areas = [np.ptp(u[r, 112, :, 0]) * np.ptp(u[r, :, 112, 2]) / 235.0**2 for r in range(16)]
        assert np.ptp(areas) > 0.1, areas

    def test_order_and_augmentation_are_functions_of_seed_epoch_and_resume(self, imnet):
        first = stack(imnet["train0"])
        again = stack(imnet["train0_again"])
        np.testing.assert_array_equal(first["label"], again["label"])
        np.testing.assert_array_equal(first["image"], again["image"])
        other_epoch = stack(imnet["train1"])
        assert not np.array_equal(first["label"], other_epoch["label"])
        assert len(imnet["resumed"]) == 1
        np.testing.assert_array_equal(np.asarray(imnet["resumed"][0]["label"]), first["label"][8:])
        np.testing.assert_array_equal(np.asarray(imnet["resumed"][0]["image"]), first["image"][8:])

    def test_eval_center_crop_every_example_once(self, imnet, mesh8):
        batches = imnet["evals"]
        assert len(batches) == 3
        for batch in batches:
            check_global_batch(batch, mesh8, 8, (224, 224, 3), ("image", "label", "mask"))
        got = stack(batches)
        np.testing.assert_array_equal(got["mask"], np.r_[np.ones(N_IMAGENET), np.zeros(4)])
        real = got["mask"] == 1
        np.testing.assert_array_equal(got["label"][real], np.arange(N_IMAGENET))  # once, in order
        u = to_uint8_scale(got["image"][real], IMAGENET_MEAN, IMAGENET_STD)
        for jpeg, label, _, _ in crafted_examples():
            expected = np_resize_center_crop(decode_like_the_pipeline(jpeg))
            np.testing.assert_allclose(u[label], expected, atol=EVAL_TOL + 1e-3)
            assert np.abs(u[label] - expected).mean() < 0.01
            # And image and label stay paired: G carries the label.
            np.testing.assert_allclose(u[label, ..., 1], 20.0 + 10.0 * label, atol=2 * JPEG_TOL)
        # Padding rows are zero images (normalised), label 0.
        pad = to_uint8_scale(got["image"][~real], IMAGENET_MEAN, IMAGENET_STD)
        np.testing.assert_allclose(pad, 0.0, atol=1e-3)
        np.testing.assert_array_equal(got["label"][~real], 0)

    def test_augment_false_uses_the_eval_crop(self, imnet):
        got = stack(imnet["train_plain"])
        evals = stack(imnet["evals"])
        for row, label in enumerate(got["label"]):
            np.testing.assert_array_equal(got["image"][row], evals["image"][label])


# ---------------------------------------------------------------------------------------------
# (c) main's path: train_and_evaluate on the mocked imagenet2012 (configs/imagenet_wrn50.py)
# ---------------------------------------------------------------------------------------------
def load_config_file(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.end_to_end
def test_train_and_evaluate_on_mocked_imagenet(tmp_path, imagenet_dir):
    from mpt_jax import loop  # noqa: PLC0415
    config = load_config_file("imagenet_wrn50")
    assert config.dataset == "imagenet2012" and config.input_pipeline == "tfds"
    config.data_dir = imagenet_dir
    config.model = "mlp"  # the data path is under test, not WRN-50-2 (too slow for a CPU test)
    config.model_options = ml_collections.ConfigDict(dict(hidden=(8,)))
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_epochs = 1
    config.warmup_epochs = 0
    config.max_train_steps = 2
    config.log_every_steps = 1
    config.progress_bar = False
    config.precision = "float32"
    with mock_imagenet(imagenet_dir):
        result = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert result["dataset"] == "imagenet2012" and result["global_step"] == 2
    assert result["num_eval"] == N_IMAGENET  # every validation example counted once
    assert result["eval_split"].startswith("validation")
    assert 0.0 <= result["final_top1"] <= 100.0 and np.isfinite(result["final_loss"])


# ---------------------------------------------------------------------------------------------
# (d) missing data (no mock): one line naming the dataset and the fix
# ---------------------------------------------------------------------------------------------
def test_imagenet_missing_manual_download(tmp_path, mesh8):
    empty = tmp_path / "tfds"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as err:
        data.get_dataset(imagenet_config(str(empty)), mesh8)
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, FileNotFoundError)
    assert "\n" not in msg
    assert "imagenet2012" in msg and str(empty / "downloads" / "manual") in msg
    assert "ILSVRC2012_img_train.tar" in msg and "ILSVRC2012_img_val.tar" in msg
    assert "--config.data_dir" in msg


def test_imagenet_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    # "~" is expanded (tfds would make a directory literally named "~").
    assert imagenet.resolve_dirs("~/tfds") == (str(tmp_path / "tfds"), None)
    assert imagenet.resolve_dirs("") == (None, None)
    # The tars directly in data_dir are the manual download.
    (tmp_path / "tfds").mkdir()
    (tmp_path / "tfds" / "ILSVRC2012_img_val.tar").write_bytes(b"")
    assert imagenet.resolve_dirs(str(tmp_path / "tfds")) == (str(tmp_path / "tfds"),) * 2


def test_cifar10_offline_download_error(tmp_path, mesh8, monkeypatch):
    import requests  # noqa: PLC0415  (a tensorflow-datasets dependency)

    def offline(self, *args, **kwargs):
        # What tfds raises here without network (measured: after ~200 s of retries).
        raise requests.ConnectionError("HTTPSConnectionPool(host='www.cs.toronto.edu', port=443): "
                                       "Max retries exceeded\nsecond line")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(DataNotFoundError) as err:
        data.get_dataset(make_config(data_dir=str(tmp_path)), mesh8)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("cifar10:")
    assert str(tmp_path) in msg and "ConnectionError" in msg and "--config.data_dir" in msg


def test_imagenet_cannot_use_in_memory(mesh8):
    with pytest.raises(DataError, match="in_memory"):
        data.get_dataset(imagenet_config("", input_pipeline="in_memory"), mesh8)


def test_install_hint_when_tensorflow_is_missing(monkeypatch, mesh8):
    # tests/test_data.py hides tensorflow_datasets; here tfds is importable, so the message
    # must name tensorflow itself.
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` raises ImportError
    with pytest.raises(DataError, match=r'tensorflow is not installed.*pip install -e "\.\[tf\]"'):
        data.get_dataset(imagenet_config(""), mesh8)
