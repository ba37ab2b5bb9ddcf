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


def _payload_arrays(manifest: dict, payload: bytes, source: str) -> dict[str, np.ndarray]:
    arrays = {}
    try:
        for e in manifest["arrays"]:
            dt = np.dtype(e["dtype"])
            n = int(np.prod(e["shape"], dtype=np.int64)) * dt.itemsize
            if n != e["nbytes"] or e["offset"] + n > len(payload) or e["offset"] < 0:
                raise TicketError(f"{source}: array {e['name']} does not fit the payload")
            arrays[e["name"]] = np.frombuffer(payload, dt, count=n // dt.itemsize,
                                              offset=e["offset"]).reshape(e["shape"])
    except (KeyError, TypeError) as e:
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
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TicketError(f"{source}: unreadable manifest ({e})") from None
    payload = body[manifest_len:]
    if manifest.get("payload_bytes") != len(payload):
        raise TicketError(f"{source}: payload is {len(payload)} bytes, manifest says "
                          f"{manifest.get('payload_bytes')}")
    return manifest, _payload_arrays(manifest, payload, source)


def _unpack(bits: np.ndarray, count: int, name: str) -> np.ndarray:
    if bits.dtype != np.uint8 or bits.ndim != 1 or bits.size != (count + 7) // 8:
        raise TicketError(f"bit array {name} has {bits.size} bytes, expected {(count + 7) // 8}")
    return np.unpackbits(bits, count=count).astype(bool)


def _layers_from(manifest: dict, arrays: dict, mode: str, source: str) -> list[LayerTicket]:
    alphas = arrays["alphas"]
    entries = manifest["layers"]
    if alphas.shape != (len(entries),):
        raise TicketError(f"{source}: {alphas.shape} alphas for {len(entries)} layers")
    lts = []
    for i, e in enumerate(entries):
        shape = tuple(int(d) for d in e["shape"])
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


def ticket_from_bytes(data: bytes, source: str = "ticket", *, verify_seed: bool = True) -> Ticket:
    """The ticket in ``data`` (file contents), validated; mode "seed" tickets get their
    signs from the regenerated weights (checked against the recorded hashes) unless
    ``verify_seed`` is False."""
    manifest, arrays = parse_ticket_bytes(data, source)
    try:
        ticket = _ticket_from(manifest, arrays, source)
        hashes = {SEP.join(e["path"]): e["signs_sha256"] for e in manifest["layers"]}
    except KeyError as e:
        raise TicketError(f"{source}: manifest or payload lacks {e}") from None
    if ticket.mode == "signs":
        for lt in ticket.layers:
            if lt.signs_sha256() != hashes[lt.name]:
                raise TicketError(f"{source}: sign bits of layer {lt.name} do not match the "
                                  f"manifest hash")
    elif verify_seed:
        if "init" not in manifest:
            raise TicketError(f"{source}: mode 'seed' ticket without an init record")
        frozen = seed.regenerate_frozen(ticket.model, ticket.model_options, ticket.image_shape,
                                        manifest["init"])
        ticket.layers = seed.check_regenerated(ticket.layers, frozen, hashes, manifest["init"])
    return ticket


def load_ticket(path: str | os.PathLike, *, verify_seed: bool = True) -> Ticket:
    """Reads and validates a ticket file (regenerating and checking W for mode "seed")."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TicketError(f"cannot read ticket {os.fspath(path)!r}: {e.strerror}") from None
    return ticket_from_bytes(data, os.fspath(path), verify_seed=verify_seed)
