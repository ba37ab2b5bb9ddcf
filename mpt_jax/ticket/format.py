"""The ticket file: writing, reading and validating it.

One file, little endian::

    header  = magic b"MPTJAXTK" | format version u32 | reserved u32 | manifest length u64
              | sha256 of (manifest bytes + payload), 32 bytes           (56 bytes)
    manifest = UTF-8 JSON: model name and options, keep_fraction, mode, versions, metrics,
              per layer path/shape/kept/signs hash, and the byte layout of every array
    payload  = the arrays, back to back (offsets and dtypes in the manifest)

Per prunable layer the payload holds ``np.packbits`` of the mask (1 bit per weight) and,
in mode "signs", the packed sign bits of the KEPT weights only (k bits per weight); one
float32 alpha per layer. In mode "seed" no weight information is stored: the random
weights are regenerated from the recorded PRNG key (``mpt_jax.ticket.seed``) and the sha256
of the kept sign bits recorded in the manifest is checked on load. Budgets: <= 1.1 bits per
prunable weight ("seed") and <= 2.2 ("signs"), BatchNorm arrays and the manifest excluded
(``mpt_jax.ticket.summary`` reports them separately).

Every malformed, truncated, corrupted or mismatched file raises ``TicketError`` (a
ValueError) with a one-line message; nothing is silently reinterpreted.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from typing import Sequence

import jax
import numpy as np

import mpt_jax
from mpt_jax.ticket import seed
from mpt_jax.ticket.core import MODES, SEP, LayerTicket, Ticket, TicketError

MAGIC = b"MPTJAXTK"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIIQ32s")
HEADER_BYTES = _HEADER.size


def _layout(arrays: Sequence[tuple[str, np.ndarray]]):
    entries, offset, chunks = [], 0, []
    for name, arr in arrays:
        arr = np.ascontiguousarray(arr)
        data = arr.tobytes()
        entries.append(dict(name=name, dtype=arr.dtype.str, shape=list(arr.shape),
                            offset=offset, nbytes=len(data)))
        chunks.append(data)
        offset += len(data)
    return entries, b"".join(chunks)


def ticket_bytes(ticket: Ticket) -> bytes:
    """The file contents of ``ticket`` (see the module docstring)."""
    arrays = []
    layer_entries = []
    for i, lt in enumerate(ticket.layers):
        arrays.append((f"layer{i}/mask", np.packbits(lt.mask.reshape(-1))))
        if ticket.mode == "signs":
            arrays.append((f"layer{i}/signs", np.packbits(lt.signs[lt.mask])))
        layer_entries.append(dict(path=list(lt.path), shape=list(lt.shape), kept=lt.kept,
                                  signs_sha256=lt.signs_sha256()))
    arrays.append(("alphas", np.array([lt.alpha for lt in ticket.layers], np.float32)))
    for name, arr in ticket.others.items():
        arrays.append((name, arr))
    entries, payload = _layout(arrays)
    manifest = dict(
        format="mpt_jax ticket", format_version=FORMAT_VERSION, model=ticket.model,
        model_options=ticket.model_options, image_shape=list(ticket.image_shape),
        keep_fraction=ticket.keep_fraction, mode=ticket.mode, layers=layer_entries,
        arrays=entries, payload_bytes=len(payload), package_version=mpt_jax.__version__,
        jax_version=jax.__version__,
        **{k: v for k, v in ticket.info.items() if k not in ("package_version", "jax_version")})
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(manifest_bytes + payload).digest()
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(manifest_bytes), digest)
    return header + manifest_bytes + payload


def save_ticket(ticket: Ticket, path: str | os.PathLike) -> int:
    """Writes ``ticket`` to ``path`` (atomically) and returns the file size in bytes."""
    data = ticket_bytes(ticket)
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


def _check_header(data: bytes, source: str) -> tuple[int, bytes]:
    """(manifest length, sha256 digest) of a header that belongs to a readable ticket."""
    if len(data) < HEADER_BYTES:
        raise TicketError(f"{source}: file is {len(data)} bytes, shorter than the {HEADER_BYTES}"
                          f"-byte header (truncated or not a ticket)")
    magic, version, _, manifest_len, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise TicketError(f"{source}: bad magic bytes {magic!r} (expected {MAGIC!r}): not an "
                          f"mpt_jax ticket file")
    if version != FORMAT_VERSION:
        raise TicketError(f"{source}: ticket format version {version}, this mpt_jax "
                          f"({mpt_jax.__version__}) reads version {FORMAT_VERSION}; use the "
                          f"mpt_jax version that wrote it or re-export the ticket")
    return manifest_len, digest


# The dtypes a ticket stores (masks, sign bits, alphas, BatchNorm arrays): plain numbers only.
_ARRAY_KINDS = "biuf"


def _sizes(shape) -> list[int]:
    """``shape`` as a list of non-negative ints, or TicketError (checked before any use)."""
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise TicketError(f"bad array shape {shape!r} in the manifest")
    return shape


def _payload_arrays(manifest: dict, payload: bytes, source: str) -> dict[str, np.ndarray]:
    """Views into ``payload`` (no copies): every entry's size is checked against the payload
    in Python integers before a view is made."""
    arrays = {}
    try:
        for e in manifest["arrays"]:
            dt = np.dtype(e["dtype"])
            if dt.kind not in _ARRAY_KINDS or dt.itemsize > 8:
                raise TicketError(f"{source}: array {e['name']!r} has dtype {dt.str!r}, not "
                                  "a plain number type")
            n = math.prod(_sizes(e["shape"])) * dt.itemsize
            offset = e["offset"]
            if (n != e["nbytes"] or not isinstance(offset, int) or offset < 0
                    or offset + n > len(payload)):
                raise TicketError(f"{source}: array {e['name']} does not fit the payload")
            arrays[str(e["name"])] = np.frombuffer(payload, dt, count=n // dt.itemsize,
                                                   offset=offset).reshape(e["shape"])
    except TicketError as e:
        raise TicketError(f"{source}: {e}" if not str(e).startswith(source) else str(e)) from None
    except (KeyError, TypeError, ValueError) as e:
        raise TicketError(f"{source}: malformed manifest array table ({e!r})") from None
    return arrays


def parse_ticket_bytes(data: bytes, source: str = "ticket") -> tuple[dict, dict[str, np.ndarray]]:
    """Validates header, version, length and checksum; returns (manifest, arrays)."""
    manifest_len, digest = _check_header(data, source)
    body = data[HEADER_BYTES:]
    if manifest_len > len(body):
        raise TicketError(f"{source}: truncated: manifest needs {manifest_len} bytes, only "
                          f"{len(body)} present")
    if hashlib.sha256(body).digest() != digest:
        raise TicketError(f"{source}: checksum mismatch (sha256 of manifest+payload): the file "
                          f"is corrupted or truncated; re-export or re-download it")
    try:
        manifest = json.loads(body[:manifest_len].decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise TicketError(f"{source}: unreadable manifest ({type(e).__name__})") from None
    if not isinstance(manifest, dict):
        raise TicketError(f"{source}: the manifest is not a JSON object")
    payload = body[manifest_len:]
    if manifest.get("payload_bytes") != len(payload):
        raise TicketError(f"{source}: payload is {len(payload)} bytes, manifest says "
                          f"{manifest.get('payload_bytes')}")
    return manifest, _payload_arrays(manifest, payload, source)


def _unpack(bits: np.ndarray, count: int, name: str) -> np.ndarray:
    if bits.dtype != np.uint8 or bits.ndim != 1 or count < 0 or bits.size != (count + 7) // 8:
        raise TicketError(f"bit array {name} has {bits.size} bytes, expected {(count + 7) // 8}")
    return np.unpackbits(bits, count=count).astype(bool)


def _layers_from(manifest: dict, arrays: dict, mode: str, source: str) -> list[LayerTicket]:
    alphas = arrays["alphas"]
    entries = manifest["layers"]
    if alphas.shape != (len(entries),):
        raise TicketError(f"{source}: {alphas.shape} alphas for {len(entries)} layers")
    lts = []
    for i, e in enumerate(entries):
        shape = tuple(_sizes(e["shape"]))
        mask = _unpack(arrays[f"layer{i}/mask"], math.prod(shape), f"layer{i}/mask")
        mask = mask.reshape(shape)
        if int(mask.sum()) != e["kept"]:
            raise TicketError(f"{source}: layer {SEP.join(e['path'])} mask keeps "
                              f"{int(mask.sum())}, manifest says {e['kept']}")
        signs = np.zeros(shape, bool)
        if mode == "signs":
            signs[mask] = _unpack(arrays[f"layer{i}/signs"], e["kept"], f"layer{i}/signs")
        lts.append(LayerTicket(tuple(e["path"]), mask, signs, np.float32(alphas[i])))
    return lts


def _ticket_from(manifest: dict, arrays: dict, source: str) -> Ticket:
    mode = manifest["mode"]
    if mode not in MODES:
        raise TicketError(f"{source}: unknown ticket mode {mode!r}")
    lts = _layers_from(manifest, arrays, mode, source)
    others = {k: np.array(v) for k, v in arrays.items()
              if k.startswith(("params/", "batch_stats/"))}
    info = {k: manifest[k] for k in ("metrics", "bn_dtype", "extra", "init") if k in manifest}
    info["written_with"] = {k: manifest.get(k) for k in ("package_version", "jax_version")}
    return Ticket(manifest["model"], dict(manifest["model_options"]),
                  tuple(manifest["image_shape"]), float(manifest["keep_fraction"]), mode, lts,
                  others, info)


MAX_IMAGE_ELEMENTS = 1 << 24  # a seed ticket's image_shape: far above ImageNet's 224x224x3


def ticket_from_bytes(data: bytes, source: str = "ticket", *, verify_seed: bool = True) -> Ticket:
    """The ticket in ``data`` (file contents), validated; mode "seed" tickets get their
    signs from the regenerated weights (checked against the recorded hashes) unless
    ``verify_seed`` is False."""
    manifest, arrays = parse_ticket_bytes(data, source)
    try:
        ticket = _ticket_from(manifest, arrays, source)
        hashes = {SEP.join(e["path"]): e["signs_sha256"] for e in manifest["layers"]}
        if ticket.mode == "signs":
            for lt in ticket.layers:
                if lt.signs_sha256() != hashes[lt.name]:
                    raise TicketError(f"{source}: sign bits of layer {lt.name} do not match "
                                      "the manifest hash")
        elif verify_seed:
            ticket.layers = _regenerated_layers(ticket, manifest, hashes, source)
    except KeyError as e:
        raise TicketError(f"{source}: manifest or payload lacks {e}") from None
    except TicketError as e:
        if str(e).startswith(source):
            raise
        raise TicketError(f"{source}: {e}") from None
    except (TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
        # A manifest whose checksum matches but whose fields have the wrong types (written
        # by hand, or by a buggy writer): one line, never a traceback.
        raise TicketError(f"{source}: malformed manifest ({type(e).__name__}: "
                          f"{str(e)[:200]})") from None
    return ticket


def _regenerated_layers(ticket: Ticket, manifest: dict, hashes: dict, source: str):
    """A seed ticket's layers with the signs of the regenerated weights. The model is built
    from the manifest, so its shapes are checked (abstractly, nothing allocated) against the
    layers the file's mask bits describe before the weights are drawn."""
    if "init" not in manifest:
        raise TicketError(f"{source}: mode 'seed' ticket without an init record")
    image_shape = tuple(_sizes(list(ticket.image_shape)))
    if len(image_shape) != 3 or math.prod(image_shape) > MAX_IMAGE_ELEMENTS:
        raise TicketError(f"{source}: implausible image_shape {list(image_shape)} for a seed "
                          "ticket")
    try:
        seed.check_layer_shapes(ticket.model, ticket.model_options, image_shape,
                                manifest["init"], ticket.layers)
        frozen = seed.regenerate_frozen(ticket.model, ticket.model_options, image_shape,
                                        manifest["init"])
    except TicketError:
        raise
    except Exception as e:  # noqa: BLE001  (any model code driven by the manifest's options)
        raise TicketError(f"{source}: cannot rebuild model {ticket.model!r} from the manifest "
                          f"({type(e).__name__}: {str(e)[:200]})") from None
    return seed.check_regenerated(ticket.layers, frozen, hashes, manifest["init"])


def load_ticket(path: str | os.PathLike, *, verify_seed: bool = True) -> Ticket:
    """Reads and validates a ticket file (regenerating and checking W for mode "seed")."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TicketError(f"cannot read ticket {os.fspath(path)!r}: {e.strerror}") from None
    return ticket_from_bytes(data, os.fspath(path), verify_seed=verify_seed)
