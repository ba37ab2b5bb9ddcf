"""Config defaults, resolution and validation (issue 3 "Command line and configs", issue 4).

* ``base_config()``: every field of the Config contract with its default; ``configs/*.py``
  start from it and change what their experiment needs.
* ``resolve(config, overridden)``: applies the ``prune_rate`` alias, the per-mode baseline
  hyperparameters (for fields the user did not override) and the "+BN" implication.
* ``validate(config)``: cheap checks of every field, run before anything heavy; raises
  ``ConfigError`` with one line naming the field, the bad value and the fix.
* ``fingerprint(config)``: what a checkpoint must agree with to be resumed.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable

import ml_collections
from ml_collections import config_dict

from mpt_jax.errors import ConfigError

MODES = ("biprop", "edgepopup", "dense", "binary_trained")
DATASETS = ("digits", "cifar10", "mnist", "imagenet2012", "image_folder")
INPUT_PIPELINES = ("auto", "in_memory", "tfds")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant")
GRANULARITIES = ("epoch", "step")
PRECISIONS = ("auto", "float32", "bfloat16")
PRUNING = ("layerwise", "global")
MASK_IMPLS = ("auto", "per_layer", "batched")
INITS = ("kaiming_normal", "signed_constant", "unsigned_constant")
SCALE_FAN = ("none", "reference", "kept")
FAN_MODES = ("fan_in", "fan_out")
NUM_CLASSES = {"digits": 10, "cifar10": 10, "mnist": 10, "imagenet2012": 1000}
# Fields that decide what a checkpoint contains; a resumed run must agree on all of them.
FINGERPRINT_FIELDS = ("model", "model_options", "mode", "keep_fraction", "dataset", "weight_init",
                      "scale_fan", "fan_mode", "pruning", "bn_affine")
# Fields a baseline (mode != biprop) may replace through ``baseline_hparams``.
BASELINE_FIELDS = ("optimizer", "learning_rate", "momentum", "weight_decay", "nesterov",
                   "schedule", "warmup_epochs", "batch_size", "eval_batch_size", "weight_init",
                   "scale_fan", "num_epochs", "label_smoothing")


def default_cache_dir() -> str:
    """Where decoded datasets and compiled steps are cached: $XDG_CACHE_HOME/mpt_jax, else
    ~/.cache/mpt_jax (the XDG default)."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"),
                        "mpt_jax")


def base_config() -> ml_collections.ConfigDict:
    """All fields of the Config contract (PREAMBLE) with neutral defaults."""
    c = ml_collections.ConfigDict()
    # Model and biprop options (SPEC 1-5).
    c.model = "mlp"
    c.model_options = ml_collections.ConfigDict()
    c.mode = "biprop"
    c.keep_fraction = 0.5          # fraction of weights KEPT (0.2 = "80 % pruned")
    c.prune_rate = config_dict.placeholder(float)  # alias of keep_fraction (reference name)
    c.weight_init = "kaiming_normal"
    c.scale_fan = "none"
    c.fan_mode = "fan_in"
    c.pruning = "layerwise"
    c.prune_ramp_epochs = 10       # global pruning only (SPEC 1.7)
    c.bn_affine = False
    c.learn_batchnorm = False      # "+BN": train BN scale/bias too (implies bn_affine)
    c.tune_batchnorm = False       # train BN only (fine-tune a found ticket), SPEC 4.2
    # Data.
    c.dataset = "digits"
    c.data_dir = ""
    c.input_pipeline = "auto"
    c.holdout_per_class = 500
    c.cache_dir = default_cache_dir()
    c.compilation_cache = True     # XLA executables in <cache_dir>/xla: reruns skip compiling
    c.augment = True
    # Optimisation (SPEC 4.4, 6.3, 6.4).
    c.batch_size = 128
    c.eval_batch_size = 128
    c.num_epochs = 100
    c.seed = 0
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.nesterov = False
    c.adam_weight_decay = False    # coupled L2 for Adam (the reference's Adam has none)
    c.grad_clip = 0.0              # element-wise clip, 0 = off
    c.schedule = "cosine"
    c.warmup_epochs = 0
    c.schedule_granularity = "epoch"
    c.label_smoothing = 0.0
    c.precision = "auto"
    # How the layerwise top-k masks are computed (issue 6; same kept sets either way, so
    # not part of the checkpoint fingerprint): "per_layer" (each layer in its own apply),
    # "batched" (all layers at once before apply, mpt_jax.masks with mask_method), or "auto"
    # = batched on GPU (measured fastest there, benchmarks/RESULTS.md), per_layer elsewhere
    # (on XLA:CPU the batched path measured 2-3x slower; TPU unmeasured).
    c.mask_impl = "auto"
    c.mask_method = "radix_many"   # batched only: radix_many | compare | compare<D> | per_layer
    # Run control.
    c.log_every_steps = 50       # an epoch's last log interval also takes its remainder
    c.checkpoint_every_epochs = 1  # the best epoch is held on the host until the next save
    c.checkpoint_every_steps = 0   # also checkpoint every N global steps mid-epoch (0 = off)
    c.max_train_steps = -1         # -1 = no limit (smoke tests)
    c.restart = False              # discard an existing checkpoint in the workdir
    c.stop_if_not_learning = False # SPEC 6.6 / 8.32: stop if best top-1 < 2 % after epoch 2
    c.progress_bar = True
    # Hyperparameters that replace the fields above when mode selects a baseline, unless the
    # field itself is overridden on the command line.
    c.baseline_hparams = ml_collections.ConfigDict({m: {} for m in MODES if m != "biprop"})
    # Hyperparameters that replace the fields above with learn_batchnorm=True ("+BN" runs whose
    # reference config differs, e.g. Wide VGG-Small MPT-1/1+BN: Adam 2e-4), same rule.
    c.learn_batchnorm_hparams = ml_collections.ConfigDict()
    return c


# ---------------------------------------------------------------------------
# Presets shared by configs/*.py (SPEC 6.8, 6.9)

CIFAR10_ARCHIVE = "../shared/data/cifar10_train_jpeg.tar.gz"


def cifar10_config(model: str) -> ml_collections.ConfigDict:
    """CIFAR-10 biprop defaults of SPEC 6.8 (SGD 0.1, momentum 0.9, wd 1e-4, batch 128, cosine,
    no warmup, 100 epochs, Kaiming normal with the reference's fan scaling, non-affine BN),
    read from the shared archive through the in-memory pipeline (no TensorFlow), with 500
    images per class of the training split held out (45,000 train / 5,000 held-out)."""
    c = base_config()
    c.model = model
    c.dataset = "cifar10"
    c.data_dir = CIFAR10_ARCHIVE
    c.input_pipeline = "in_memory"
    c.holdout_per_class = 500
    c.augment = True
    c.batch_size = 128
    c.eval_batch_size = 1000
    c.num_epochs = 100
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.schedule = "cosine"
    c.warmup_epochs = 0
    c.weight_init = "kaiming_normal"
    c.scale_fan = "reference"
    c.log_every_steps = 50
    # Dense / trained-binary baselines (SPEC 6.8 "smallscale_baselines"): SGD 0.01, cosine,
    # wd 1e-4, momentum 0.9, batch 128; weights trained from a plain Kaiming init.
    sgd_baseline = dict(optimizer="sgd", learning_rate=0.01, momentum=0.9, weight_decay=1e-4,
                        schedule="cosine", scale_fan="none")
    c.baseline_hparams.dense = dict(sgd_baseline)
    c.baseline_hparams.binary_trained = dict(sgd_baseline)
    # Edge-popup (paper appendix E): same hyperparameters, signed-constant init.
    c.baseline_hparams.edgepopup = dict(weight_init="signed_constant")
    return c


def cifar10_adam_config(model: str, learning_rate: float = 0.1) -> ml_collections.ConfigDict:
    """CIFAR-10 Adam configs (MPT-1/1 and VGG-Small, SPEC 6.8): Adam (no weight decay, SPEC
    4.4) at the file's learning rate; Adam baselines at 3e-4, constant LR (SPEC 6.8)."""
    c = cifar10_config(model)
    c.optimizer = "adam"
    c.learning_rate = learning_rate
    adam_baseline = dict(optimizer="adam", learning_rate=3e-4, schedule="constant",
                         scale_fan="none")
    c.baseline_hparams.dense = dict(adam_baseline)
    c.baseline_hparams.binary_trained = dict(adam_baseline)
    return c


def imagenet_config(model: str) -> ml_collections.ConfigDict:
    """ImageNet recipe of SPEC 6.9: SGD 0.256, momentum 0.875, wd 2^-15, batch 256, cosine with
    5 warmup epochs, label smoothing 0.1, 100 epochs; tfds imagenet2012 (manual download dir in
    data_dir)."""
    c = base_config()
    c.model = model
    c.dataset = "imagenet2012"
    c.data_dir = "~/tensorflow_datasets"
    c.input_pipeline = "tfds"
    c.batch_size = 256
    c.eval_batch_size = 256
    c.num_epochs = 100
    c.optimizer = "sgd"
    c.learning_rate = 0.256
    c.momentum = 0.875
    c.weight_decay = 2.0 ** -15  # 3.0517578125e-5
    c.schedule = "cosine"
    c.warmup_epochs = 5
    c.label_smoothing = 0.1
    c.log_every_steps = 100
    dense = dict(optimizer="sgd", learning_rate=0.256, momentum=0.875, weight_decay=2.0 ** -15,
                 schedule="cosine", warmup_epochs=5, weight_init="kaiming_normal",
                 scale_fan="none")
    c.baseline_hparams.dense = dict(dense)
    c.baseline_hparams.binary_trained = dict(dense)
    return c


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
        config.bn_affine = True  # "+BN" needs gamma/beta to exist (SPEC 4.1)
    config.resolved = True
    return config


# ---------------------------------------------------------------------------
# Validation


def _choice(config, field: str, valid: Iterable[str]) -> None:
    value = config.get(field)
    valid = tuple(valid)
    if value not in valid:
        raise ConfigError(f"unknown {field} {value!r}; valid values: {', '.join(valid)} "
                          f"(set --config.{field}=...)")


def _positive_int(config, field: str, allow_zero: bool = False) -> None:
    value = config.get(field)
    ok = isinstance(value, int) and not isinstance(value, bool) and (
        value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{field} must be an integer {bound}; got {value!r} "
                          f"(set --config.{field}=...)")


def _number(config, field: str, low: float, high: float, low_open=False, high_open=False):
    value = config.get(field)
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ConfigError(f"{field} must be in {lo}{low}, {high}{hi}; got {value!r} "
                          f"(set --config.{field}=...)")


def dataset_names() -> tuple[str, ...]:
    try:  # the data package may know more datasets than the contract lists
        from mpt_jax import data  # noqa: PLC0415
        names = getattr(data, "dataset_names", None)
        if callable(names):
            return tuple(names())
    except ImportError:
        pass
    return DATASETS


def num_classes_hint(config) -> int:
    """Number of classes for validation / model checks before the data is opened."""
    return int(config.get("num_classes", 0) or NUM_CLASSES.get(config.dataset, 10))


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
    from mpt_jax import models  # noqa: PLC0415  (keeps this module importable standalone)

    if config.model not in models.model_names():
        raise ConfigError(f"unknown model {config.model!r}; valid models: "
                          f"{', '.join(models.model_names())} (set --config.model=...)")
    _choice(config, "mode", MODES)
    _choice(config, "dataset", dataset_names())
    _choice(config, "input_pipeline", INPUT_PIPELINES)
    _choice(config, "optimizer", OPTIMIZERS)
    _choice(config, "schedule", SCHEDULES)
    _choice(config, "schedule_granularity", GRANULARITIES)
    _choice(config, "precision", PRECISIONS)
    _choice(config, "pruning", PRUNING)
    if config.get("mask_impl", "auto") not in MASK_IMPLS:
        raise ConfigError(f"mask_impl must be one of {', '.join(MASK_IMPLS)}; got "
                          f"{config.get('mask_impl')!r} (set --config.mask_impl=...)")
    try:
        from mpt_jax import masks  # noqa: PLC0415
        masks.check_method(config.get("mask_method", "radix_many"))
    except ValueError as e:
        raise ConfigError(f"mask_method: {e} (set --config.mask_method=...)") from None
    _choice(config, "weight_init", INITS)
    _choice(config, "scale_fan", SCALE_FAN)
    _choice(config, "fan_mode", FAN_MODES)
    k = config.get("keep_fraction")
    try:
        k_ok = 0.0 < float(k) <= 1.0
    except (TypeError, ValueError):
        k_ok = False
    if not k_ok:
        raise ConfigError(f"keep_fraction must be in (0, 1] (the fraction of weights KEPT, "
                          f"e.g. 0.2 for '80 % pruned'); got {k!r} (set --config.keep_fraction=...)")
    if config.scale_fan == "reference" and float(k) >= 1.0:
        raise ConfigError("scale_fan='reference' scales the fan by (1 - keep_fraction) = 0 at "
                          "keep_fraction=1; set --config.scale_fan=none or kept")
    for field in ("batch_size", "eval_batch_size", "num_epochs", "log_every_steps",
                  "checkpoint_every_epochs"):
        _positive_int(config, field)
    for field in ("warmup_epochs", "prune_ramp_epochs", "checkpoint_every_steps"):
        _positive_int(config, field, allow_zero=True)
    if config.warmup_epochs and config.warmup_epochs >= config.num_epochs:
        raise ConfigError(f"warmup_epochs={config.warmup_epochs} must be smaller than "
                          f"num_epochs={config.num_epochs} (set --config.warmup_epochs=...)")
    mts = config.get("max_train_steps", -1)
    if not isinstance(mts, int) or isinstance(mts, bool) or (mts != -1 and mts <= 0):
        raise ConfigError(f"max_train_steps must be -1 (no limit) or a positive integer; got {mts!r}")
    _number(config, "learning_rate", 0.0, math.inf, low_open=True, high_open=True)
    _number(config, "momentum", 0.0, 1.0, high_open=True)
    _number(config, "weight_decay", 0.0, math.inf, high_open=True)
    _number(config, "label_smoothing", 0.0, 1.0, high_open=True)
    _number(config, "grad_clip", 0.0, math.inf, high_open=True)
    if not isinstance(config.seed, int) or isinstance(config.seed, bool):
        raise ConfigError(f"seed must be an integer; got {config.seed!r}")
    if config.tune_batchnorm and config.mode not in ("biprop", "edgepopup"):
        raise ConfigError(f"tune_batchnorm fine-tunes BN of a ticket; it needs mode biprop or "
                          f"edgepopup, got mode={config.mode!r}")
    if config.dataset == "image_folder" and not config.data_dir:
        raise ConfigError("dataset 'image_folder' needs --config.data_dir=<folder or archive>")
    # Model name and options: get_model checks them without building arrays.
    try:
        models.get_model(config.model, **model_kwargs(config, num_classes_hint(config)))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model {config.model!r}: {e} (see --config.model_options)") from None
    if device_count is None:
        import jax  # noqa: PLC0415
        device_count = jax.device_count()
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % device_count:
            raise ConfigError(
                f"{field}={config[field]} is not divisible by the {device_count} devices; "
                f"use a multiple of {device_count} (set --config.{field}=...)")


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
