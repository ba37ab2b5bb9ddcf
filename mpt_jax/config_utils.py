"""Config resolution, validation and fingerprints (the fields themselves: config_fields.py).

* ``base_config()``: every field with its default (the table in config_fields.py);
  ``configs/*.py`` start from it, or from a preset of configs/common.py.
* ``resolve(config, overridden)``: applies the ``prune_rate`` alias, the per-mode baseline
  hyperparameters (for fields the user did not override) and the "+BN" implication.
* ``validate(config)``: cheap checks of every field, run before anything heavy; raises
  ``ConfigError`` with one line naming the field, the bad value and the fix.
* ``fingerprint(config)``: what a checkpoint must agree with to be resumed.
* ``member_configs(config)``: the members of a member program, each as the config of the
  single run it equals.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import jax
import ml_collections

from mpt_jax import config_fields, masks, models
from mpt_jax.models import probe
from mpt_jax.config_fields import base_config  # noqa: F401  (the configs' starting point)
from mpt_jax.data import data_seed, registry as datasets
from mpt_jax.errors import ConfigError, one_line

# Fields that decide what a checkpoint contains; a resumed run must agree on all of them.
FINGERPRINT_FIELDS = ("model", "model_options", "mode", "keep_fraction", "dataset", "weight_init",
                      "scale_fan", "fan_mode", "pruning", "bn_affine")
# Fields a baseline (mode != biprop) may replace through ``baseline_hparams``.
BASELINE_FIELDS = ("optimizer", "learning_rate", "momentum", "weight_decay", "nesterov",
                   "schedule", "warmup_epochs", "batch_size", "eval_batch_size", "weight_init",
                   "scale_fan", "num_epochs", "label_smoothing")


# ---------------------------------------------------------------------------
# Resolution


def resolve(config: ml_collections.ConfigDict,
            overridden: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Returns a resolved copy: prune_rate alias, baseline hyperparameters, "+BN" => affine.

    ``overridden``: dotted names set on the command line (``config_flags.get_override_values``);
    those win over the per-mode baseline values.
    """
    config = ml_collections.ConfigDict(config.to_dict())  # unlocked deep copy, no references
    if config.get("resolved"):
        return config  # idempotent: a second call must not re-apply baseline values
    overridden = set(overridden)
    if config.get("prune_rate") is not None:
        if "keep_fraction" in overridden and config.keep_fraction != config.prune_rate:
            raise ConfigError(f"prune_rate={config.prune_rate} and keep_fraction="
                              f"{config.keep_fraction} disagree; prune_rate is an alias of "
                              "keep_fraction (fraction KEPT): give only one")
        config.keep_fraction = float(config.prune_rate)
    presets = [(f"baseline_hparams.{config.mode}",
                (config.get("baseline_hparams") or {}).get(config.mode) or {})]
    if config.get("learn_batchnorm"):
        presets.append(("learn_batchnorm_hparams", config.get("learn_batchnorm_hparams") or {}))
    for where, values in presets:
        for field, value in dict(values).items():
            if field not in config or field in ("baseline_hparams", "learn_batchnorm_hparams"):
                raise ConfigError(f"{where}.{field} names no config field; valid fields: "
                                  f"{', '.join(BASELINE_FIELDS)}")
            if field not in overridden:
                config[field] = value
    if config.get("learn_batchnorm") or config.get("tune_batchnorm"):
        config.bn_affine = True  # training the BatchNorm scale and shift needs them to exist
    config.resolved = True
    return config


# ---------------------------------------------------------------------------
# Validation


def _fix(field: str) -> str:
    return f"(set --config.{field}=...)"


def _type_ok(value, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    return hasattr(value, "items")


_TYPE_WORDS = {bool: "True or False", int: "an integer", float: "a number", str: "a string",
               dict: "a group of fields"}


def check_field(config, name: str) -> None:
    """The table's checks of one field (type, valid values); ConfigError naming the fix."""
    field = config_fields.BY_NAME[name]
    value = config.get(name)
    if value is None and field.default is None:
        return  # an unset optional field (prune_rate)
    if not _type_ok(value, field.type):
        raise ConfigError(f"{name} must be {_TYPE_WORDS[field.type]}; got {value!r} "
                          f"{_fix(name)}")
    if isinstance(field.valid, tuple) and value not in field.valid:
        raise ConfigError(f"unknown {name} {value!r}; valid values: {', '.join(field.valid)} "
                          f"{_fix(name)}")
    if isinstance(field.valid, config_fields.Range) and value not in field.valid:
        raise ConfigError(f"{name} must be {field.valid.describe(field.type, value)}; got "
                          f"{value!r} {_fix(name)}")


def num_classes_hint(config) -> int:
    """Number of classes for validation / model checks before the data is opened: the
    dataset's, or 10 for an image folder (its class count is known once it is read)."""
    return int(config.get("num_classes", 0) or datasets.get(config.dataset).num_classes or 10)


def model_kwargs(config, num_classes: int, dtype: Any = None) -> dict:
    """Keyword arguments of ``models.get_model(config.model, **kwargs)``."""
    kw = dict(mode=config.mode, keep_fraction=float(config.keep_fraction),
              weight_init=config.weight_init, fan_mode=config.fan_mode,
              scale_fan=config.scale_fan, pruning=config.pruning,
              bn_affine=bool(config.bn_affine), num_classes=int(num_classes))
    if dtype is not None:
        kw["dtype"] = dtype
    options = config.get("model_options") or {}
    kw.update(options.to_dict() if hasattr(options, "to_dict") else dict(options))
    return kw


def validate(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    """Raises ``ConfigError`` (one line: field, bad value, fix) for any invalid value.

    Cheap: builds no arrays. ``device_count`` defaults to ``jax.device_count()`` (all hosts).
    """
    if config.model not in models.model_names():
        raise ConfigError(f"unknown model {config.model!r}; valid models: "
                          f"{', '.join(models.model_names())} {_fix('model')}")
    for name in config_fields.BY_NAME:
        if name in config:
            check_field(config, name)
    try:  # a pattern (compare<D>) rather than a list: masks.py checks it
        masks.check_method(config.get("mask_method", config_fields.BY_NAME["mask_method"].default))
    except ValueError as e:
        raise ConfigError(f"mask_method: {e} {_fix('mask_method')}") from None
    _check_combinations(config)
    for _, member in member_configs(config):  # their own checks, then each as a run
        _check_combinations(member)
    # Model name and options: get_model checks them, then an abstract init (no arrays) the
    # values inside them (e.g. hidden=(0,)) for the dataset's image shape, where known.
    try:
        model = models.get_model(config.model, **model_kwargs(config, num_classes_hint(config)))
        shape = datasets.get(config.dataset).image_shape
        if shape is not None:
            probe.abstract_variables(model, shape)
    except Exception as e:  # noqa: BLE001  (whatever the model code raises for these options)
        raise ConfigError(f"model {config.model!r}: {one_line(e)[:300]} (see "
                          "--config.model_options)") from None
    if device_count is None:
        device_count = jax.device_count()
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % device_count:
            raise ConfigError(
                f"{field}={config[field]} is not divisible by the {device_count} devices; "
                f"use a multiple of {device_count} {_fix(field)}")


def _check_combinations(config) -> None:
    """The rules that tie two fields together."""
    if config.scale_fan == "reference" and float(config.keep_fraction) >= 1.0:
        raise ConfigError("scale_fan='reference' scales the fan by (1 - keep_fraction) = 0 at "
                          "keep_fraction=1; set --config.scale_fan=none or kept")
    if config.warmup_epochs and config.warmup_epochs >= config.num_epochs:
        raise ConfigError(f"warmup_epochs={config.warmup_epochs} must be smaller than "
                          f"num_epochs={config.num_epochs} {_fix('warmup_epochs')}")
    if config.tune_batchnorm and config.mode not in ("biprop", "edgepopup"):
        raise ConfigError(f"tune_batchnorm fine-tunes BatchNorm of a ticket; it needs mode "
                          f"biprop or edgepopup, got mode={config.mode!r} {_fix('mode')}")
    info = datasets.get(config.dataset)
    if info.folder and info.tfds_name is None and not config.data_dir:  # only files hold it
        raise ConfigError(f"dataset {config.dataset!r} needs --config.data_dir=<folder or "
                          f"archive>")


# ---------------------------------------------------------------------------
# Member programs


def _member_values(config, field: str, kind: type) -> tuple:
    name = f"members.{field}"
    values = (config.get("members") or {}).get(field) or ()
    values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
    text = [v for v in values if isinstance(v, str)]
    if text:  # the command line's "0,x" is no list of numbers: config_flags keeps the text
        example = "0.8,0.5" if kind is float else "0,1,2"
        raise ConfigError(f"{name} must be comma-separated {_TYPE_WORDS[kind][3:]}s (e.g. "
                          f"{example}); got {text[0]!r} {_fix(name)}")
    for i, v in enumerate(values):
        if not _type_ok(v, kind):
            raise ConfigError(f"{name}[{i}] must be {_TYPE_WORDS[kind]}; got {v!r} "
                              f"{_fix(name)}")
        if field == "keep_fraction":
            try:
                masks.validate_keep_fraction(v, f"{name}[{i}]")
            except ValueError as e:
                raise ConfigError(f"{e} {_fix(name)}") from None
    return values


def _check_member_fields(config) -> None:
    """The fields a member program cannot share, or not the way one run uses them."""
    if config.pruning != "layerwise":
        raise ConfigError(f"a member program needs pruning='layerwise' (the global pruning "
                          f"ramp is one run's), got {config.pruning!r}; set "
                          f"--config.pruning=layerwise or train one run")
    if config.stop_if_not_learning:
        raise ConfigError("stop_if_not_learning stops one run, but a member program trains "
                          "its members together; set --config.stop_if_not_learning=False")
    method = config.get("mask_method", config_fields.BY_NAME["mask_method"].default)
    if (masks.resolve_mask_impl(config.get("mask_impl", "auto")) == "batched"
            and not masks.takes_traced_counts(method)):
        raise ConfigError(f"mask_method={method!r} takes fixed counts, a member program "
                          f"passes each member's counts as data; use radix_many, compare "
                          f"or per_layer {_fix('mask_method')}")


def member_configs(config) -> list[tuple[str, ml_collections.ConfigDict]]:
    """(name, config) of every member of a member program, in order; [] for one run.

    Member i gets the i-th ``members.keep_fraction`` and ``members.seed`` (a list of one
    value gives every member that value; an empty one, the config's own field). Its config
    is the single run it equals: keep_fraction and seed set, data_seed the program's (so
    all members see the same batches), members empty. Its name, "keep_fraction=K,seed=S",
    is its directory under <workdir>/members. Bad lists raise ConfigError (one line).
    """
    group = config.get("members") or {}
    unknown = sorted(set(group.keys()) - {"keep_fraction", "seed"})
    if unknown:
        raise ConfigError(f"members.{unknown[0]} is not a member field; members take "
                          f"keep_fraction and seed")
    keeps = _member_values(config, "keep_fraction", float)
    seeds = _member_values(config, "seed", int)
    count = max(len(keeps), len(seeds))
    if not count:
        return []
    if {len(keeps), len(seeds)} - {0, 1, count}:
        raise ConfigError(f"members.keep_fraction has {len(keeps)} values and members.seed "
                          f"{len(seeds)}; give both one value per member (member i gets "
                          f"the i-th of each) or one value for every member")
    _check_member_fields(config)
    keeps = keeps or (config.keep_fraction,)
    seeds = seeds or (config.seed,)
    out, seen = [], set()
    for i in range(count):
        keep, seed = float(keeps[i % len(keeps)]), int(seeds[i % len(seeds)])
        name = f"keep_fraction={keep!r},seed={seed}"
        if name in seen:
            raise ConfigError(f"two members are {name}; members must differ in "
                              f"keep_fraction or seed")
        seen.add(name)
        member = ml_collections.ConfigDict(config.to_dict())
        member.update(keep_fraction=keep, seed=seed, data_seed=data_seed(config))
        member.members.update(keep_fraction=(), seed=())
        out.append((name, member))
    return out


# ---------------------------------------------------------------------------
# Fingerprint and serialisation


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(_plain(config.to_dict()), sort_keys=True, default=str)


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def fingerprint(config: ml_collections.ConfigDict) -> dict:
    """The fields a checkpoint must match to be resumed (model, mode, options, k, dataset...)."""
    out = {}
    for field in FINGERPRINT_FIELDS:
        value = config.get(field)
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        out[field] = _plain(value)
    if out.get("keep_fraction") is not None:
        out["keep_fraction"] = float(out["keep_fraction"])
    return out


def fingerprint_diff(saved: dict, current: dict) -> str:
    """One line listing the fields where ``saved`` and ``current`` differ."""
    keys = sorted(set(saved) | set(current))
    parts = [f"{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}"
             for k in keys if saved.get(k) != current.get(k)]
    return "; ".join(parts)
