"""A small MLP for tiny datasets (e.g. scikit-learn's 8x8 digits, the embedded default)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from mpt_jax.models.common import ScoreNet, flatten
from mpt_jax.models.registry import register


class MLP(ScoreNet):
    """flatten -> [dense -> BN -> act] * len(hidden) -> dense(num_classes).

    With ``binary_activations`` (``mlp_binact``) the hidden activations are signs.
    """

    hidden: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = flatten(x)
        for i, width in enumerate(self.hidden):
            x = self.dense(width, name=f"dense{i}")(x)
            x = self.norm(train, name=f"bn{i}")(x)
            x = self.act(x)
        return self.logits(self.dense(self.num_classes, name="classifier")(x))


register("mlp", MLP)
