"""What a run tells its user: the header of a new run, the result record (``result.json``,
written atomically), where the wall time went, the final console line and the found
ticket's table.

Console output goes through ``echo``: only process 0 of a multi-process run prints.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp

from mpt_jax import metrics as metrics_lib, optim, stages, train
from mpt_jax.errors import WorkdirWriteError
from mpt_jax.stages import echo  # noqa: F401  (report.echo: the loop's console output)


def devices() -> str:
    n = jax.device_count()
    return f"{n} device" + ("s" if n != 1 else "")


def hardware_name() -> str:
    """What the run trained on, e.g. "1x NVIDIA H200" or "2x cpu" (all processes' devices)."""
    all_devices = jax.devices()
    return f"{len(all_devices)}x {all_devices[0].device_kind}"


def announce(config, ds, model, state) -> None:
    """The one-time header of a new run: data, devices, the layer table, the trainable set."""
    echo(f"{config.model} ({config.mode}, keep_fraction={config.keep_fraction}, "
         f"pruning={config.pruning}) on {ds.name}: {ds.num_train} train / {ds.num_eval} "
         f"eval ({ds.eval_split_name}), {ds.steps_per_epoch} steps/epoch, "
         f"{devices()}")
    echo(metrics_lib.layer_table(state.params, config,
                                 metrics_lib.layer_order(model, ds.image_shape)))
    ntrain, nentries = optim.count_trainable(state.params, config)
    echo(f"trainable: {ntrain} leaves, {nentries:,} entries ({config.optimizer}, "
         f"lr {config.learning_rate}, {config.schedule} schedule)")


def run_result(config, ds, best, last_eval, global_step, epochs_completed, seconds,
               stop_reason) -> dict:
    """The record of a finished run (``result.json`` and the last checkpoint's meta)."""
    return dict(final_top1=last_eval["top1"], final_top5=last_eval["top5"],
                final_loss=last_eval["loss"], best_top1=best["top1"], best_top5=best["top5"],
                best_epoch=best["epoch"], eval_split=ds.eval_split_name,
                num_eval=int(last_eval.get("count", ds.num_eval)),
                epochs_completed=int(epochs_completed), global_step=int(global_step),
                wall_seconds=round(float(seconds), 2), stop_reason=stop_reason,
                model=config.model, mode=config.mode, keep_fraction=float(config.keep_fraction),
                dataset=config.dataset, seed=int(config.seed),
                precision=jnp.dtype(train.compute_dtype(config)).name, hardware=hardware_name(),
                jax_version=jax.__version__)


def write_result(workdir: str, result: dict) -> None:
    """result.json, atomically (temporary file + rename): a kill never leaves half a file."""
    path = os.path.join(workdir, "result.json")
    try:
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(path + ".tmp", path)
    except OSError as e:  # e.g. a full disk: the final checkpoint holds the result too
        raise WorkdirWriteError(f"could not write {path} ({e.strerror or e}); the run's final "
                                "checkpoint is intact: free disk space and run the same command "
                                "again to write it") from None


def result_line(result: dict) -> str:
    """The final console line: held-out accuracy (final and best) and the split."""
    return (f"final accuracy: top-1 {result['final_top1']:.2f}% "
            f"(top-5 {result['final_top5']:.2f}%), best top-1 {result['best_top1']:.2f}% "
            f"at epoch {result['best_epoch']}; eval split: {result['eval_split']}; "
            f"{result['epochs_completed']} epoch{'' if result['epochs_completed'] == 1 else 's'}"
            f" / {result['global_step']} steps")


def finished(config, workdir: str, result: dict, note: str | None = None,
             time_breakdown: dict | None = None) -> None:
    """The end of a run: result.json, ``note`` (why it stopped early), the ticket's table,
    where the wall time went (``stages.Clock.breakdown``, also stored in ``result`` as
    ``time_breakdown``) and the final line."""
    if time_breakdown is not None:
        result["time_breakdown"] = time_breakdown
    if jax.process_index() == 0:
        write_result(workdir, result)
    if note:
        echo(note)
    # Single process only: reloading the checkpoint on one process of a multi-process run
    # would wait in orbax's cross-process barriers for processes that have already exited.
    if jax.process_count() == 1 and config.mode in ("biprop", "edgepopup"):
        print_ticket_summary(workdir)
    if time_breakdown is not None:
        echo(stages.breakdown_line(time_breakdown))
    echo(result_line(result))


def finished_before(workdir: str, epoch: int, result: dict) -> dict:
    """A rerun of a finished run: prints its stored result and returns it, with the time
    breakdown of an existing result.json (only the run itself could measure it); writes
    result.json in case the run was killed between its last checkpoint and that file."""
    echo(f"run in {workdir} is complete (epoch {epoch}); stored result:")
    echo(result_line(result))
    result = dict(result, **_stored_breakdown(workdir, result))
    if jax.process_index() == 0:
        write_result(workdir, result)
    return result


def _stored_breakdown(workdir: str, result: dict) -> dict:
    """{"time_breakdown": ...} of the workdir's result.json for this result, else {}."""
    try:
        with open(os.path.join(workdir, "result.json")) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return {}
    same = stored.get("global_step") == result.get("global_step")
    return {"time_breakdown": stored["time_breakdown"]} if (
        same and "time_breakdown" in stored) else {}


def print_ticket_summary(workdir: str) -> None:
    """The found ticket's Larq-style table at the end of the training log."""
    # Imported here: the ticket package is needed only once a run has ended, and it reads
    # runs itself (through mpt_jax.checkpoint), so the loop does not depend on it at import.
    from mpt_jax import ticket as ticket_lib  # noqa: PLC0415

    try:
        # exact=False: the sizes and counts of the ticket `export` writes, without the two
        # compiled exactness checks (seconds of XLA compilation at the end of every run).
        found = ticket_lib.ticket_from_run(workdir, "latest", exact=False)
        size = len(ticket_lib.ticket_bytes(found))
        echo(ticket_lib.summary_table(ticket_lib.summary(found, file_bytes=size)))
        echo(f"export this ticket ({size:,} bytes): python -m mpt_jax.ticket export "
             f"--workdir={workdir} --out=<file> [--which=best]")
    except Exception as e:  # noqa: BLE001  (a summary must never fail a finished run)
        echo(f"(ticket summary unavailable: {type(e).__name__}: {e})")
