"""Checkpoints with orbax behind one small wrapper (GUIDE.md; SPEC 6.6; issue 4).

Layout: ``<workdir>/checkpoints/latest/<global step>/`` (the newest ``keep`` saves) and
``<workdir>/checkpoints/best/<global step>/`` (the best-by-eval-top-1 save). Each save holds
two items: ``state`` (the whole TrainState: params, frozen W, BN statistics, optimizer state,
pruning thresholds, current keep fraction, rng) and ``meta`` (JSON: next epoch, step in that
epoch, global step, best metrics, last evaluation, config, fingerprint).

Orbax writes each save into a temporary directory and renames it when complete, so a save
killed half-way is never read; a failed save leaves the previous one intact.

``load_for_inference(workdir, which)`` returns numpy trees without needing the model.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid

import jax
import numpy as np

from mpt_jax import config_utils
from mpt_jax.errors import CheckpointError

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


def _state_dict(state):
    from flax import serialization  # noqa: PLC0415
    return serialization.to_state_dict(state)


class Checkpointer:
    """Save / restore of the training state in ``<workdir>/checkpoints``."""

    def __init__(self, workdir: str, keep: int = 2, restart: bool = False):
        self.workdir = workdir
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
            options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                   enable_async_checkpointing=False)
            return ocp.CheckpointManager(os.path.join(self.directory, sub), options=options,
                                         item_handlers=_item_handlers())

        self._latest = manager("latest", keep)
        self._best = manager("best", 1)

    def _manager(self, which: str):
        if which not in ("latest", "best"):
            raise ValueError(f"which must be 'latest' or 'best', got {which!r}")
        return self._latest if which == "latest" else self._best

    def latest_step(self, which: str = "latest"):
        return self._manager(which).latest_step()

    def latest_meta(self, which: str = "latest") -> dict | None:
        """The JSON metadata of the newest save (cheap: no arrays are read), or None."""
        mngr = self._manager(which)
        step = mngr.latest_step()
        return None if step is None else _read_meta(mngr, step)

    def describe_latest(self) -> str:
        step = self._latest.latest_step()
        if step is None:
            return "none (no checkpoint was written yet)"
        meta = self.latest_meta()
        return (f"{os.path.join(self.directory, 'latest', str(step))} (epoch {meta['epoch']}, "
                f"step {meta['step_in_epoch']} in that epoch)")

    def save(self, state, meta: dict, best: bool = False) -> None:
        """Saves ``state`` + ``meta`` as global step ``meta['global_step']`` (and as best)."""
        ocp = _ocp()
        # The state is replicated: saving host numpy copies writes one topology-independent
        # copy (restorable on any device count) and avoids per-device slicing in orbax.
        from mpt_jax import parallel  # noqa: PLC0415
        host_state = parallel.to_host(_state_dict(state))
        args = ocp.args.Composite(state=ocp.args.PyTreeSave(host_state),
                                  meta=ocp.args.JsonSave(meta))
        step = int(meta["global_step"])
        targets = [self._latest] + ([self._best] if best else [])
        for mngr in targets:
            try:
                if step in mngr.all_steps():  # e.g. a stop right after an epoch-end save
                    mngr.delete(step)
                mngr.save(step, args=args, force=True)
                mngr.wait_until_finished()
            except OSError as e:
                raise CheckpointError(
                    f"could not write checkpoint step {step} in {self.directory} ({e}); the "
                    f"previous checkpoint is intact: {self.describe_latest()}") from None

    def restore(self, template_state, mesh=None, which: str = "latest"):
        """Restores (state, meta) of the newest save into the structure of ``template_state``
        (arrays placed with the template's dtypes and shardings; any device count)."""
        from flax import serialization  # noqa: PLC0415
        ocp = _ocp()
        mngr = self._manager(which)
        step = mngr.latest_step()
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
                f"checkpoint {where} does not match this model ({config_utils.one_line(e)[:200]});"
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


def _item_handlers() -> dict:
    # Explicit handlers: reading metadata or one item then needs no guessing (and logs nothing).
    ocp = _ocp()
    return dict(state=ocp.PyTreeCheckpointHandler(), meta=ocp.JsonCheckpointHandler())


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
    return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])


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
