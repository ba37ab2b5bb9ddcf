"""The model registry: name -> (module class, fixed attributes).

Each architecture module registers its models here when it is imported (mpt_jax.models imports
them all); ``get_model`` builds one by name. A module of its own so the architecture modules
can register without importing the package that imports them.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn

# name -> (module class, fixed attributes)
_REGISTRY: dict[str, tuple[type, dict]] = {}


def register(name: str, cls: type, **fixed) -> None:
    """Registers ``name`` (ReLU, MPT-1/32) and ``name + "_binact"`` (sign, MPT-1/1)."""
    _REGISTRY[name] = (cls, dict(fixed, binary_activations=False))
    _REGISTRY[name + "_binact"] = (cls, dict(fixed, binary_activations=True))


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def model_options(name: str) -> list[str]:
    """The options ``get_model(name, ...)`` accepts."""
    cls, fixed = _lookup(name)
    return sorted(f.name for f in dataclasses.fields(cls)
                  if f.init and f.name not in fixed and f.name not in ("parent", "name"))


def _lookup(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(model_names())}")
    return _REGISTRY[name]


def get_model(name: str, **options) -> nn.Module:
    """Builds model ``name`` with ``options`` (see ``ScoreNet`` and each model's fields).

    Unknown names or options raise a ValueError listing the valid ones.
    """
    cls, fixed = _lookup(name)
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for model {name!r}; "
                         f"valid options: {', '.join(valid)}")
    return cls(**fixed, **options)
