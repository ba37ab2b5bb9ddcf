"""Member programs: many runs of one architecture trained at once, in one program.

    python -m mpt_jax.main --config=configs/cifar10_conv4.py --workdir=runs/conv4_curve \\
        --config.members.keep_fraction=0.8,0.6,0.5,0.4,0.2,0.1 --config.members.seed=0

Runs that differ only in ``keep_fraction`` and init ``seed`` share everything else: the
model's code, the optimizer, the schedule and, with one ``data_seed``, the batches. A member
program stacks their training states (scores, frozen weights, BatchNorm statistics,
optimizer state, RNG, step: every leaf gains a leading member axis) and trains them with
one ``jax.vmap`` of the training step over that axis, the batch shared
(``in_axes=(0, None)``). On a GPU a small network alone leaves most of the device idle;
M members fill it with M times the work per launch.

Every member equals its single run: member i is the run
``--config.keep_fraction=k_i --config.seed=s_i --config.data_seed=d``. It is initialised
by exactly that run's code (``train.create_train_state`` with its config and key); each
layer keeps exactly that run's count n - floor((1 - k_i) n), computed on the host in
float64 and handed to the vmapped step as int32 data (``masks.kept_counts``, the ``kept``
collection), never as a float32 keep fraction on the device; ties and alpha follow the
same rule. Results agree to float32 rounding (a vmapped convolution may sum in another
order).

What the loop (mpt_jax.loop) records, it records per ``Track``: a single run is one track
whose state is the run's own TrainState (no vmap, no copies); a member program has one
track per member, ``index`` its row of the stacked state. Each member writes what its
single run writes (checkpoints of its own un-stacked state, metrics.jsonl, TensorBoard,
result.json) into ``<workdir>/members/keep_fraction=K,seed=S/``, named like the
overrides that recreate it, so that the member's directory is a complete single-run
workdir (``python -m mpt_jax.main`` with the member's config finds it finished;
``python -m mpt_jax.ticket export --workdir=<member dir>`` exports its ticket). The
program's own workdir holds ``members.json``: its members, their directories and the data
seed.

All members are saved at the same global steps. A program killed between two members'
saves resumes every member from the newest step that all of them saved.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax import checkpoint as ckpt_lib
from mpt_jax import config_utils, masks, metrics as metrics_lib, parallel, report, train
from mpt_jax.data import data_seed
from mpt_jax.errors import CheckpointError

MEMBERS_DIR = "members"
PROGRAM_FILE = "members.json"


@dataclasses.dataclass
class Track:
    """What the loop records for one run: where it writes, its evaluations, its result."""

    config: Any
    workdir: str
    checkpointer: Any
    name: str = ""  # a member's name ("keep_fraction=0.8,seed=0"); "" for a single run
    index: int | None = None  # the member's row of the stacked state; None: a single run
    logger: Any = None
    keep_fraction: float = 1.0  # k_t of the current epoch
    best: dict = dataclasses.field(default_factory=lambda: dict(top1=-1.0, top5=-1.0, epoch=0))
    last_eval: dict | None = None
    epoch_sums: tuple = (0.0, 0.0, 0)  # loss, top-1, steps this epoch (progress bar means)
    interval: dict = dataclasses.field(default_factory=metrics_lib.empty_interval)  # not logged
    pending_best: tuple | None = None  # (host state, meta) of a best epoch not yet written
    result: dict | None = None

    @property
    def label(self) -> str:
        """The prefix of the member's console lines ("" for a single run)."""
        return f"[{self.name}] " if self.name else ""


def is_program(tracks: list[Track]) -> bool:
    return tracks[0].index is not None


# ---------------------------------------------------------------------------
# Workdirs


def layout(config, workdir: str) -> list[tuple[str, Any, str]]:
    """(member name, its config, its workdir) of every run of ``config``: one run's
    ("", config, workdir), or each member's. Reads only: refuses a workdir that holds the
    other kind of run, or a member program with other members (unless ``config.restart``)."""
    members = config_utils.member_configs(config)
    if not members:
        if os.path.exists(os.path.join(workdir, PROGRAM_FILE)):
            raise CheckpointError(f"workdir {workdir} holds a member program ({PROGRAM_FILE}); "
                                  "give its --config.members.* or use a new --workdir")
        return [("", config, workdir)]
    _check_program_dir(workdir, _program_record(config, workdir, members), bool(config.restart))
    return [(name, member, os.path.join(workdir, MEMBERS_DIR, name)) for name, member in members]


def open_tracks(config, workdir: str, runs: list, restart: bool = False,
                during_save=None) -> list[Track]:
    """The tracks of ``config`` in ``workdir`` (``layout``), their checkpointers open
    (``restart`` discards their checkpoints); a member program records its members."""
    tracks = []
    try:
        for i, (name, member, directory) in enumerate(runs):
            tracks.append(Track(member, directory, ckpt_lib.Checkpointer(
                directory, restart=restart, during_save=during_save), name=name,
                index=i if name else None))
        if is_program(tracks) and jax.process_index() == 0:
            members = config_utils.member_configs(config)
            _write_json(os.path.join(workdir, PROGRAM_FILE),
                        _program_record(config, workdir, members))
    except BaseException:
        close(tracks)
        raise
    return tracks


def _program_record(config, workdir: str, members) -> dict:
    return dict(data_seed=data_seed(config), model=config.model, members=[
        dict(name=name, keep_fraction=float(m.keep_fraction), seed=int(m.seed),
             workdir=os.path.join(MEMBERS_DIR, name)) for name, m in members])


def _check_program_dir(workdir: str, program: dict, restart: bool) -> None:
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise CheckpointError(f"workdir {workdir} holds a single run's checkpoints; use a new "
                              "--workdir for the member program")
    path = os.path.join(workdir, PROGRAM_FILE)
    if restart or not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    if saved != program:
        names = ", ".join(m["name"] for m in saved.get("members", []))
        raise CheckpointError(
            f"workdir {workdir} holds a member program of other members or data seed "
            f"({names}; data_seed={saved.get('data_seed')}); pass --config.restart=True to "
            "start this one over, or use a new --workdir")


def _write_json(path: str, record: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)


def close(tracks: list[Track]) -> None:
    """Closes every track's logger and checkpointer (orbax's threads)."""
    for track in tracks:
        if track.logger is not None:
            track.logger.close()
        track.checkpointer.close()


def describe_latest(tracks: list[Track]) -> str:
    """The last checkpoint, for messages: a member program's members all have one there."""
    latest = tracks[0].checkpointer.describe_latest()
    return latest if not is_program(tracks) else f"every member's, e.g. {latest}"


# ---------------------------------------------------------------------------
# States and steps


def initial_states(tracks: list[Track], tx, num_classes: int, image_shape, model) -> list:
    """Each track's initial TrainState (replicated), made exactly as its single run makes it:
    from its own config (a member's model differs in keep_fraction, which the init of
    scale_fan != "none" reads) and the key of its seed."""
    if not is_program(tracks):
        config = tracks[0].config
        return [train.create_train_state(config, model, tx, jax.random.PRNGKey(config.seed),
                                         image_shape)]
    return [train.create_train_state(t.config, train.create_model(t.config, num_classes), tx,
                                     jax.random.PRNGKey(t.config.seed), image_shape)
            for t in tracks]


def stack(states: list, tracks: list[Track], mesh):
    """The state the steps take: one run's own, or the members' stacked on a new leading
    axis (on the host, then placed once); replicated over ``mesh``."""
    if not is_program(tracks):
        return parallel.replicate(states[0], mesh)
    hosts = parallel.to_host(states)
    return parallel.replicate(jax.tree.map(lambda *xs: np.stack(xs), *hosts), mesh)


def split(state, tracks: list[Track]) -> list:
    """Each track's state: one run's is ``state`` itself; a member's is its row, fetched to
    the host once for all members (checkpoints are written from host copies anyway)."""
    if not is_program(tracks):
        return [state]
    host = parallel.to_host(state)
    return [jax.tree.map(lambda x, i=t.index: x[i], host) for t in tracks]


def _member_shapes(tracks: list[Track], tx, num_classes: int, image_shape, model):
    first = tracks[0]
    if is_program(tracks):
        model = train.create_model(first.config, num_classes)
    return jax.eval_shape(lambda: train.create_train_state(
        first.config, model, tx, jax.random.PRNGKey(first.config.seed), image_shape))


def state_shapes(tracks: list[Track], tx, num_classes: int, image_shape, model):
    """ShapeDtypeStructs of ``stack``'s result (for compiling the steps ahead)."""
    shapes = _member_shapes(tracks, tx, num_classes, image_shape, model)
    if not is_program(tracks):
        return shapes
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct((len(tracks), *s.shape), s.dtype), shapes)


def member_counts(tracks: list[Track], params) -> dict:
    """The stacked ``kept`` collection: every member's exact per-layer kept counts (int32,
    computed on the host in float64), with a leading member axis."""
    counts = [masks.kept_counts(params, float(t.config.keep_fraction)) for t in tracks]
    return jax.tree.map(lambda *c: np.stack(c).astype(np.int32), *counts)


def parallel_steps(config, model, tx, mesh, tracks: list[Track], ds):
    """(train step, eval step), jitted over ``mesh``: one run's (``train``), or the same
    steps vmapped over the members' stacked states with the batch shared, each member's
    kept counts bound as constants of the compiled step."""
    if not is_program(tracks):
        return train.make_parallel_steps(config, model, tx, mesh)
    train_fn, eval_fn = train.make_steps(config, model, tx)
    shapes = _member_shapes(tracks, tx, ds.num_classes, ds.image_shape, model)
    counts = member_counts(tracks, shapes.params)

    def train_members(state, batch):
        kept = jax.tree.map(jnp.asarray, counts)  # numpy leaves would stay host constants
        return jax.vmap(lambda s, k: train_fn(s, batch, kept=k))(state, kept)

    def eval_members(state, batch):
        kept = jax.tree.map(jnp.asarray, counts)
        return jax.vmap(lambda s, k: eval_fn(s, batch, kept=k))(state, kept)

    rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    p_train = jax.jit(train_members, in_shardings=(rep, data), out_shardings=(rep, rep),
                      donate_argnums=(0,))
    p_eval = jax.jit(eval_members, in_shardings=(rep, data), out_shardings=rep)
    return p_train, p_eval


def with_keep_fraction(state, tracks: list[Track], sharding):
    """One run: its state with the kept count of this epoch's k_t (global pruning's ramp).
    A member program (layerwise only) keeps the counts its members were made with."""
    if is_program(tracks):
        return state
    return train.with_keep_fraction(state, tracks[0].keep_fraction, sharding)


def step_metrics(fetched: list, track: Track) -> list:
    """The track's own metrics of the fetched steps (a member's row of each)."""
    if track.index is None:
        return fetched
    return [{k: v[track.index] for k, v in f.items()} for f in fetched]


def evaluate(p_eval, state, ds, tracks: list[Track]) -> list[dict]:
    """Each track's ``train.evaluate`` result, from one pass over the eval split."""
    if not is_program(tracks):
        return [train.evaluate(p_eval, state, ds)]
    fetched = parallel.to_host([p_eval(state, batch) for batch in ds.eval_batches()])
    return [train.eval_summary(step_metrics(fetched, t), ds) for t in tracks]


# ---------------------------------------------------------------------------
# What a member program says


def announce(config, workdir: str, ds, tracks: list[Track]) -> None:
    """The header of a new member program."""
    report.echo(f"member program: {len(tracks)} members of {config.model} ({config.mode}, "
                f"pruning={config.pruning}) on {ds.name}: {ds.num_train} train / "
                f"{ds.num_eval} eval ({ds.eval_split_name}), {ds.steps_per_epoch} "
                f"steps/epoch, data_seed={data_seed(config)}, {report.devices()}")
    report.echo(f"members (each a single-run workdir under {os.path.join(workdir, MEMBERS_DIR)}"
                f"): {', '.join(t.name for t in tracks)}")


def finished(tracks: list[Track], note: str | None = None,
             time_breakdown: dict | None = None) -> dict:
    """The end of a member program: every member's result.json (with where the program's
    wall time went) and final line; returns {member name: result}."""
    for track in tracks:
        if time_breakdown is not None:
            track.result["time_breakdown"] = time_breakdown
        if jax.process_index() == 0:
            report.write_result(track.workdir, track.result)
        report.echo(f"{track.label}{report.result_line(track.result)}")
    if note:
        report.echo(note)
    return {t.name: t.result for t in tracks}


def results(tracks: list[Track]) -> dict:
    """What ``train_and_evaluate`` returns: one run's result, a program's by member."""
    return tracks[0].result if not is_program(tracks) else {t.name: t.result for t in tracks}
