"""Checkpoints with orbax behind one small wrapper (GUIDE.md; SPEC 6.6; issue 4).

Layout: ``<workdir>/checkpoints/latest/<global step>/`` (the newest ``keep`` saves) and
``<workdir>/checkpoints/best/<global step>/`` (the best-by-eval-top-1 save). Each save holds
two items: ``state`` (the whole TrainState: params, frozen W, BN statistics, optimizer state,
pruning thresholds, current keep fraction, rng) and ``meta`` (JSON: next epoch, step in that
epoch, global step, best metrics, last evaluation, config, fingerprint).

Crash safety (issue 4): orbax writes each save into ``<step>.orbax-checkpoint-tmp*`` and
renames it to ``<step>`` only when every item is complete, and ``latest_step`` lists only
finalized steps, so a save killed half-way (SIGKILL, power loss) is never read; leftover
temporary directories are deleted when the next run opens the workdir. A save that fails
(disk full, I/O error) raises ``CheckpointWriteError`` and leaves the previous saves intact:
``max_to_keep`` only deletes old steps after a new one is finalized. Tests inject faults
inside a save through ``Checkpointer(..., during_save=fn)``: ``fn(meta, directory)`` runs
after part of the save is written into orbax's temporary directory, so it can pause there
(for a real SIGKILL) or raise (e.g. ``OSError(ENOSPC)``, a full disk).

``load_for_inference(workdir, which)`` returns numpy trees without needing the model.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from typing import Callable

import jax
import numpy as np

from mpt_jax import config_utils
from mpt_jax.errors import CheckpointError, CheckpointWriteError, one_line

ITEMS = ("state", "meta")


def _ocp():
    import orbax.checkpoint as ocp  # noqa: PLC0415  (slow import; only when checkpoints are used)
    return ocp


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


def _state_dict(state):
    from flax import serialization  # noqa: PLC0415
    return serialization.to_state_dict(state)


class Checkpointer:
    """Save / restore of the training state in ``<workdir>/checkpoints``."""

    def __init__(self, workdir: str, keep: int = 2, restart: bool = False,
                 during_save: Callable[[dict, str], None] | None = None):
        """``during_save(meta, directory)`` (tests only): called inside every save, after
        part of it is written, before orbax finalizes it (module docstring)."""
        self.workdir = workdir
        self.keep = keep
        self.directory = os.path.join(workdir, "checkpoints")
        if jax.process_index() == 0:
            check_writable(workdir)
            if restart and os.path.exists(self.directory):
                shutil.rmtree(self.directory)
                for name in ("metrics.jsonl", "result.json"):
                    if os.path.exists(os.path.join(workdir, name)):
                        os.remove(os.path.join(workdir, name))
                shutil.rmtree(os.path.join(workdir, "tensorboard"), ignore_errors=True)
        ocp = _ocp()

        def manager(sub, max_to_keep):
            if jax.process_index() == 0:
                _remove_partial_saves(os.path.join(self.directory, sub))
            options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                   enable_async_checkpointing=False)
            return ocp.CheckpointManager(os.path.join(self.directory, sub), options=options,
                                         item_handlers=_item_handlers(during_save))

        self._latest = manager("latest", keep)
        self._best = manager("best", 1)

    def check_room_for(self, state) -> None:
        """Refuses to start (process 0) without disk room for every save the run keeps
        (latest x keep + best) and one being written, + 10 %."""
        if jax.process_index() == 0:
            needed = int(1.1 * (self.keep + 2) * tree_nbytes(state)) + 2**24
            check_free_space(self.workdir, needed)

    def _manager(self, which: str):
        if which not in ("latest", "best"):
            raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
        return self._latest if which == "latest" else self._best

    def latest_step(self, which: str = "latest"):
        return self._manager(which).latest_step()

    def steps(self, which: str = "latest") -> list[int]:
        """The global steps of the complete saves, oldest first."""
        return sorted(self._manager(which).all_steps())

    def latest_meta(self, which: str = "latest", step: int | None = None) -> dict | None:
        """The JSON metadata of the newest save (or of ``step``; cheap: no arrays are read),
        or None."""
        mngr = self._manager(which)
        step = mngr.latest_step() if step is None else step
        return None if step is None else _read_meta(mngr, step)

    def describe_latest(self) -> str:
        step = self._latest.latest_step()
        if step is None:
            return "none (no checkpoint was written yet)"
        meta = self.latest_meta()
        epoch, in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
        where = ("before the first step" if epoch == in_epoch == 0 else
                 f"end of epoch {epoch}" if in_epoch == 0 else
                 f"epoch {epoch + 1}, step {in_epoch} of that epoch")
        return f"{os.path.join(self.directory, 'latest', str(step))} (global step {step}, {where})"

    def save(self, state, meta: dict, best: bool = False, latest: bool = True) -> None:
        """Saves ``state`` + ``meta`` as global step ``meta['global_step']`` in "latest"
        (unless ``latest=False``) and in "best" (if ``best``). ``state`` may be a host copy."""
        ocp = _ocp()
        # The state is replicated: saving host numpy copies writes one topology-independent
        # copy (restorable on any device count) and avoids per-device slicing in orbax.
        from mpt_jax import parallel  # noqa: PLC0415
        host_state = parallel.to_host(_state_dict(state))
        args = ocp.args.Composite(state=ocp.args.PyTreeSave(host_state),
                                  meta=_meta_args("save")(meta))
        step = int(meta["global_step"])
        targets = ([self._latest] if latest else []) + ([self._best] if best else [])
        for mngr in targets:
            try:
                with _quiet_orbax_errors():
                    if step in mngr.all_steps():
                        if _same_point(_read_meta(mngr, step), meta):
                            continue  # e.g. a signal right after an epoch-end save: nothing new
                        # A different record of the same step (an evaluation was added):
                        # replace it. Not atomic, but "latest" keeps an older step (keep >= 2).
                        mngr.delete(step)
                    try:
                        mngr.save(step, args=args, force=True)
                        mngr.wait_until_finished()
                    except BaseException:
                        _drain(mngr)  # let orbax's writer threads end before we report
                        raise
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as e:  # noqa: BLE001  (tensorstore reports ENOSPC as ValueError)
                raise CheckpointWriteError(
                    f"could not write checkpoint step {step} in {self.directory} "
                    f"({type(e).__name__}: {one_line(e)[:300]}); the previous "
                    f"checkpoint is intact: {self.describe_latest()}. Free disk space (or fix the "
                    "workdir) and run the same command again to resume from it") from None

    def restore(self, template_state, mesh=None, which: str = "latest", step: int | None = None):
        """Restores (state, meta) of the newest save (or of ``step``) into the structure of
        ``template_state`` (arrays placed with the template's dtypes and shardings; any
        device count)."""
        from flax import serialization  # noqa: PLC0415
        mngr = self._manager(which)
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no {which} checkpoint in {self.directory}")
        where = os.path.join(str(mngr.directory), str(step))
        try:
            restored = _restore_numpy(mngr, step)
            host = serialization.from_state_dict(template_state, restored)
            mismatch = [(jax.tree_util.keystr(p), a.shape, b.shape) for (p, a), b in zip(
                jax.tree_util.tree_flatten_with_path(template_state)[0], jax.tree.leaves(host))
                if tuple(a.shape) != tuple(np.shape(b))]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"checkpoint {where} does not match this model ({one_line(e)[:200]});"
                " use --config.restart=True or a new --workdir") from None
        if mismatch:
            raise CheckpointError(f"checkpoint {where} does not match this model (e.g. "
                                  f"{mismatch[0][0]}: saved {mismatch[0][2]} vs model "
                                  f"{mismatch[0][1]}); use --config.restart=True or a new --workdir")
        # Same dtypes and placement as the template (replicated over the mesh).
        state = jax.tree.map(
            lambda t, x: jax.device_put(np.asarray(x, dtype=t.dtype), t.sharding), template_state, host)
        return state, _read_meta(mngr, step)

    def close(self) -> None:
        for mngr in (self._latest, self._best):
            mngr.close()


class _quiet_orbax_errors:
    """Orbax's writer threads log a failed save with a full traceback (absl logger); the
    failure is reported once, as one line, by ``CheckpointWriteError`` instead."""

    def __enter__(self):
        import logging  # noqa: PLC0415
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


def _item_handlers(during_save: Callable[[dict, str], None] | None = None) -> dict:
    # Explicit handlers: reading metadata or one item then needs no guessing (and logs nothing).
    ocp = _ocp()
    return dict(state=ocp.PyTreeCheckpointHandler(), meta=_meta_handler_class()(during_save))


_META = {}


def _meta_handler_class():
    """JsonCheckpointHandler that calls a ``during_save(meta, directory)`` hook (module
    docstring) while the save is inside orbax's temporary directory, after the meta item was
    written. Built on first use: orbax is imported lazily."""
    if not _META:
        ocp = _ocp()
        from orbax.checkpoint import checkpoint_args  # noqa: PLC0415

        class MetaHandler(ocp.JsonCheckpointHandler):
            def __init__(self, during_save=None, **kwargs):
                super().__init__(**kwargs)
                self.during_save = during_save

            async def _save_fn(self, x, directory):
                await super()._save_fn(x, directory)
                if self.during_save is not None:
                    self.during_save(dict(x), str(directory))

        # Own args classes, registered with MetaHandler (orbax finds the handler by args type).
        @checkpoint_args.register_with_handler(MetaHandler, for_save=True)
        class MetaSave(ocp.args.JsonSave):
            pass

        @checkpoint_args.register_with_handler(MetaHandler, for_restore=True)
        class MetaRestore(ocp.args.JsonRestore):
            pass

        _META.update(handler=MetaHandler, save=MetaSave, restore=MetaRestore)
    return _META["handler"]


def _meta_args(kind: str):
    _meta_handler_class()
    return _META[kind]


def _restore_numpy(mngr, step):
    """The saved state tree as numpy arrays (no model or template needed)."""
    import warnings  # noqa: PLC0415
    ocp = _ocp()
    tree_meta = mngr.item_metadata(step)["state"]
    tree_meta = getattr(tree_meta, "tree", tree_meta)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree_meta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sharding info not provided": numpy
        return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=None, restore_args=restore_args)))["state"]


def _read_meta(mngr, step) -> dict:
    # The JSON item is read directly: restoring only one item of a Composite through orbax
    # works too but logs a warning per unread item.
    path = os.path.join(str(mngr.directory), str(step), "meta", "metadata")
    if os.path.exists(path):
        with open(path) as f:
            return dict(json.load(f))
    ocp = _ocp()
    return dict(mngr.restore(step, args=ocp.args.Composite(meta=_meta_args("restore")()))["meta"])


def check_compatible(meta: dict, config, workdir: str) -> None:
    """Refuses to resume a checkpoint whose fingerprint differs from ``config``'s."""
    saved = meta.get("fingerprint") or {}
    current = config_utils.fingerprint(config)
    if saved != current:
        raise CheckpointError(
            f"workdir {workdir} holds a checkpoint of a different run ("
            f"{config_utils.fingerprint_diff(saved, current)}); pass --config.restart=True to "
            "discard it and start over, or use a new --workdir")


def load_for_inference(workdir: str, which: str = "latest") -> dict:
    """Loads a saved run for evaluation / ticket export, without building the model.

    Returns dict(params, frozen, batch_stats, pruning (numpy trees), config (ConfigDict),
    metrics=dict(accuracy (last eval top-1 %), top5, best_top1, best_epoch, epoch, step,
    eval_split, keep_fraction)). ``which``: "latest" or "best" (best eval top-1).
    """
    import ml_collections  # noqa: PLC0415
    ocp = _ocp()
    directory = os.path.join(os.path.abspath(workdir), "checkpoints", which)
    if which not in ("latest", "best"):
        raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
    if not os.path.isdir(directory):
        raise CheckpointError(f"no {which} checkpoint in {workdir} (missing {directory}); train "
                              "first with python -m mpt_jax.main --workdir=...")
    mngr = ocp.CheckpointManager(directory, item_handlers=_item_handlers(),
                                 options=ocp.CheckpointManagerOptions(create=False))
    try:
        step = mngr.latest_step()
        if step is None:
            raise CheckpointError(f"no complete {which} checkpoint in {directory}")
        meta = _read_meta(mngr, step)
        state = _restore_numpy(mngr, step)
    finally:
        mngr.close()
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
