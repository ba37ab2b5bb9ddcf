"""Checksum manifests of checkpoint saves, and the newest save that is intact.

Orbax does not checksum what it writes. After orbax finished a save, ``write_manifest``
writes ``<step>/mpt_manifest.json`` (atomically, last): the size and sha256 of every file of
the save, a copy of the save's ``meta`` and the manifest's own sha256. ``find_checkpoint``
reads the newest save whose files all match their manifest, without orbax and without
writing anything; a save with a flipped byte, a truncated or missing file, or no manifest
(its save did not finish) is listed as damaged, with the reason.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from mpt_jax.errors import CheckpointError

MANIFEST = "mpt_manifest.json"
MANIFEST_VERSION = 1


def _digest(path: str) -> tuple[int, str]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _files(step_dir: str) -> list[str]:
    """Every file of a save (relative paths, sorted), the manifest excluded."""
    out = []
    for root, dirs, names in os.walk(step_dir):
        dirs.sort()
        out += [os.path.relpath(os.path.join(root, n), step_dir) for n in names]
    return sorted(p for p in out if p != MANIFEST and not p.startswith(MANIFEST + "."))


def _sealed(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_manifest(step_dir: str, meta: dict) -> None:
    """``<step_dir>/mpt_manifest.json``: size + sha256 of every file, ``meta`` and its own
    sha256; written to a temporary name, synced and renamed (a kill leaves none or all)."""
    body = dict(version=MANIFEST_VERSION, meta=meta,
                files={p: list(_digest(os.path.join(step_dir, p))) for p in _files(step_dir)})
    body["sha256"] = _sealed(body)
    tmp = os.path.join(step_dir, f"{MANIFEST}.tmp")
    with open(tmp, "w") as f:
        json.dump(body, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, MANIFEST))
    fd = os.open(step_dir, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power loss
    finally:
        os.close(fd)


def read_manifest(step_dir: str) -> tuple[dict | None, str | None]:
    """(manifest, None) when the manifest is there and intact, else (None, why not)."""
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(path):
        return None, "it has no checksum manifest (its save did not finish)"
    try:
        with open(path) as f:
            body = json.load(f)
        sealed = body.pop("sha256")
        ok = sealed == _sealed(body) and isinstance(body.get("files"), dict)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        return None, f"its checksum manifest is unreadable ({type(e).__name__})"
    return (body, None) if ok else (None, "its checksum manifest is damaged")


def verify_step(step_dir: str) -> tuple[dict | None, str | None]:
    """(meta, None) when every file of the save matches its manifest, else (None, why not)."""
    body, why = read_manifest(step_dir)
    if body is None:
        return None, why
    for rel, (size, sha) in sorted(body["files"].items()):
        path = os.path.join(step_dir, rel)
        if not os.path.isfile(path):
            return None, f"{rel} is missing"
        actual = os.path.getsize(path)
        if actual != size:
            return None, f"{rel} has {actual} bytes, {size} were written (truncated or changed)"
        if _digest(path)[1] != sha:
            return None, f"{rel} does not match its sha256 checksum (the file is corrupt)"
    return dict(body["meta"]), None


def step_dirs(directory: str) -> list[tuple[int, str]]:
    """(step, path) of every finalized save in ``directory`` (orbax names them by the step),
    newest first."""
    if not os.path.isdir(directory):
        return []
    steps = [(int(n), os.path.join(directory, n)) for n in os.listdir(directory)
             if n.isdigit() and os.path.isdir(os.path.join(directory, n))]
    return sorted(steps, reverse=True)


@dataclasses.dataclass
class Found:
    """The checkpoint a run continues from, and the newer saves that failed verification."""

    step: int
    path: str
    meta: dict
    damaged: list  # [(step, path, why)], newest first

    def describe(self) -> str:
        return describe(self.path, self.meta)

    def damage_note(self) -> str:
        """One line: which newer saves were skipped and why (empty when none)."""
        if not self.damaged:
            return ""
        skipped = "; ".join(f"{path} (global step {step}): {why}"
                            for step, path, why in self.damaged)
        return (f"warning: skipped damaged checkpoint {skipped}; continuing from the previous "
                f"complete one, {self.describe()}")


def find_checkpoint(workdir: str, which: str = "latest") -> Found | None:
    """The newest save of ``which`` whose files match their checksums (no orbax, nothing
    written); None when there is no save at all. CheckpointError (one line, nothing deleted)
    when there are saves but none is intact."""
    directory = os.path.join(workdir, "checkpoints", check_which(which))
    damaged = []
    for step, path in step_dirs(directory):
        meta, why = verify_step(path)
        if meta is not None:
            return Found(step, path, meta, damaged)
        damaged.append((step, path, why))
    if damaged:
        listed = "; ".join(f"step {step}: {why}" for step, _, why in damaged)
        raise CheckpointError(
            f"no intact {which} checkpoint in {directory} ({listed}); nothing was deleted: "
            "restore the files from a backup, or pass --config.restart=True to discard them "
            "and start over")
    return None


def find_common(workdirs: list[str], which: str = "latest") -> list[Found] | None:
    """A member program's checkpoint: for each workdir, the ``Found`` of the newest global
    step that every one of them saved intact (each with its damaged newer saves at the steps
    tried); None when no step was saved by all of them (a first save some member did not
    finish). CheckpointError as ``find_checkpoint`` when common saves exist but none is
    intact in every workdir."""
    saves = [dict(step_dirs(os.path.join(w, "checkpoints", check_which(which))))
             for w in workdirs]
    damaged = [[] for _ in workdirs]
    for step in sorted(set.intersection(*(set(s) for s in saves)), reverse=True):
        metas = []
        for save, bad in zip(saves, damaged):
            meta, why = verify_step(save[step])
            if meta is None:
                bad.append((step, save[step], why))
                break
            metas.append(meta)
        if len(metas) == len(saves):
            return [Found(step, save[step], meta, bad)
                    for save, meta, bad in zip(saves, metas, damaged)]
    if any(damaged):
        listed = "; ".join(f"{path}: {why}" for bad in damaged for _, path, why in bad)
        raise CheckpointError(
            f"no global step that every member saved intact ({listed}); nothing was deleted: "
            "restore the files from a backup, or pass --config.restart=True to discard them "
            "and start over")
    return None


def describe(path: str, meta: dict) -> str:
    """``<path> (global step N, <where in the run>)``."""
    epoch, in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
    where = ("before the first step" if epoch == in_epoch == 0 else
             f"end of epoch {epoch}" if in_epoch == 0 else
             f"epoch {epoch + 1}, step {in_epoch} of that epoch")
    return f"{path} (global step {meta['global_step']}, {where})"


def check_which(which: str) -> str:
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
    return which
