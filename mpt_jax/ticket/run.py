"""Tickets of training runs: a workdir written by ``python -m mpt_jax.main`` (its
checkpoints, resolved config and result.json) becomes a ticket."""
from __future__ import annotations

import json
import os

from mpt_jax import checkpoint, config_utils
from mpt_jax.data import registry as datasets
from mpt_jax.ticket import freeze, seed
from mpt_jax.ticket.core import Ticket, TicketError, flatten_variables


def run_image_shape(config, image_shape=None) -> tuple[int, ...]:
    """The image shape of a run: ``image_shape`` if given, else the config's, else the
    dataset's."""
    if image_shape:
        return tuple(int(d) for d in image_shape)
    if config.get("image_shape"):
        return tuple(int(d) for d in config.image_shape)
    dataset = config.get("dataset", "")
    info = datasets.find(dataset)
    if info is None or info.image_shape is None:
        raise TicketError(f"cannot tell the image shape of dataset {dataset!r}; pass "
                          f"--image_shape=H,W,C")
    return info.image_shape


def _num_classes(config, params) -> int:
    flat = flatten_variables(params)
    if ("classifier", "scores") in flat:  # every model of the zoo names its last layer so
        return int(flat[("classifier", "scores")].shape[-1])
    return config_utils.num_classes_hint(config)


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def checkpoint_bytes(workdir: str, which: str = "latest") -> int | None:
    """Bytes of the newest ``which`` checkpoint of a run (None if there is none)."""
    directory = os.path.join(workdir, "checkpoints", which)
    steps = [d for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(directory) else []
    if not steps:
        return None
    return _dir_bytes(os.path.join(directory, max(steps, key=int)))


def _result(workdir: str) -> dict | None:
    """The run's result.json (None while the run has not finished or it is unreadable)."""
    path = os.path.join(workdir, "result.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ticket_from_run(workdir: str, which: str = "latest", *, mode: str = "seed",
                    bn_dtype: str = "float32", image_shape=None, exact: bool = True) -> Ticket:
    """The ticket of a training run's latest (or best) checkpoint (``exact``: make_ticket)."""
    run = checkpoint.load_for_inference(workdir, which)
    config = run["config"]
    opts = config_utils.model_kwargs(config, _num_classes(config, run["params"]))
    if opts.get("pruning") == "global" and run["metrics"].get("keep_fraction") is not None:
        # The keep fraction the global ramp had reached at the checkpoint.
        opts["keep_fraction"] = float(run["metrics"]["keep_fraction"])
    variables = dict(params=run["params"], frozen=run["frozen"], batch_stats=run["batch_stats"])
    # The manifest records how the ticket was found: the whole resolved config and the run's
    # result (epochs, accuracy with its split, hardware, versions) when the run has finished.
    extra = dict(workdir=os.path.abspath(workdir), which=which, seed=int(config.seed),
                 dataset=config.get("dataset"), config=json.loads(config_utils.to_json(config)),
                 result=_result(workdir))
    init_key = seed.run_init_key(config.seed) if mode == "seed" else None
    return freeze.make_ticket(config.model, opts, variables,
                              run_image_shape(config, image_shape), mode=mode,
                              init_key=init_key, metrics=run["metrics"], bn_dtype=bn_dtype,
                              extra=extra, exact=exact)
