"""Converts the standard CIFAR-10 download into the image-folder layout mpt_jax reads.

    python -m mpt_jax.data.convert_cifar --src=cifar-10-python.tar.gz --out=cifar10.tar
    python -m mpt_jax.data.convert_cifar --src=cifar-10-batches-py/ --out=cifar10/

``--src`` is the "CIFAR-10 python version" that torchvision's ``datasets.CIFAR10`` and
Keras' ``cifar10.load_data`` download (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz),
either the archive or its extracted ``cifar-10-batches-py`` folder. The output holds
``train/<class>/NNNNN.png`` (50,000 images) and ``test/<class>/NNNNN.png`` (10,000), PNG so
the pixels are exactly the dataset's. An ``--out`` ending in .tar / .tar.gz / .tgz is written
as an archive, anything else as a folder. Then train on it with
``--config.data_dir=cifar10.tar``: with a test/ split present, evaluation uses the real
CIFAR-10 test set (and all 50,000 training images train), so accuracies are directly
comparable with the paper's.

The batches are pickled dicts, read here with a restricted unpickler that accepts only
plain containers, numbers, strings, bytes and numpy arrays (a pickle from elsewhere cannot
run code).
"""
from __future__ import annotations

import argparse
import io
import os
import pickle
import sys
import tarfile
import tempfile

import numpy as np
from PIL import Image

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
               "ship", "truck")


class ConvertError(ValueError):
    """The source is not the CIFAR-10 python version (message says what and the fix)."""


# What the CIFAR-10 batches reference besides builtin containers: numpy's array and dtype
# reconstruction (the module moved from numpy.core to numpy._core in NumPy 2).
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype")}


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles builtin containers, scalars and numpy arrays only: a pickle that names any
    other callable (which could run code) is refused."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise ConvertError(f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only "
                           f"arrays and plain data (is this the CIFAR-10 python version?)")


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _PlainUnpickler(io.BytesIO(data), encoding="bytes").load()
    except ConvertError:
        raise
    except Exception as e:  # noqa: BLE001  (any malformed pickle)
        raise ConvertError(f"{where} is not a readable CIFAR-10 batch ({e.__class__.__name__}); "
                           f"download cifar-10-python.tar.gz again") from None
    if not isinstance(obj, dict):
        raise ConvertError(f"{where} is not a CIFAR-10 batch (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_source(src: str) -> dict[str, bytes]:
    """{member name: bytes} of the batch files in an archive or a folder."""
    wanted = set(TRAIN_BATCHES) | {TEST_BATCH, META}
    found = {}
    if os.path.isdir(src):
        for name in wanted:
            path = os.path.join(src, name)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    found[name] = f.read()
    elif os.path.isfile(src):
        try:
            with tarfile.open(src) as tar:
                for member in tar:
                    base = os.path.basename(member.name)
                    if member.isfile() and base in wanted:
                        found[base] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ConvertError(f"--src={src} is not a readable .tar.gz ({e}); pass "
                               f"cifar-10-python.tar.gz or its extracted cifar-10-batches-py/") from None
    else:
        raise ConvertError(f"--src={src} does not exist; pass cifar-10-python.tar.gz or its "
                           f"extracted cifar-10-batches-py/ folder")
    missing = sorted((set(TRAIN_BATCHES) | {TEST_BATCH}) - set(found))
    if missing:
        raise ConvertError(f"--src={src} lacks {', '.join(missing)}: is it the CIFAR-10 *python* "
                           f"version (cifar-10-python.tar.gz)?")
    return found


def batch_arrays(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) of one batch file."""
    batch = _unpickle(data, where)
    try:
        flat = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except KeyError as e:
        raise ConvertError(f"{where} has no {e.args[0]!r} entry: not a CIFAR-10 batch") from None
    if flat.ndim != 2 or flat.shape[1] != 3072 or len(labels) != len(flat):
        raise ConvertError(f"{where}: data of shape {flat.shape} with {len(labels)} labels; a "
                           f"CIFAR-10 batch holds N x 3072 pixels and N labels")
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(CLASS_NAMES):
        raise ConvertError(f"{where}: labels outside 0..9")
    # Each row is the red plane, then green, then blue, each 32x32 row-major.
    return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def class_names(found: dict[str, bytes]) -> tuple[str, ...]:
    if META not in found:
        return CLASS_NAMES
    names = _unpickle(found[META], META).get("label_names")
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in (names or ()))
    return names if len(names) == len(CLASS_NAMES) else CLASS_NAMES


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def iter_images(found: dict[str, bytes]):
    """(split/class/NNNNN.png, PNG bytes) for every image, numbered per split in file order."""
    names = class_names(found)
    for split, batches in (("train", TRAIN_BATCHES), ("test", (TEST_BATCH,))):
        index = 0
        for batch in batches:
            images, labels = batch_arrays(found[batch], batch)
            for image, label in zip(images, labels):
                yield f"{split}/{names[label]}/{index:05d}.png", png_bytes(image)
                index += 1


def convert(src: str, out: str) -> int:
    """Writes the layout to ``out`` (archive or folder) atomically; returns the image count."""
    found = read_source(src)
    archive = out.endswith((".tar", ".tar.gz", ".tgz"))
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    count = 0
    if archive:
        fd, tmp = tempfile.mkstemp(dir=parent, suffix=".tmp")
        os.close(fd)
        try:
            with tarfile.open(tmp, "w:gz" if out.endswith(("gz", "tgz")) else "w") as tar:
                for name, data in iter_images(found):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                    count += 1
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return count
    if os.path.exists(out) and os.listdir(out):
        raise ConvertError(f"--out={out} exists and is not empty; choose a new folder")
    tmp = tempfile.mkdtemp(dir=parent, prefix=".convert_cifar_")
    for name, data in iter_images(found):
        path = os.path.join(tmp, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        count += 1
    if os.path.exists(out):
        os.rmdir(out)
    os.replace(tmp, out)
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True,
                        help="cifar-10-python.tar.gz or its extracted cifar-10-batches-py/")
    parser.add_argument("--out", required=True,
                        help="cifar10.tar (.tar.gz) or a new folder")
    args = parser.parse_args(argv)
    try:
        count = convert(args.src, args.out)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {count:,} images to {args.out} (train/ and test/, PNG); train with "
          f"--config.data_dir={args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
