"""Model zoo: ``get_model(name, **options)``; ``model_names()`` lists every registered model.

Every architecture exists in its ReLU form (MPT-1/32) and, with the suffix ``_binact``,
in its binary-activation form (MPT-1/1).
"""
from __future__ import annotations

# Each architecture module registers its models in the registry when imported.
from mpt_jax.models import convnets, mlp, resnet, resnet_v2  # noqa: F401
from mpt_jax.models.common import ScoreNet
from mpt_jax.models.mlp import MLP
from mpt_jax.models.registry import get_model, model_names, model_options, register

__all__ = ["get_model", "model_names", "model_options", "register", "ScoreNet", "MLP"]
