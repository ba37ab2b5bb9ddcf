"""Checkpoints with orbax behind one small wrapper, each save checksummed.

Layout: ``<workdir>/checkpoints/latest/<global step>/`` (the newest ``keep`` saves) and
``<workdir>/checkpoints/best/<global step>/`` (the best-by-eval-top-1 save). Each save holds
two orbax items: ``state`` (the whole TrainState: params, frozen W, BN statistics, optimizer
state, pruning thresholds, current keep fraction, rng) and ``meta`` (JSON: next epoch, step in
that epoch, global step, best metrics, last evaluation, config, fingerprint, the partial log
interval and the wall time so far).

Integrity. Orbax writes each save into ``<step>.orbax-checkpoint-tmp*`` and renames it to
``<step>`` when every item is complete, so a save killed half-way is never listed; leftover
temporary directories are deleted when the next run opens the workdir. Orbax does not
checksum what it wrote, so after it finished a save we write ``<step>/mpt_manifest.json``
(atomically, last): the size and sha256 of every file of the save, a copy of ``meta`` and
the manifest's own sha256. ``find_checkpoint`` reads the newest save whose files all match
their manifest; a save with a flipped byte, a truncated or missing file, or no manifest (its
save did not finish) is skipped with the reason, and an older complete save is used.

A save that fails (disk full, I/O error) raises ``CheckpointWriteError`` and leaves the
previous saves intact: ``max_to_keep`` only deletes old steps after a new one is finalized.
Tests inject faults inside a save through ``Checkpointer(..., during_save=fn)``: an extra
item whose handler calls ``fn(meta, directory)`` while the save is still in orbax's
temporary directory, so it can pause there (for a real SIGKILL) or raise (a full disk).

``load_for_inference(workdir, which)`` returns numpy trees without needing the model.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
import uuid
import warnings
from typing import Callable

import jax
import numpy as np

from mpt_jax import integrity
from mpt_jax.errors import CheckpointError, CheckpointWriteError, one_line
from mpt_jax.integrity import Found, check_which, describe, find_checkpoint, read_manifest, \
    step_dirs, write_manifest

MANIFEST = integrity.MANIFEST  # part of this module's API, as find_checkpoint and Found

DAMAGED = "damaged"  # <workdir>/checkpoints/damaged/: saves set aside, kept for inspection


def _ocp():
    import orbax.checkpoint as ocp  # noqa: PLC0415  (slow import; only when checkpoints are used)
    return ocp


# ---------------------------------------------------------------------------
# Workdir checks


def check_writable(directory: str) -> None:
    """Creates ``directory`` and writes a probe file; a clear CheckpointError if impossible."""
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write_probe_{uuid.uuid4().hex}")
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        os.remove(probe)
    except OSError as e:
        raise CheckpointError(f"workdir {directory} is not writable ({e.strerror or e}); choose "
                              "another --workdir or free disk space") from None


def check_free_space(directory: str, needed_bytes: int) -> None:
    """Refuses to start when ``directory``'s file system has less than ``needed_bytes`` free
    (the caller asks for room for every checkpoint the run keeps plus one being written)."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return  # unknown file system: the probe write already succeeded
    if free < needed_bytes:
        raise CheckpointError(
            f"workdir {directory} has {free / 2**20:.1f} MiB free but the checkpoints need about "
            f"{needed_bytes / 2**20:.1f} MiB; free disk space or choose another --workdir")


def tree_nbytes(tree) -> int:
    return int(sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


def _remove_partial_saves(directory: str) -> None:
    """Deletes ``<step>.orbax-checkpoint-tmp*`` directories left by a save that was killed
    (orbax never lists them as steps; deleting them frees the disk). Synchronous, unlike
    orbax's ``cleanup_tmp_directories``, whose background thread can outlive a failing run."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if ".orbax-checkpoint-tmp" in name:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


# ---------------------------------------------------------------------------
# Orbax


def _state_dict(state):
    from flax import serialization  # noqa: PLC0415
    return serialization.to_state_dict(state)


class Checkpointer:
    """Save / restore of the training state in ``<workdir>/checkpoints``."""

    def __init__(self, workdir: str, keep: int = 2, restart: bool = False,
                 during_save: Callable[[dict, str], None] | None = None):
        """``during_save(meta, directory)`` (tests only): called inside every save, before
        orbax finalizes it (module docstring)."""
        self.workdir = workdir
        self.keep = keep
        self.directory = os.path.join(workdir, "checkpoints")
        self._during_save = during_save
        if jax.process_index() == 0:
            check_writable(workdir)
            if restart and os.path.exists(self.directory):
                shutil.rmtree(self.directory)
                for name in ("metrics.jsonl", "result.json"):
                    if os.path.exists(os.path.join(workdir, name)):
                        os.remove(os.path.join(workdir, name))
                shutil.rmtree(os.path.join(workdir, "tensorboard"), ignore_errors=True)
        self._latest = self._manager("latest", keep)
        self._best = self._manager("best", 1)

    def _manager(self, sub: str, max_to_keep: int):
        ocp = _ocp()
        if jax.process_index() == 0:
            _remove_partial_saves(os.path.join(self.directory, sub))
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        return ocp.CheckpointManager(os.path.join(self.directory, sub), options=options,
                                     item_handlers=_item_handlers(self._during_save))

    def check_room_for(self, state) -> None:
        """Refuses to start (process 0) without disk room for every save the run keeps
        (latest x keep + best) and one being written, + 10 %."""
        if jax.process_index() == 0:
            needed = int(1.1 * (self.keep + 2) * tree_nbytes(state)) + 2**24
            check_free_space(self.workdir, needed)

    def set_aside(self, found: Found) -> None:
        """Moves the damaged saves newer than ``found`` to checkpoints/damaged/ (kept for
        inspection; orbax no longer sees them, so they never outrank a new save)."""
        if jax.process_index() != 0 or not found.damaged:
            return
        os.makedirs(os.path.join(self.directory, DAMAGED), exist_ok=True)
        for step, path, _ in found.damaged:
            which = os.path.basename(os.path.dirname(path))
            target = os.path.join(self.directory, DAMAGED, f"{which}-{step}-{int(time.time())}")
            os.replace(path, target)
        for mngr in (self._latest, self._best):
            mngr.reload()  # orbax lists its steps when it opens

    def latest_step(self, which: str = "latest"):
        return self._by_name(which).latest_step()

    def _by_name(self, which: str):
        return self._latest if check_which(which) == "latest" else self._best

    def describe_latest(self) -> str:
        """The newest complete save, for messages (its manifest is read, not re-hashed)."""
        for _, path in step_dirs(os.path.join(self.directory, "latest")):
            body, _ = read_manifest(path)
            if body is not None:
                return describe(path, body["meta"])
        return "none (no checkpoint was written yet)"

    def save(self, state, meta: dict, best: bool = False, latest: bool = True) -> None:
        """Saves ``state`` + ``meta`` as global step ``meta['global_step']`` in "latest"
        (unless ``latest=False``) and in "best" (if ``best``). ``state`` may be a host copy."""
        # The state is replicated: saving host numpy copies writes one topology-independent
        # copy (restorable on any device count) and avoids per-device slicing in orbax.
        from mpt_jax import parallel  # noqa: PLC0415
        args = _save_args(parallel.to_host(_state_dict(state)), meta, self._during_save)
        step = int(meta["global_step"])
        for mngr in ([self._latest] if latest else []) + ([self._best] if best else []):
            try:
                with _quiet_orbax():
                    if step in mngr.all_steps():
                        body, _ = read_manifest(os.path.join(str(mngr.directory), str(step)))
                        if body is not None and _same_point(body["meta"], meta):
                            continue  # e.g. a signal right after an epoch-end save: nothing new
                        # Another record of the same step (an evaluation was added): replace
                        # it. Not atomic, but "latest" keeps an older step (keep >= 2).
                        mngr.delete(step)
                    _save_step(mngr, step, args, meta)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001  (tensorstore reports ENOSPC as ValueError)
                raise CheckpointWriteError(
                    f"could not write checkpoint step {step} in {self.directory} "
                    f"({type(e).__name__}: {one_line(e)[:300]}); the previous "
                    f"checkpoint is intact: {self.describe_latest()}. Free disk space (or fix the "
                    "workdir) and run the same command again to resume from it") from None

    def restore(self, template_state, mesh=None, which: str = "latest", found=None):
        """Restores (state, meta) of ``found`` (default: ``find_checkpoint``'s intact save)
        into the structure of ``template_state`` (the template's dtypes and shardings)."""
        from flax import serialization  # noqa: PLC0415
        found = found or find_checkpoint(self.workdir, which)
        if found is None:
            raise CheckpointError(f"no {which} checkpoint in {self.directory}")
        try:
            restored = _restore_numpy(self._by_name(which), found.step)
            host = serialization.from_state_dict(template_state, restored)
            mismatch = [(jax.tree_util.keystr(p), a.shape, b.shape) for (p, a), b in zip(
                jax.tree_util.tree_flatten_with_path(template_state)[0], jax.tree.leaves(host))
                if tuple(a.shape) != tuple(np.shape(b))]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"checkpoint {found.path} does not match this model ({one_line(e)[:200]});"
                " use --config.restart=True or a new --workdir") from None
        if mismatch:
            raise CheckpointError(f"checkpoint {found.path} does not match this model (e.g. "
                                  f"{mismatch[0][0]}: saved {mismatch[0][2]} vs model "
                                  f"{mismatch[0][1]}); use --config.restart=True or a new --workdir")
        # Same dtypes and placement as the template (replicated over the mesh).
        state = jax.tree.map(
            lambda t, x: jax.device_put(np.asarray(x, dtype=t.dtype), t.sharding),
            template_state, host)
        return state, found.meta

    def close(self) -> None:
        for mngr in (self._latest, self._best):
            mngr.close()


def _save_step(mngr, step: int, args, meta: dict) -> None:
    """One orbax save, then its manifest (process 0). A failed manifest write deletes the
    step again: a save without one would only be set aside by the next run."""
    try:
        mngr.save(step, args=args, force=True)
        mngr.wait_until_finished()
    except BaseException:
        _drain(mngr)  # let orbax's writer threads end before we report
        raise
    if jax.process_index() == 0:
        try:
            write_manifest(os.path.join(str(mngr.directory), str(step)), meta)
        except BaseException:
            mngr.delete(step)
            raise


class _quiet_orbax:
    """Orbax's writer threads log a failed save with a full traceback, and a restore of some
    items logs a warning per item left unread (absl logger); failures are reported once, as
    one line, by our own errors instead."""

    def __enter__(self):
        self._logger = logging.getLogger("absl")
        self._level = self._logger.level
        self._logger.setLevel(logging.CRITICAL)
        return self

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)


def _drain(mngr) -> None:
    try:
        mngr.wait_until_finished()
    except Exception:  # noqa: BLE001  (the same failure, already being reported)
        pass
    time.sleep(0.2)  # orbax's metadata thread finishes just after the commit future


def _same_point(a: dict, b: dict) -> bool:
    keys = ("epoch", "step_in_epoch", "global_step", "last_eval", "best", "result")
    return all(a.get(k) == b.get(k) for k in keys)


_FAULT = {}


def _fault_item():
    """(handler class, save args class) of the tests' fault item: a handler that writes
    nothing and calls ``during_save(meta, directory)`` inside orbax's temporary directory.
    Built on first use (orbax is imported lazily) from orbax's public handler interface."""
    if not _FAULT:
        ocp = _ocp()

        class FaultHandler(ocp.CheckpointHandler):
            def __init__(self, during_save=None):
                self.during_save = during_save

            def save(self, directory, args):
                if self.during_save is not None:
                    self.during_save(dict(args.meta), str(directory))

            def restore(self, directory, args=None):
                return None

        @ocp.args.register_with_handler(FaultHandler, for_save=True, for_restore=True)
        @dataclasses.dataclass
        class FaultArgs(ocp.args.CheckpointArgs):
            meta: dict = dataclasses.field(default_factory=dict)

        _FAULT.update(handler=FaultHandler, args=FaultArgs)
    return _FAULT["handler"], _FAULT["args"]


def _item_handlers(during_save=None) -> dict:
    # Explicit handlers: reading one item then needs no guessing (and logs nothing).
    ocp = _ocp()
    handlers = dict(state=ocp.PyTreeCheckpointHandler(), meta=ocp.JsonCheckpointHandler())
    if during_save is not None:
        handlers["fault"] = _fault_item()[0](during_save)
    return handlers


def _save_args(host_state, meta: dict, during_save=None):
    ocp = _ocp()
    items = dict(state=ocp.args.PyTreeSave(host_state), meta=ocp.args.JsonSave(meta))
    if during_save is not None:
        items["fault"] = _fault_item()[1](meta)  # last: after the other items were started
    return ocp.args.Composite(**items)


def _restore_numpy(mngr, step):
    """The saved state tree as numpy arrays (no model or template needed)."""
    ocp = _ocp()
    with _quiet_orbax(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sharding info not provided": numpy
        tree_meta = mngr.item_metadata(step)["state"]
        tree_meta = getattr(tree_meta, "tree", tree_meta)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree_meta)
        return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=None, restore_args=restore_args)))["state"]


def load_for_inference(workdir: str, which: str = "latest") -> dict:
    """Loads a saved run for evaluation / ticket export, without building the model.

    Returns dict(params, frozen, batch_stats, pruning (numpy trees), config (ConfigDict),
    metrics=dict(accuracy (last eval top-1 %), top5, best_top1, best_epoch, epoch, step,
    eval_split, keep_fraction)). ``which``: "latest" or "best" (best eval top-1). The save
    is checked against its checksums first.
    """
    import ml_collections  # noqa: PLC0415
    ocp = _ocp()
    workdir = os.path.abspath(workdir)
    directory = os.path.join(workdir, "checkpoints", check_which(which))
    if not os.path.isdir(directory):
        raise CheckpointError(f"no {which} checkpoint in {workdir} (missing {directory}); train "
                              "first with python -m mpt_jax.main --workdir=...")
    found = find_checkpoint(workdir, which)
    if found is None:
        raise CheckpointError(f"no complete {which} checkpoint in {directory}")
    mngr = ocp.CheckpointManager(directory, item_handlers=_item_handlers(),
                                 options=ocp.CheckpointManagerOptions(create=False))
    try:
        state = _restore_numpy(mngr, found.step)
    finally:
        mngr.close()
    meta = found.meta
    last = meta.get("last_eval") or {}
    best = meta.get("best") or {}
    metrics = dict(accuracy=last.get("top1"), top5=last.get("top5"),
                   best_top1=best.get("top1"), best_epoch=best.get("epoch"),
                   epoch=last.get("epoch", meta.get("epoch")), step=meta.get("global_step"),
                   eval_split=last.get("split"),
                   keep_fraction=meta.get("keep_fraction"))
    return dict(params=state.get("params", {}), frozen=state.get("frozen", {}),
                batch_stats=state.get("batch_stats", {}), pruning=state.get("pruning", {}),
                config=ml_collections.ConfigDict(meta.get("config", {})), metrics=metrics)
