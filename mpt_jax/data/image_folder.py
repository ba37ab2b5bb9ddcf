"""Image-folder source: `<root>/train/<class>/*.jpg|png` (+ optional `<root>/test/<class>/...`),
as a directory tree or a .tar / .tar.gz archive in that layout (like
../shared/data/cifar10_train_jpeg.tar.gz), decoded once with PIL and cached as .npz.

Class order = sorted class-folder names (for CIFAR-10 this is also the standard label order).
Inside a class, images are ordered by file name, so "the last N images of a class" (the
held-out split) is well defined. Every bad input raises DataError naming the file.
The cache lives in `default_cache_dir()` unless the caller gives another (config.cache_dir).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import logging
import os
import tarfile
import tempfile
import time
import zipfile
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from mpt_jax.data import registry, sources
from mpt_jax.errors import DataError, DataNotFoundError
from mpt_jax.stages import echo, stage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".webp", ".tif",
                    ".tiff")
SPLITS = ("train", "test")
CACHE_FORMAT_VERSION = "1"
_DECODE_CHUNK = 1024
# Untrusted archives: an image is refused before decoding when its header declares more
# pixels than this (a decompression bomb: a few KB of PNG can declare gigapixels), and an
# archive member larger than MAX_MEMBER_BYTES is refused before it is read.
MAX_IMAGE_PIXELS = 1 << 25  # e.g. 5792 x 5792
MAX_MEMBER_BYTES = 1 << 28

LAYOUT_HINT = ("expected <root>/train/<class name>/<image>.jpg|png (optionally also "
               "test/<class>/...)")

# (class name, file name, encoded bytes or a path) for one split.
_Entry = Tuple[str, str, object]


def default_cache_dir() -> str:
    """Where decoded datasets (and, by the config's cache_dir, compiled steps) are cached:
    $XDG_CACHE_HOME/mpt_jax, else ~/.cache/mpt_jax (the XDG default)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"),
                        "mpt_jax")


DEFAULT_CACHE_DIR = default_cache_dir()


def is_archive(path: str) -> bool:
    return path.endswith((".tar", ".tar.gz", ".tgz"))


def is_image_folder(path: str) -> bool:
    """Whether ``path`` (a data_dir) looks like an image folder: an archive, a file, or a
    directory with a train/ folder."""
    path = os.path.expanduser(path)
    return is_archive(path) or os.path.isfile(path) or os.path.isdir(os.path.join(path, "train"))


def _is_image_name(name: str) -> bool:
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


# ----------------------------------------------------------------------------------------------
# Listing: archive or directory -> {split: [(class, file, data)]}, {split: set(class dirs)}
# ----------------------------------------------------------------------------------------------
def _split_member(name: str):
    """('train', 'cat', '0001.jpg') for '[prefix/]train/cat/0001.jpg'; None if not that layout."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    hits = [i for i, part in enumerate(parts) if part in SPLITS]
    if not hits:
        return None
    # Prefer the split component that sits exactly at <split>/<class>/<file> (a prefix folder
    # may itself be called "test" or "train").
    i = next((i for i in hits if len(parts) - i == 3), hits[-1])
    return parts[i], parts[i + 1:]


def _list_archive(path: str):
    """Streams the archive once (tarfile 'r|*', works for .tar and .tar.gz); returns entries
    with the encoded bytes, and the class directories seen (to catch empty class folders)."""
    entries: Dict[str, List[_Entry]] = {s: [] for s in SPLITS}
    class_dirs: Dict[str, set] = {s: set() for s in SPLITS}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                _check_member_path(path, member.name)
                where = _split_member(member.name)
                if where is None:
                    continue
                split, rest = where
                if member.isdir():
                    if len(rest) == 1:
                        class_dirs[split].add(rest[0])
                    continue
                if not _is_image_name(member.name):
                    continue
                _check_member_kind(path, member)
                if len(rest) != 2:
                    raise DataError(f"{path}: member {member.name!r} is not in the image-folder "
                                    f"layout; {LAYOUT_HINT}")
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise DataError(f"{path}: member {member.name!r} is truncated; the archive is "
                                    f"incomplete, download or copy it again")
                class_dirs[split].add(rest[0])
                entries[split].append((rest[0], rest[1], data))
    except (tarfile.TarError, EOFError, OSError, zipfile.BadZipFile) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: cannot read the archive ({type(e).__name__}: {e}); it is corrupt "
                        f"or truncated, or not a .tar/.tar.gz file") from None
    return entries, class_dirs


def _check_member_path(path: str, name: str) -> None:
    """Refuses a member whose name leaves the archive's tree (``..``, absolute). Nothing is
    ever extracted to disk, but such a name marks a crafted or broken archive."""
    if name.startswith("/") or ".." in name.split("/"):
        raise DataError(f"{path}: member {name!r} has an unsafe path (absolute or with '..'); "
                        "an image-folder archive holds relative paths only")


def _check_member_kind(path: str, member: tarfile.TarInfo) -> None:
    """An image member must be a regular file of a sane size: links and devices named like
    images are refused by name, as are members too large to be one image."""
    if member.issym() or member.islnk():
        raise DataError(f"{path}: member {member.name!r} is a link (to {member.linkname!r}); "
                        "the archive must hold the image files themselves")
    if not member.isfile():
        raise DataError(f"{path}: member {member.name!r} is not a regular file")
    if member.size > MAX_MEMBER_BYTES:
        raise DataError(f"{path}: member {member.name!r} is {member.size:,} bytes, more than "
                        f"{MAX_MEMBER_BYTES:,} for one image")


def _list_directory(root: str):
    entries: Dict[str, List[_Entry]] = {s: [] for s in SPLITS}
    class_dirs: Dict[str, set] = {s: set() for s in SPLITS}
    for split in SPLITS:
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            continue
        for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_file() and _is_image_name(entry.name):
                raise DataError(f"{entry.path}: image directly under {split}/ is not in the "
                                f"image-folder layout; {LAYOUT_HINT}")
            if not entry.is_dir():
                continue
            class_dirs[split].add(entry.name)
            for f in os.scandir(entry.path):
                if f.is_file() and _is_image_name(f.name):
                    entries[split].append((entry.name, f.name, f.path))
    return entries, class_dirs


def _directory_fingerprint(root: str) -> str:
    """Hash of every (relative path, size, mtime) below root: changes when any file changes."""
    h = hashlib.sha1()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            h.update(f"{os.path.relpath(p, root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------
def _decode_image(data, where: str, mode: Optional[str] = None) -> np.ndarray:
    """Decodes one image (bytes or a path) to uint8 HWC; DataError naming `where` if corrupt."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            if im.width * im.height > MAX_IMAGE_PIXELS:  # from the header: nothing decoded yet
                raise DataError(f"{where}: image declares {im.width} x {im.height} pixels, "
                                f"more than the {MAX_IMAGE_PIXELS:,} this loader decodes "
                                "(a decompression bomb, or far too large); resize or delete it")
            im.load()  # forces the full decode so truncated files fail here, not later
            if mode is None:
                mode = "L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"
            arr = np.asarray(im.convert(mode), dtype=np.uint8)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001  (PIL's decoders fail on garbage in many ways)
        raise DataError(f"{where}: corrupt or truncated image ({type(e).__name__}: "
                        f"{str(e)[:200]}); replace or delete this file") from None
    return arr[..., None] if arr.ndim == 2 else arr


def _decode_chunk(items, wheres, mode, shape, out, start):
    for i, (data, where) in enumerate(zip(items, wheres)):
        arr = _decode_image(data, where, mode)
        if arr.shape != shape:
            raise DataError(f"{where}: image has shape {arr.shape} but the first image has "
                            f"{shape}; the in-memory pipeline needs equal sizes, resize the images")
        out[start + i] = arr


def _decode_all(datas: List, wheres: List[str], num_workers: Optional[int] = None) -> np.ndarray:
    """Decodes all images into one uint8 array (N, H, W, C).

    The first image fixes size and channel count (grayscale -> 1 channel, anything else -> RGB).
    Chunks of images are decoded in a thread pool (PIL releases the GIL while decoding).
    """
    first = _decode_image(datas[0], wheres[0])
    mode = "L" if first.shape[-1] == 1 else "RGB"
    out = np.empty((len(datas),) + first.shape, np.uint8)
    num_workers = num_workers or min(8, os.cpu_count() or 1)
    starts = range(0, len(datas), _DECODE_CHUNK)
    if num_workers <= 1 or len(datas) <= _DECODE_CHUNK:
        _decode_chunk(datas, wheres, mode, first.shape, out, 0)
        return out
    with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
        futures = [pool.submit(_decode_chunk, datas[s:s + _DECODE_CHUNK],
                               wheres[s:s + _DECODE_CHUNK], mode, first.shape, out, s)
                   for s in starts]
        for f in futures:
            f.result()  # re-raises the first DataError
    return out


# ----------------------------------------------------------------------------------------------
# Reading + caching
# ----------------------------------------------------------------------------------------------
def _check_layout(path, entries, class_dirs):
    if not entries["train"]:
        raise DataError(f"{path}: no images found under train/<class>/; {LAYOUT_HINT}")
    for split in SPLITS:
        empty = sorted(class_dirs[split] - {c for c, _, _ in entries[split]})
        if empty:
            raise DataError(f"{path}: class folder {split}/{empty[0]}/ contains no images; add "
                            f"images or remove the folder")
    extra = sorted(class_dirs["test"] - class_dirs["train"])
    if extra:
        raise DataError(f"{path}: test/{extra[0]}/ has no matching train/{extra[0]}/ folder; the "
                        f"test split must use the training classes")


def _decode_splits(path: str, archive: bool, cache_note: str = ""):
    """Lists and decodes the tree or archive, saying what it does (decoding 50,000 JPEGs
    takes ~15 s on two cores; ``cache_note`` says where the result will be kept)."""
    with stage(f"reading {path}"):
        entries, class_dirs = _list_archive(path) if archive else _list_directory(path)
    _check_layout(path, entries, class_dirs)
    class_names = sorted(class_dirs["train"])
    index = {c: i for i, c in enumerate(class_names)}
    arrays = {"class_names": np.asarray(class_names)}
    count = sum(len(entries[split]) for split in SPLITS)
    with stage(f"decoding {count:,} images{cache_note}"):
        for split in SPLITS:
            items = sorted(entries[split], key=lambda e: (index[e[0]], e[1]))
            if not items:
                continue
            wheres = [f"{path}:{split}/{c}/{f}" if archive else os.path.join(path, split, c, f)
                      for c, f, _ in items]
            arrays[f"{split}_images"] = _decode_all([d for _, _, d in items], wheres)
            arrays[f"{split}_labels"] = np.asarray([index[c] for c, _, _ in items], np.int32)
    train_shape = arrays["train_images"].shape[1:]
    if "test_images" in arrays and arrays["test_images"].shape[1:] != train_shape:
        raise DataError(f"{path}: test images have shape {arrays['test_images'].shape[1:]} but "
                        f"train images {train_shape}; use one image size")
    return arrays


def _cache_path(path: str, archive: bool, cache_dir: str) -> str:
    real = os.path.realpath(path)
    if archive:
        st = os.stat(real)
        key = f"{real}|{st.st_size}|{st.st_mtime_ns}|v{CACHE_FORMAT_VERSION}"
    else:
        key = f"{real}|{_directory_fingerprint(real)}|v{CACHE_FORMAT_VERSION}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    base = os.path.basename(real.rstrip(os.sep)).split(".")[0] or "images"
    return os.path.join(os.path.expanduser(cache_dir), f"imagefolder-{base}-{digest}.npz")


def _save_atomic(arrays: dict, target: str):
    """Writes the .npz under a temporary name in the same directory, then os.replace: a killed
    run never leaves a half-written cache under the final name."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared between users
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_image_folder(path: str, cache_dir: Optional[str] = DEFAULT_CACHE_DIR) -> dict:
    """Decoded arrays of an image-folder tree or archive (cached; see module docstring).

    Returns a dict with class_names (str array), train_images (uint8 NHWC), train_labels (int32)
    and, when a test/ split exists, test_images and test_labels. cache_dir=None disables caching.
    """
    if not path:
        raise DataNotFoundError("data_dir is empty; set --config.data_dir to an image-folder root "
                                "or a .tar/.tar.gz archive")
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise DataNotFoundError(f"{path}: no such archive or directory; check --config.data_dir")
    archive = os.path.isfile(path)
    if not archive and not os.path.isdir(os.path.join(path, "train")):
        raise DataError(f"{path}: directory has no train/ folder; {LAYOUT_HINT}")
    target = _cache_path(path, archive, cache_dir) if cache_dir else None
    if target and os.path.exists(target):
        try:
            start = time.perf_counter()
            with np.load(target, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            count = sum(len(arrays.get(f"{split}_labels", ())) for split in SPLITS)
            echo(f"{count:,} images of {path} read from the cache {target} "
                 f"({time.perf_counter() - start:.1f} s)")
            return arrays
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            logging.warning("ignoring unreadable cache %s (%s); decoding again", target, e)
    note = f" (once: kept in the cache {target})" if target else " (no cache: cache_dir is empty)"
    arrays = _decode_splits(path, archive, note)
    if target:
        try:
            _save_atomic(arrays, target)
        except OSError as e:  # a read-only or full cache dir must not stop training
            logging.warning("could not write the decoded-image cache %s (%s)", target, e)
    return arrays


def load_image_folder(path: str, name: str = "image_folder", holdout_per_class: int = 0,
                      cache_dir: Optional[str] = DEFAULT_CACHE_DIR) -> sources.ArraySource:
    """An ArraySource from an image-folder tree or archive, read as dataset ``name``.

    Eval split: the test/ split when the tree has one (the training split is then used whole);
    otherwise the LAST `holdout_per_class` images (by sorted file name) of every class of train.
    A dataset whose registry entry fixes its classes (CIFAR-10) must find exactly those, at its
    image shape, and gets the entry's normalisation and augmentation; any other folder is
    normalised with its training split's per-channel mean/std, and RGB images get the
    pad/crop/flip augmentation.
    """
    info = registry.get(name)
    arrays = read_image_folder(path, cache_dir)
    class_names = tuple(str(c) for c in arrays["class_names"])
    (train_x, train_y), (eval_x, eval_y), eval_name = _split(path, arrays, holdout_per_class)
    if info.class_names is not None:
        if class_names != info.class_names or train_x.shape[1:] != info.image_shape:
            raise DataError(f"{path}: not {info.title} (classes {list(class_names)}, image shape "
                            f"{train_x.shape[1:]}); use --config.dataset=image_folder for other "
                            f"data")
        mean, std, policy = info.mean, info.std, info.augment_policy
    else:
        mean, std = sources.channel_stats(train_x)
        policy = "pad_crop_flip" if train_x.shape[-1] == 3 else "none"
    return sources.ArraySource(name=name, class_names=class_names, train_images=train_x,
                               train_labels=train_y, eval_images=eval_x, eval_labels=eval_y,
                               eval_split_name=eval_name, mean=tuple(mean), std=tuple(std),
                               augment_policy=policy)


def _split(path: str, arrays: dict, holdout_per_class: int):
    """((train x, y), (eval x, y), eval split name): test/ if there is one, else a hold-out."""
    train_x, train_y = arrays["train_images"], arrays["train_labels"]
    if "test_images" in arrays:
        eval_y = arrays["test_labels"]
        return (train_x, train_y), (arrays["test_images"], eval_y), \
            f"test ({len(eval_y):,} images)"
    if holdout_per_class <= 0:
        raise DataError(f"{path}: has no test/ split and holdout_per_class={holdout_per_class}; "
                        f"set --config.holdout_per_class to a positive number (e.g. 500 for "
                        f"CIFAR-10)")
    train_idx, eval_idx = sources.holdout_last_per_class(train_y, holdout_per_class)
    name = sources.held_out_name(holdout_per_class, len(eval_idx))
    return (train_x[train_idx], train_y[train_idx]), (train_x[eval_idx], train_y[eval_idx]), name
