"""mpt_jax.data.convert_cifar: the CIFAR-10 python batches become train/ and test/ image
folders whose pixels are exactly the batches' (checked against the raw bytes' own plane
layout, not the converter's reshape), which the image-folder loader reads as CIFAR-10 with
its real test split; bad sources are refused by name."""
import os
import pickle
import tarfile

import numpy as np
import pytest

from mpt_jax.data import convert_cifar as C
from mpt_jax.data import image_folder

NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
         b"ship", b"truck"]


def make_batches(folder, per_batch=4, test=10, seed=0):
    """A small cifar-10-batches-py folder; returns {split: (raw rows, labels)}."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    raw = {"train": ([], []), "test": ([], [])}
    for b, (name, n, split) in enumerate(
            [(f"data_batch_{i}", per_batch, "train") for i in range(1, 6)] + [
                ("test_batch", test, "test")]):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [(b * n + j) * 7 % 10 for j in range(n)]  # every class present, mixed order
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, f)
        raw[split][0].append(data)
        raw[split][1].extend(labels)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": NAMES, b"num_vis": 3072}, f)
    return {k: (np.concatenate(v[0]), np.asarray(v[1])) for k, v in raw.items()}


def pixel(rows, i, y, x, c):
    """Pixel (y, x) channel c of image i, read the way the CIFAR page documents the rows:
    1024 red values, then 1024 green, then 1024 blue, each plane row-major 32x32."""
    return rows[i, c * 1024 + y * 32 + x]


def expected_images(rows):
    out = np.zeros((len(rows), 32, 32, 3), np.uint8)
    for i in range(len(rows)):
        for c in range(3):
            for y in range(32):
                for x in range(32):
                    out[i, y, x, c] = pixel(rows, i, y, x, c)
    return out


@pytest.mark.parametrize("out_name", ["cifar10.tar", "cifar10.tar.gz", "cifar10_folder"])
@pytest.mark.parametrize("as_archive", [False, True])
def test_convert_is_lossless_and_loads_as_cifar10(tmp_path, out_name, as_archive):
    src = tmp_path / "cifar-10-batches-py"
    raw = make_batches(str(src))
    if as_archive:
        archive = tmp_path / "cifar-10-python.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(src, arcname="cifar-10-batches-py")
        src = archive
    out = tmp_path / out_name
    assert C.main([f"--src={src}", f"--out={out}"]) == 0
    arrays = image_folder.read_image_folder(str(out), cache_dir=None)
    assert [str(c) for c in arrays["class_names"]] == [n.decode() for n in NAMES]
    for split in ("train", "test"):
        rows, labels = raw[split]
        images = expected_images(rows)
        # The loader orders images by class, then by file name (= index in the split).
        order = np.argsort(labels, kind="stable")
        np.testing.assert_array_equal(arrays[f"{split}_images"], images[order])
        np.testing.assert_array_equal(arrays[f"{split}_labels"], labels[order])
    source = image_folder.load_image_folder(str(out), name="cifar10", holdout_per_class=500,
                                            cache_dir=None)
    assert source.eval_split_name == "test (10 images)"  # the real test split, not a hold-out
    assert len(source.train_labels) == 20  # every training image trains


def test_bad_sources_are_refused_by_name(tmp_path, capsys):
    assert C.main([f"--src={tmp_path / 'nope'}", f"--out={tmp_path / 'o.tar'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    src = tmp_path / "batches"
    make_batches(str(src))
    os.remove(src / "test_batch")
    assert C.main([f"--src={src}", f"--out={tmp_path / 'o.tar'}"]) == 2
    assert "lacks test_batch" in capsys.readouterr().err
    assert not (tmp_path / "o.tar").exists()  # nothing half-written
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar at all")
    assert C.main([f"--src={tmp_path / 'junk.tar.gz'}", f"--out={tmp_path / 'o.tar'}"]) == 2
    assert "not a readable .tar.gz" in capsys.readouterr().err


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    src = tmp_path / "batches"
    make_batches(str(src))
    with open(src / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(C.ConvertError, match="refusing to unpickle"):
        C.convert(str(src), str(tmp_path / "o.tar"))
    assert not (tmp_path / "o.tar").exists()
