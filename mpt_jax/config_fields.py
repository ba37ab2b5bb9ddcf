"""Every config field in one table: name, default, type, valid values and what it means.

``base_config()`` is built from the table, ``config_utils.validate`` checks each field against
its type and valid values, and ``--help`` prints each field's line. Valid values that are
facts of another module (the modes and inits the layers implement, the optimizers and
schedules optim.py builds, the datasets of the data registry) are read from that module.
Adding a field means adding one row here (and using it where it acts).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import ml_collections
from ml_collections import config_dict

from mpt_jax import layers, masks, optim
from mpt_jax.data import image_folder, registry as datasets

PRECISIONS = ("auto", "float32", "bfloat16")
MASK_IMPLS = ("auto", "per_layer", "batched")


@dataclasses.dataclass(frozen=True)
class Range:
    """Valid numbers: ``low`` .. ``high`` (each end open or closed), plus an ``off`` value."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    off: Optional[int] = None     # e.g. -1: "no limit" / "off"
    off_means: str = "off"

    def __contains__(self, value) -> bool:
        if self.off is not None and value == self.off:
            return True
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self, kind: type, value=None) -> str:
        """The valid values in words, e.g. "an integer > 0" or "in (0, 1]". For an integer
        ``value`` below the range the upper bound is left out (it is not the one broken)."""
        if kind is int:
            bound = f"> {_num(self.low)}" if self.low_open else f">= {_num(self.low)}"
            if self.low == 1 and not self.low_open:
                bound = "> 0"
            text = f"an integer {bound}"
            if math.isfinite(self.high) and (value is None or value > self.high):
                text += f" and <= {int(self.high)}"
            return f"{self.off} ({self.off_means}) or {text}" if self.off is not None else text
        lo, hi = ("(" if self.low_open else "["), (")" if self.high_open else "]")
        return f"in {lo}{_num(self.low)}, {_num(self.high)}{hi}"


def _num(x: float) -> str:
    return f"{x:g}"


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field. ``valid``: a tuple of choices, a Range, or None (any value of
    ``type``, or checked where the field acts: the model name and mask_method)."""

    name: str
    default: Any
    type: type
    help: str
    valid: Any = None
    section: str = ""

    def describe_valid(self) -> str:
        if isinstance(self.valid, tuple):
            return " | ".join(self.valid)
        if isinstance(self.valid, Range):
            return self.valid.describe(self.type)
        return ""


def _baseline_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({m: {} for m in layers.MODES if m != "biprop"})


MODEL, DATA, OPTIM, RUN, PRESETS = ("model and pruning", "data", "optimisation", "run control",
                                    "per-mode presets")
POSITIVE = Range(low=1)
COUNT = Range(low=0)
BATCH = Range(low=1, high=1 << 16)  # beyond any real global batch; keeps index math in int32
FIELDS = (
    # Model and pruning.
    Field("model", "mlp", str, "architecture; the suffix _binact gives its binary-activation "
          "(MPT-1/1) form; mpt_jax.models.model_names() lists them", section=MODEL),
    Field("model_options", ml_collections.ConfigDict, dict, "options of the model (e.g. "
          "width_mult, hidden, widen_factor); mpt_jax.models.model_options(model) lists them"),
    Field("mode", "biprop", str, "biprop: learn scores, keep the top-scoring weights of each "
          "layer binarised to +-alpha; edgepopup: keep them as they are (real-valued); dense: "
          "train the weights; binary_trained: train weights binarised with a straight-through "
          "estimator", layers.MODES),
    Field("keep_fraction", 0.5, float, "fraction of the weights of every prunable layer that "
          "is KEPT (0.2 = '80 % pruned')", Range(0.0, 1.0, low_open=True)),
    Field("prune_rate", None, float, "the reference code's name for keep_fraction (same "
          "meaning); when set it replaces keep_fraction"),
    Field("weight_init", "kaiming_normal", str, "distribution of the frozen random weights",
          layers.INITS),
    Field("scale_fan", "none", str, "scales the init's fan by the kept fraction: none; "
          "reference: fan * (1 - keep_fraction), the reference code's formula; kept: "
          "fan * keep_fraction", layers.SCALE_FAN),
    Field("fan_mode", "fan_in", str, "the fan the init's standard deviation uses",
          layers.FAN_MODES),
    Field("pruning", "layerwise", str, "layerwise: every layer keeps keep_fraction of its "
          "weights; global: one score threshold over all layers", masks.PRUNING),
    Field("prune_ramp_epochs", 10, int, "global pruning with keep_fraction <= 0.5: epochs over "
          "which the kept fraction falls (cubically) from 0.5 to keep_fraction", COUNT),
    Field("bn_affine", False, bool, "give every BatchNorm layer a scale and a shift applied "
          "after it normalises (they start at 1 and 0 and change only with learn_batchnorm or "
          "tune_batchnorm); False, the paper's plain tickets: BatchNorm only normalises"),
    Field("learn_batchnorm", False, bool, "also train every BatchNorm layer's scale and shift "
          "while the scores learn (the paper's '+BN' tickets: a little more accurate, and the "
          "ticket file stores them too); sets bn_affine"),
    Field("tune_batchnorm", False, bool, "train only every BatchNorm layer's scale and shift; "
          "the scores, and so the kept weights, stay as they are (their random start in a new "
          "run); sets bn_affine; needs mode biprop or edgepopup"),
    # Data.
    Field("dataset", "digits", str, "the dataset; mpt_jax/data/registry.py says what each is "
          "and where it is read from", datasets.names(), section=DATA),
    Field("data_dir", "", str, "where the data is: an image-folder tree or .tar(.gz) archive, "
          "or the tensorflow-datasets data dir"),
    Field("input_pipeline", "auto", str, "in_memory: decode the dataset into device memory; "
          "tfds: tensorflow-datasets; auto: an image folder in data_dir if there is one, else "
          "tfds", datasets.INPUT_PIPELINES),
    Field("holdout_per_class", 500, int, "images per class held out of the training split "
          "for evaluation when the data has no test split", COUNT),
    Field("cache_dir", image_folder.default_cache_dir(), str, "decoded image folders (.npz) "
          "and, with compilation_cache, compiled steps (xla/) are cached here; '' = no cache"),
    Field("compilation_cache", True, bool, "keep compiled steps in <cache_dir>/xla, so reruns "
          "and resumes skip compiling"),
    Field("augment", True, bool, "random pad-crop-flip of RGB training images (ImageNet: "
          "random resized crop and flip); grayscale data is never augmented"),
    # Optimisation.
    Field("batch_size", 128, int, "global training batch (all devices and hosts together); "
          "a multiple of the device count", BATCH, section=OPTIM),
    Field("eval_batch_size", 128, int, "global evaluation batch; a multiple of the device "
          "count", BATCH),
    Field("num_epochs", 100, int, "training epochs", POSITIVE),
    Field("seed", 0, int, "seeds the random weights, the scores' init and, unless data_seed "
          "is set, the data order and the augmentation", Range(0, 2**31 - 1)),
    Field("data_seed", None, int, "seeds the data order and the augmentation; unset: seed "
          "(the members of a member program share it)"),
    Field("optimizer", "sgd", str, "optimizer of the trained parameters", optim.OPTIMIZERS),
    Field("learning_rate", 0.1, float, "peak learning rate",
          Range(0.0, math.inf, low_open=True, high_open=True)),
    Field("momentum", 0.9, float, "SGD momentum", Range(0.0, 1.0, high_open=True)),
    Field("weight_decay", 1e-4, float, "L2 weight decay added to the gradient (SGD; Adam only "
          "with adam_weight_decay)", Range(0.0, math.inf, high_open=True)),
    Field("nesterov", False, bool, "use Nesterov momentum with SGD"),
    Field("adam_weight_decay", False, bool, "apply weight_decay with Adam too (the reference's "
          "Adam ignores it)"),
    Field("grad_clip", 0.0, float, "clip every gradient entry to [-grad_clip, grad_clip]; "
          "0 = off", Range(0.0, math.inf, high_open=True)),
    Field("schedule", "cosine", str, "learning-rate schedule after the warmup",
          optim.SCHEDULES),
    Field("warmup_epochs", 0, int, "epochs of linear learning-rate warmup (fewer than "
          "num_epochs)", COUNT),
    Field("schedule_granularity", "epoch", str, "epoch: the learning rate changes once per "
          "epoch, as the reference; step: smoothly every step", optim.GRANULARITIES),
    Field("label_smoothing", 0.0, float, "label smoothing of the cross-entropy loss",
          Range(0.0, 1.0, high_open=True)),
    Field("precision", "auto", str, "compute dtype; auto: bfloat16 on GPU/TPU, float32 on CPU "
          "(scores, BatchNorm statistics and optimizer state stay float32)", PRECISIONS),
    Field("mask_impl", "auto", str, "speed only, same results: where the kept (top-scoring) "
          "weights of each layer are chosen at every step; per_layer: inside each layer; "
          "batched: for all layers in one pass before the forward pass (faster on GPUs); auto: "
          "batched on GPU, per_layer elsewhere", MASK_IMPLS),
    Field("mask_method", "radix_many", str, "speed only, same results, used when mask_impl is "
          "batched: the search for each layer's top-scoring weights; radix_many, "
          "radix_pallas (histograms in a Pallas kernel, no atomics), warm (starts from the "
          "previous step's thresholds), compare, compare<D> (D = 1-8 bits per pass) or "
          "per_layer (benchmarks/select_bench.py times them)"),
    # Run control.
    Field("log_every_steps", 50, int, "log loss and accuracy (console, metrics.jsonl, "
          "TensorBoard) every N steps; an epoch's last interval also takes its remainder",
          POSITIVE, section=RUN),
    Field("checkpoint_every_epochs", 1, int, "save a checkpoint every N epochs (and after the "
          "last); the best epoch is held on the host until the next save", POSITIVE),
    Field("checkpoint_every_steps", 0, int, "also save every N global steps within an epoch; "
          "0 = off", COUNT),
    Field("max_train_steps", -1, int, "stop after this many steps (smoke tests)",
          Range(low=1, off=-1, off_means="no limit")),
    Field("restart", False, bool, "discard an existing checkpoint in the workdir and start "
          "over"),
    Field("accept_schedule_change", False, bool, "resume although a field that shapes the "
          "schedule or the data order (num_epochs, learning_rate, batch_size, seed, ...) "
          "changed; the new values apply from the checkpoint on"),
    Field("stop_if_not_learning", False, bool, "stop a run whose best top-1 is below 2 % "
          "after epoch 2, as the reference"),
    Field("progress_bar", True, bool, "a console progress bar with images/s and the time "
          "left in the epoch and in the run"),
    Field("members", lambda: ml_collections.ConfigDict(dict(keep_fraction=(), seed=())), dict,
          "a member program: runs of this config that differ only in keep_fraction and seed, "
          "trained together in one process (one vmapped step, one batch stream), each into "
          "<workdir>/members/keep_fraction=K,seed=S/; empty lists: one run"),
    # Per-mode presets.
    Field("baseline_hparams", _baseline_defaults, dict, "replacements of the fields above "
          "for mode dense / edgepopup / binary_trained (a field set on the command line wins)",
          section=PRESETS),
    Field("learn_batchnorm_hparams", ml_collections.ConfigDict, dict, "replacements of the "
          "fields above for learn_batchnorm=True runs, same rule"),
)
BY_NAME = {f.name: f for f in FIELDS}
# The fields inside a group field, by the group's name (checked where the group acts).
SUBFIELDS = {"members": (
    Field("members.keep_fraction", (), tuple, "the members' keep fractions, member i gets "
          "the i-th (e.g. 0.8,0.6,0.5); one value: every member's; empty: keep_fraction"),
    Field("members.seed", (), tuple, "the members' init seeds, member i gets the i-th "
          "(e.g. 0,1,2); one value: every member's; empty: seed"),
)}


def _sections():
    section = ""
    for f in FIELDS:
        section = f.section or section
        yield section, f


SECTION_OF = {f.name: section for section, f in _sections()}


def base_config() -> ml_collections.ConfigDict:
    """Every field of the table with its default (configs/*.py start from this)."""
    c = ml_collections.ConfigDict()
    for f in FIELDS:
        if f.type is dict:
            c[f.name] = f.default()  # a fresh ConfigDict per config
        elif f.default is None:
            c[f.name] = config_dict.placeholder(f.type)
        else:
            c[f.name] = f.default
    return c


def help_line(name: str) -> str:
    """The field's one-line description, with its valid values ("" for an unknown field)."""
    f = BY_NAME.get(name) or next((f for group in SUBFIELDS.values() for f in group
                                   if f.name == name), None)
    if f is None:
        return ""
    valid = f.describe_valid()
    return f"{f.help} [{valid}]" if valid else f.help
