"""Logging: TensorBoard event files (no TensorFlow), metrics.jsonl, console progress, layer table.

* ``EventWriter``: scalar summaries in TensorBoard's event-file format, written with
  tensorboardX (no TensorFlow needed).
* ``MetricsLogger``: one JSON object per log event in ``<workdir>/metrics.jsonl`` and the same
  scalars in ``<workdir>/tensorboard/``; ``truncate_after`` drops the records a resumed run
  replays.
* ``ProgressBar``: epoch, step/steps, loss, accuracy, images/s and ETA; redrawn in place on a
  TTY, plain lines otherwise.
* ``layer_table``: the one-time table of prunable layers (shape, total / kept weights).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import numpy as np

from mpt_jax.errors import WorkdirWriteError

TRAIN_METRICS = ("loss", "top1", "top5")  # what each training step reports, per interval


def empty_interval() -> dict:
    """A log interval's fetched per-step values, before its record is written."""
    return {k: [] for k in TRAIN_METRICS}

# ---------------------------------------------------------------------------
# TensorBoard event files


def _tensorboardx():
    """tensorboardX's synchronous event-file writer, event protobufs and scalar summaries,
    imported without torch: its package imports torch when torch is installed (to accept torch
    tensors, which these logs never hold), seconds of start-up that training never needs.
    Imported when the first writer opens."""
    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None  # makes "import torch" fail with ImportError
    try:
        from tensorboardX import event_file_writer, summary  # noqa: PLC0415
        from tensorboardX.proto import event_pb2  # noqa: PLC0415
    finally:
        if block:
            del sys.modules["torch"]
    return event_file_writer.EventsWriter, event_pb2, summary


class EventWriter:
    """Scalar summaries in a new ``events.out.tfevents.*`` file in ``logdir``, written with
    tensorboardX (TensorBoard's event format without TensorFlow). Its synchronous writer:
    every record is in the file when ``scalars`` returns (the queued ``SummaryWriter`` can
    lose what a SIGKILL catches in its queue, and the checkpoint after it would not log it
    again).

    ``start_step``: the first step this writer will log. A SessionLog START event at that
    step makes TensorBoard drop what earlier files logged at steps >= start_step (its
    "purge orphaned data" rule), so the steps that a resumed run replays after its
    checkpoint appear once, not twice. TensorBoard reads the files of a directory in name
    order and tensorboardX names them by the second they were opened, so the suffix counts
    the files already there: a run resumed within the same second still sorts last.
    """

    def __init__(self, logdir: str, start_step: int | None = None):
        os.makedirs(logdir, exist_ok=True)
        existing = sum(1 for name in os.listdir(logdir) if name.startswith("events.out."))
        events_writer, self._pb, self._summary = _tensorboardx()
        self._file = events_writer(os.path.join(logdir, "events"),
                                   f".{existing:05d}.{os.getpid()}")
        if start_step is not None:
            self._file.write_event(self._pb.Event(
                wall_time=time.time(), step=int(start_step),
                session_log=self._pb.SessionLog(status=self._pb.SessionLog.START)))
        self._file.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Writes the numeric ``values`` at ``step`` as one event and flushes it: a run
        killed later keeps everything it logged up to its last checkpoint."""
        values = {k: float(v) for k, v in values.items() if _is_number(v)}
        if not values:
            return
        merged = self._summary.scalar(*next(iter(values.items())))
        for tag, value in list(values.items())[1:]:
            merged.value.extend(self._summary.scalar(tag, value).value)
        self._file.write_event(self._pb.Event(wall_time=time.time(), step=int(step),
                                              summary=merged))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------
# JSON lines + TensorBoard


class MetricsLogger:
    """Writes each event to ``metrics.jsonl`` and TensorBoard (only on process 0)."""

    def __init__(self, workdir: str, enabled: bool = True, start_step: int | None = None):
        """``start_step``: first step to be logged (a resumed run: the checkpoint's global
        step + 1); TensorBoard then forgets what earlier runs logged from there on."""
        self.enabled = enabled
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._jsonl = None
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(self.jsonl_path, "a")
            self._tb = EventWriter(os.path.join(workdir, "tensorboard"), start_step)

    def write(self, record: Mapping[str, Any]) -> None:
        """``record`` holds step, epoch, split and any numeric metrics (loss, top1, ...)."""
        if not self.enabled:
            return
        clean = {k: (_round(v) if _is_number(v) else v) for k, v in record.items()}
        clean.setdefault("time", round(time.time(), 3))
        split = record.get("split", "train")
        skip = {"step", "epoch", "split", "time"}
        try:
            self._jsonl.write(json.dumps(clean) + "\n")
            self._jsonl.flush()
            self._tb.scalars(int(record.get("step", 0)),
                             {f"{split}/{k}": v for k, v in record.items() if k not in skip})
        except OSError as e:  # e.g. a full disk: the checkpoints written so far are intact
            raise WorkdirWriteError(
                f"could not write the logs in {os.path.dirname(self.jsonl_path)} "
                f"({e.strerror or e}); the checkpoints written so far are intact: free disk "
                "space (or fix the workdir) and run the same command again to resume") from None

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def truncate_after(workdir: str, step: int) -> list[str]:
    """Drops the ``metrics.jsonl`` records logged after global step ``step``, and damaged
    lines; returns one note per damaged line (a last line cut short by a kill is no damage).

    A resumed run replays the steps after its checkpoint; without this its file would hold
    those steps twice, with this it equals the file of an uninterrupted run (apart from
    timings). Every intact record up to ``step`` is kept. Atomic: written to a temporary
    file, then renamed over the old one.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    kept, dropped, notes = [], 0, []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line.decode())
            keep = int(record["step"]) <= step
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            keep = False
            if number < len(lines):
                notes.append(f"{path} line {number} is damaged ({type(e).__name__}); dropped it, "
                             "the other records are kept")
        if keep:
            kept.append(line.decode() + "\n")
        else:
            dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return notes


def _round(v):
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if not math.isfinite(v) else float(f"{v:.6g}")
    return int(v)


# ---------------------------------------------------------------------------
# Console


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """One line per epoch: ``epoch e/E [#####.....] step/steps loss acc img/s, epoch ETA
    mm:ss, run ETA mm:ss`` (time left in this epoch and in the whole run).

    On a TTY the line is redrawn in place; otherwise every ``update`` prints a plain line.
    """

    def __init__(self, num_epochs: int, steps_per_epoch: int, stream=None, enabled: bool = True,
                 width: int = 24):
        self.num_epochs = num_epochs
        self.steps = steps_per_epoch
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._open = False

    def update(self, epoch: int, step: int, loss: float, acc: float, images_per_s: float) -> None:
        if not self.enabled:
            return
        remaining = self.steps - step
        run_remaining = remaining + (self.num_epochs - epoch - 1) * self.steps
        rate = images_per_s / self._batch if images_per_s > 0 else 0.0  # steps per second
        eta = remaining / rate if rate else math.inf
        run_eta = run_remaining / rate if rate else math.inf
        frac = step / max(self.steps, 1)
        filled = int(round(frac * self.width))
        line = (f"epoch {epoch + 1}/{self.num_epochs} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{step}/{self.steps} loss {loss:.4f} acc {100 * acc:.2f}% "
                f"{images_per_s:,.0f} img/s, epoch ETA {_fmt_time(eta)}, "
                f"run ETA {_fmt_time(run_eta)}")
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    _batch = 1

    def set_batch_size(self, batch_size: int) -> None:
        self._batch = batch_size

    def end_epoch(self) -> None:
        if self.enabled and self.tty and self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


# ---------------------------------------------------------------------------
# Layer table


def _walk(tree, prefix=()):
    """(path, leaf) in the dicts' insertion order, i.e. the order the model created its layers
    (jax.tree_util sorts dict keys)."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _walk(value, prefix + (str(key),))
    else:
        yield prefix, tree


def layer_rows(params, config) -> list[dict]:
    """One row per prunable layer: name, shape, total, kept (the scores or kernel leaves)."""
    from mpt_jax import ops  # noqa: PLC0415

    rows = []
    for path, leaf in _walk(params):
        leaf_name = path[-1]
        if leaf_name not in ("scores", "kernel"):
            continue
        total = int(np.prod(leaf.shape))
        if config.mode in ("dense", "binary_trained"):
            kept = total
        elif config.pruning == "global":
            kept = None  # decided network-wide by one threshold (docs/method.md, global pruning)
        else:
            kept = ops.kept_count(total, float(config.keep_fraction))
        rows.append(dict(name="/".join(path[:-1]), shape=tuple(int(d) for d in leaf.shape),
                         total=total, kept=kept))
    return rows


def layer_order(model, image_shape) -> list[str]:
    """Names ("a/b") of the model's prunable layers in call order, from an abstract init
    (no FLOPs, no memory): pytrees sort dict keys, so the params tree alone loses the order."""
    from mpt_jax.models import probe  # noqa: PLC0415  (Flax/JAX only when a table is made)

    return ["/".join(path) for path in probe.prunable_layers(model, image_shape)]


def layer_table(params, config, order: list[str] | None = None) -> str:
    """Formatted table of ``layer_rows`` with totals and the BatchNorm parameter count.

    ``order``: layer names in the order to print (``layer_order``); others follow.
    """
    rows = layer_rows(params, config)
    if order:
        rank = {name: i for i, name in enumerate(order)}
        rows.sort(key=lambda r: rank.get(r["name"], len(rank)))
    bn = sum(int(np.prod(x.shape)) for p, x in _walk(params) if p[-1] in ("scale", "bias"))
    name_w = max([len("layer")] + [len(r["name"]) for r in rows])
    shape_w = max([len("shape")] + [len(str(r["shape"])) for r in rows])
    header = f"{'layer':<{name_w}}  {'shape':<{shape_w}}  {'weights':>12}  {'kept':>12}  {'% kept':>7}"
    lines = [header, "-" * len(header)]
    total = sum(r["total"] for r in rows)
    kept_known = all(r["kept"] is not None for r in rows)
    for r in rows:
        kept = "global" if r["kept"] is None else f"{r['kept']:,}"
        pct = "" if r["kept"] is None else f"{100 * r['kept'] / r['total']:.2f}"
        lines.append(f"{r['name']:<{name_w}}  {str(r['shape']):<{shape_w}}  {r['total']:>12,}  "
                     f"{kept:>12}  {pct:>7}")
    lines.append("-" * len(header))
    if kept_known:
        kept_total = sum(r["kept"] for r in rows)
        pct = 100 * kept_total / max(total, 1)
        lines.append(f"{'total':<{name_w}}  {'':<{shape_w}}  {total:>12,}  {kept_total:>12,}  "
                     f"{pct:>7.2f}")
    else:
        target = float(config.keep_fraction)
        lines.append(f"{'total':<{name_w}}  {'':<{shape_w}}  {total:>12,}  "
                     f"{'~' + format(int(total * target), ','):>12}  {100 * target:>7.2f}")
    lines.append(f"BatchNorm scale/bias: {bn:,} ({'trained' if _bn_trained(config) else 'frozen'})"
                 if bn else "BatchNorm scale/bias: none (non-affine or no BatchNorm)")
    return "\n".join(lines)


def _bn_trained(config) -> bool:
    return bool(config.get("learn_batchnorm") or config.get("tune_batchnorm")
                or config.mode in ("dense", "binary_trained"))
