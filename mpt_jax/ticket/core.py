"""What a ticket is: the data classes, the error every ticket function raises, and the
helpers the rest of the package shares (variable trees, model options, building a model).

A ticket is what a biprop run found: per prunable layer the mask M (fixed from the final
scores), sign(W) on the kept entries and one gain alpha, plus the BatchNorm statistics (and,
for "+BN", scale/bias). The training-time model recomputes M and alpha from the scores at
every forward pass; a ticket freezes them, so evaluation needs neither the scores nor the
optimizer state.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from mpt_jax.models import get_model

MODES = ("seed", "signs")
BN_DTYPES = ("float32", "float16")
SEP = "/"  # joins module paths into layer names ("block1/conv2") and array names


class TicketError(ValueError):
    """A ticket file or ticket request that cannot be used (message says why and the fix)."""


@dataclasses.dataclass
class LayerTicket:
    """One prunable layer: mask, sign bits (meaningful where ``mask``) and alpha."""

    path: tuple[str, ...]
    mask: np.ndarray  # bool, kernel shape
    signs: np.ndarray  # bool, kernel shape: True where W > 0 (only kept entries are used)
    alpha: np.float32

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)

    @property
    def name(self) -> str:
        return SEP.join(self.path)

    @property
    def kept(self) -> int:
        return int(self.mask.sum())

    def kernel(self) -> np.ndarray:
        """alpha * sign(W) * M as float32 (exactly the training-time kernel values)."""
        alpha = np.float32(self.alpha)
        return np.where(self.mask, np.where(self.signs, alpha, -alpha), np.float32(0)).astype(
            np.float32)

    def ternary(self) -> np.ndarray:
        """sign(W) * M in {-1, 0, +1} (int8)."""
        return np.where(self.mask, np.where(self.signs, 1, -1), 0).astype(np.int8)

    def signs_sha256(self) -> str:
        """sha256 (hex) of the packed sign bits of the kept weights: recorded in the file,
        it checks stored signs on load and weights regenerated from a seed."""
        return hashlib.sha256(np.packbits(self.signs[self.mask]).tobytes()).hexdigest()


@dataclasses.dataclass
class Ticket:
    """An in-memory ticket. ``others``: BN statistics / affine parameters by
    "<collection>/<module path>/<leaf>" (float32 or float16)."""

    model: str
    model_options: dict
    image_shape: tuple[int, ...]
    keep_fraction: float
    mode: str
    layers: list[LayerTicket]
    others: dict[str, np.ndarray]
    info: dict = dataclasses.field(default_factory=dict)  # versions, metrics, init, bn_dtype

    def layer(self, name: str) -> LayerTicket:
        for lt in self.layers:
            if lt.name == name:
                return lt
        raise KeyError(name)


def flatten_variables(tree) -> dict[tuple[str, ...], Any]:
    """A (possibly frozen, possibly empty or None) variable tree as {path tuple: leaf}."""
    if tree is None:
        return {}
    tree = _unfreeze(tree)
    return traverse_util.flatten_dict(tree) if tree else {}


def _unfreeze(tree):
    if hasattr(tree, "unfreeze"):
        return tree.unfreeze()
    if isinstance(tree, Mapping):
        return {k: _unfreeze(v) for k, v in tree.items()}
    return tree


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TicketError(f"model option value {value!r} cannot be stored in a ticket manifest; "
                      f"use str/int/float/bool/list options")


def stored_options(model_opts: Mapping[str, Any]) -> dict:
    """The ``get_model`` options as a ticket manifest stores them: JSON values, no dtype (a
    ticket always runs in float32)."""
    return {k: _jsonable(v) for k, v in dict(model_opts).items() if k != "dtype"}


def options_key(model_name: str, model_opts: Mapping[str, Any], image_shape) -> tuple:
    """A hashable key of (model, options, image shape) for caches of compiled functions."""
    opts = json.dumps(stored_options(model_opts), sort_keys=True)
    return model_name, opts, tuple(image_shape)


def _restore_option(value):
    # JSON turns tuples into lists; Flax module fields must stay hashable.
    if isinstance(value, list):
        return tuple(_restore_option(v) for v in value)
    return value


def build_model(model_name: str, model_opts: Mapping[str, Any], **overrides):
    """``get_model`` from options read back from a manifest; a bad name or option is a
    TicketError."""
    opts = {k: _restore_option(v) for k, v in model_opts.items()}
    opts.update(overrides)
    try:
        return get_model(model_name, **opts)
    except ValueError as e:
        raise TicketError(f"cannot build model {model_name!r} from the ticket: {e}") from None
