"""Fuzzed inputs (hypothesis, derandomized so that every run tries the same cases).

* Ticket files: byte flips, truncations, inflated lengths in the header, and manifests edited
  and re-signed (so that the checksum passes and the fields themselves are tried) always end
  in a one-line TicketError or a valid ticket, never another exception, and never allocate
  much more than the file's size (tracemalloc sees NumPy's allocations).
* Image-folder archives: garbage, zero-byte and huge-dimension images, odd names, '..' paths,
  links and devices are decoded, ignored or refused by a one-line DataError, with nothing
  written outside the cache dir and no image decoded past the pixel limit.
* PyTorch checkpoints are read with weights_only=True: a pickle that runs code is refused.
"""
import io
import json
import math
import os
import re
import struct
import tarfile
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image, ImageFile

from mpt_jax import ticket as T
from mpt_jax.data import image_folder
from mpt_jax.errors import DataError
from mpt_jax.ticket import format as ticket_format

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=60,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def fixture_bytes(mode):
    with open(os.path.join(FIXTURES, f"digits_mlp_{mode}_v1.ticket"), "rb") as f:
        return f.read()


SIGNS, SEED = fixture_bytes("signs"), fixture_bytes("seed")


def load_or_refuse(data, verify_seed=True):
    """Loads ``data``; returns the ticket or the TicketError's message (one line), and
    checks the peak of traced allocations against the file's size."""
    tracemalloc.start()
    try:
        ticket = T.ticket_from_bytes(bytes(data), "fuzzed.ticket", verify_seed=verify_seed)
        outcome = ticket
    except T.TicketError as e:
        outcome = str(e)
        assert "\n" not in outcome and outcome.startswith("fuzzed.ticket")
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    # A constant for tracing a seed ticket's model; never anything the file's fields inflate.
    assert peak < 16 * len(data) + (16 << 20), f"allocated {peak:,} bytes for {len(data):,}"
    return outcome


def test_the_fixtures_load():
    assert isinstance(load_or_refuse(SIGNS), T.Ticket)
    assert isinstance(load_or_refuse(SEED, verify_seed=False), T.Ticket)


FILES = dict(signs=SIGNS, seed=SEED)


@FUZZ
@given(name=st.sampled_from(sorted(FILES)),
       flips=st.lists(st.tuples(st.integers(0, len(SIGNS) - 1), st.integers(1, 255)),
                      min_size=1, max_size=4))
def test_byte_flips(name, flips):
    original = FILES[name]
    data = bytearray(original)
    for position, mask in flips:
        data[position % len(data)] ^= mask
    outcome = load_or_refuse(data, verify_seed=False)
    if not isinstance(outcome, str):  # only the header's reserved field is unchecked
        changed = [i for i in range(len(data)) if data[i] != original[i]]
        assert all(12 <= i < 16 for i in changed), changed


@FUZZ
@given(name=st.sampled_from(sorted(FILES)), keep=st.floats(0.0, 1.0, exclude_max=True))
def test_truncations(name, keep):
    data = FILES[name]
    assert isinstance(load_or_refuse(data[:int(len(data) * keep)]), str)


@FUZZ
@given(length=st.one_of(st.integers(0, 2**64 - 1), st.integers(3600, 3700)))
def test_inflated_manifest_length_in_the_header(length):
    data = bytearray(SIGNS)
    struct.pack_into("<Q", data, 16, length)
    outcome = load_or_refuse(data)
    assert isinstance(outcome, str) or length == struct.unpack_from("<Q", SIGNS, 16)[0]


def split(data):
    magic, version, reserved, length, _ = ticket_format._HEADER.unpack_from(data)
    body = data[ticket_format.HEADER_BYTES:]
    return json.loads(body[:length]), body[length:]


def signed(manifest, payload):
    """A ticket file around ``manifest`` with a matching checksum: a forged file that only
    the manifest's own checks can refuse."""
    import hashlib
    raw = json.dumps(manifest).encode()
    digest = hashlib.sha256(raw + payload).digest()
    return ticket_format._HEADER.pack(ticket_format.MAGIC, ticket_format.FORMAT_VERSION, 0,
                                      len(raw), digest) + raw + payload


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                    | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=8)
HUGE = st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1, -1, -2**40, 10**30])


def paths(value, prefix=()):
    """Every path (tuple of keys / indices) into a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths(v, prefix + (i,))


def replaced(value, path, new):
    if not path:
        return new
    out = list(value) if isinstance(value, list) else dict(value)
    out[path[0]] = replaced(value[path[0]], path[1:], new)
    return out


MANIFESTS = {mode: split(data) for mode, data in (("signs", SIGNS), ("seed", SEED))}
PATHS = {mode: [p for p in paths(m) if p and p[0] != "extra"]
         for mode, (m, _) in MANIFESTS.items()}


@FUZZ
@given(mode=st.sampled_from(["signs", "seed"]), data=st.data(),
       new=st.one_of(JSON, HUGE, st.lists(HUGE, min_size=1, max_size=3)))
def test_re_signed_manifests_with_edited_fields(mode, data, new):
    manifest, payload = MANIFESTS[mode]
    path = data.draw(st.sampled_from(PATHS[mode]))
    load_or_refuse(signed(replaced(manifest, path, new), payload))


@FUZZ
@given(factor=st.sampled_from([2, 1000, 2**20, 2**40]), which=st.integers(0, 6))
def test_inflated_array_and_layer_sizes(factor, which):
    manifest, payload = MANIFESTS["signs"]
    entry = dict(manifest["arrays"][which])
    entry.update(shape=[entry["shape"][0] * factor], nbytes=entry["nbytes"] * factor)
    arrays = list(manifest["arrays"])
    arrays[which] = entry
    assert isinstance(load_or_refuse(signed(dict(manifest, arrays=arrays), payload)), str)
    layers = [dict(manifest["layers"][0], shape=[64 * factor, 256])] + manifest["layers"][1:]
    assert isinstance(load_or_refuse(signed(dict(manifest, layers=layers), payload)), str)


def test_seed_ticket_with_a_huge_model_is_refused_before_drawing_weights():
    """A forged seed ticket whose options describe a far larger model than its masks: the
    shapes are compared abstractly, nothing of the model's size is allocated."""
    manifest, payload = MANIFESTS["seed"]
    options = dict(manifest["model_options"], hidden=[2**14, 2**14])  # 1 GB of float32 W
    message = load_or_refuse(signed(dict(manifest, model_options=options), payload))
    assert "the model of the manifest has no layer" in message
    image = dict(manifest, image_shape=[2**16, 2**16, 3])
    assert "implausible image_shape" in load_or_refuse(signed(image, payload))


# ---------------------------------------------------------------------------
# Image-folder archives


def png(size=(8, 8), mode="RGB", value=0):
    out = io.BytesIO()
    Image.new(mode, size, value).save(out, format="PNG")
    return out.getvalue()


GOOD, BOMB = png(), png((9000, 9000), "L")  # the bomb: ~80 KB declaring 81 Mpixels
SEGMENTS = st.sampled_from(["train", "test", "cat", "dog", "..", ".", "", "a b", "é", "x" * 60,
                            ".hidden", "train\\cat"])
NAMES = st.builds(lambda parts, ext: "/".join(parts) + ext,
                  st.lists(SEGMENTS, min_size=1, max_size=5),
                  st.sampled_from([".png", ".jpg", ".txt", "", ".PNG"]))
CONTENTS = st.sampled_from(["good", "garbage", "empty", "bomb", "gray", "big"])
KINDS = st.sampled_from(["file", "file", "file", "symlink", "hardlink", "dir", "fifo"])


def member(tar, name, kind, content, rng):
    info = tarfile.TarInfo(name)
    data = {"good": GOOD, "garbage": rng.bytes(100), "empty": b"", "bomb": BOMB,
            "gray": png(mode="L"), "big": png((16, 16))}[content]
    if kind == "file":
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        return
    info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                 "dir": tarfile.DIRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
    info.linkname = "../../../../etc/passwd"
    tar.addfile(info)


def tree(root):
    return sorted(os.path.relpath(os.path.join(r, n), root)
                  for r, dirs, names in os.walk(root) for n in names + dirs)


@FUZZ
@given(members=st.lists(st.tuples(NAMES, KINDS, CONTENTS), min_size=1, max_size=8),
       seed=st.integers(0, 2**32 - 1))
def test_fuzzed_archives(tmp_path_factory, members, seed):
    base = tmp_path_factory.mktemp("archive")
    archive, cache = str(base / "in" / "data.tar"), str(base / "cache")
    os.makedirs(os.path.dirname(archive))
    rng = np.random.default_rng(seed)
    with tarfile.open(archive, "w") as tar:
        for name, kind, content in [("train/cat/0.png", "file", "good")] + members:
            member(tar, name, kind, content, rng)
    work = base / "work"
    work.mkdir()
    old = os.getcwd()
    os.chdir(work)
    try:
        arrays = image_folder.read_image_folder(archive, cache_dir=cache)
        assert arrays["train_images"].shape[1:] in ((8, 8, 3), (8, 8, 1), (16, 16, 3))
        assert math.prod(arrays["train_images"].shape) < (1 << 20)
    except DataError as e:
        message = str(e)
        assert "\n" not in message and message.startswith(archive)
        if "bomb" in message:
            assert "9000 x 9000" in message
    finally:
        os.chdir(old)
    # Nothing written outside the cache dir (no member was ever extracted).
    assert tree(str(base)) == sorted(["in", "in/data.tar", "work", "cache"]
                                     + [os.path.join("cache", n) for n in os.listdir(cache)]
                                     if os.path.isdir(cache) else ["in", "in/data.tar", "work"])


@pytest.mark.parametrize("name,kind,content,refusal", [
    ("../train/cat/1.png", "file", "good", "has an unsafe path"),
    ("/train/cat/1.png", "file", "good", "has an unsafe path"),
    ("train/cat/1.png", "symlink", "good", "is a link (to '../../../../etc/passwd')"),
    ("train/cat/1.png", "hardlink", "good", "is a link"),
    ("train/cat/1.png", "fifo", "good", "is not a regular file"),
    ("train/cat/1.png", "file", "empty", "train/cat/1.png: corrupt or truncated image"),
    ("train/cat/1.png", "file", "garbage", "train/cat/1.png: corrupt or truncated image"),
    ("train/cat/1.png", "file", "bomb", "image declares 9000 x 9000 pixels"),
])
def test_each_bad_member_is_refused_by_name(tmp_path, name, kind, content, refusal):
    archive = str(tmp_path / "data.tar")
    with tarfile.open(archive, "w") as tar:
        member(tar, "train/cat/0.png", "file", "good", np.random.default_rng(0))
        member(tar, name, kind, content, np.random.default_rng(0))
    with pytest.raises(DataError) as e:
        image_folder.read_image_folder(archive, cache_dir=None)
    assert refusal in str(e.value) and name.lstrip("/") in str(e.value)


def test_the_pixel_limit_is_checked_before_decoding(monkeypatch):
    """The bomb is refused from its header: PIL's decoder is never called."""
    def no_decoding(self, *args, **kwargs):
        raise AssertionError("decoded")
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(DataError, match=r"declares 9000 x 9000 pixels"):
        image_folder._decode_image(BOMB, "bomb.png")


# ---------------------------------------------------------------------------
# PyTorch checkpoints


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_torch_checkpoints_load_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (the torch extra)")
    from mpt_jax.ticket import torch_import
    marker = str(tmp_path / "code-was-run")
    path = str(tmp_path / "evil.pth")
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(T.TicketError, match=r"with weights_only=True"):
        torch_import.load_state_dict(path)
    assert not os.path.exists(marker)


def test_every_torch_load_in_the_package_is_weights_only():
    root = os.path.join(os.path.dirname(os.path.dirname(__file__)), "mpt_jax")
    calls = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name.endswith(".py"):
                text = open(os.path.join(dirpath, name)).read()
                calls += [(name, m.group(0)) for m in re.finditer(r"torch\.load\([^)]*\)", text)]
    assert calls and all("weights_only=True" in call for _, call in calls), calls
