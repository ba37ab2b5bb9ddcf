"""Shared by the tests of mpt_jax.ticket: small biprop "runs" (the training code's init plus
random BatchNorm statistics / affine parameters) and helpers that read a ticket file
independently of the code under test."""
import json
import struct

import jax
import numpy as np

from mpt_jax import ticket as T
from mpt_jax.models import get_model

KEEP = 0.3
# (model name, get_model options, image shape): an MLP with sign activations, an MLP with
# "+BN" (affine BN, trained scale/bias) and a small conv model with BN, sign activations,
# max-pooling and a flatten into dense layers.
CASES = {
    "mlp_binact": ("mlp_binact", dict(hidden=(48, 32)), (8, 8, 1)),
    "mlp_affine": ("mlp", dict(hidden=(40,), bn_affine=True), (8, 8, 1)),
    "conv2_binact": ("conv2_binact", dict(width_mult=0.125), (8, 8, 3)),
}


def run_case(case, seed=3):
    """A 'trained' run: the init of the training code plus random BN statistics / affine.
    Returns (model name, options, image shape, init key, variables)."""
    name, opts, shape = CASES[case]
    opts = dict(opts, keep_fraction=KEEP, num_classes=10)
    key = T.run_init_key(seed)
    variables = dict(T.init_variables(name, opts, shape, key))
    # Drawn in NumPy: eager jax.random per leaf would compile a program for every shape.
    rng = np.random.default_rng(seed)

    def normal(shape):
        return rng.standard_normal(shape).astype(np.float32)

    if "batch_stats" in variables:
        stats = variables["batch_stats"]
        variables["batch_stats"] = jax.tree_util.tree_map_with_path(
            lambda p, a: np.abs(normal(a.shape)) + np.float32(0.5) if p[-1].key == "var" else
            normal(a.shape), stats)
    if opts.get("bn_affine"):
        params = dict(variables["params"])
        for mod, leaves in params.items():
            if "scale" in leaves:
                params[mod] = dict(scale=np.asarray(leaves["scale"]) + 0.3 * normal(
                    leaves["scale"].shape), bias=np.float32(0.2) + np.asarray(leaves["bias"]))
        variables["params"] = params
    return name, opts, shape, key, variables


def all_runs():
    return {case: run_case(case) for case in CASES}


def training_logits(name, opts, variables, images):
    """Logits of the training-time (biprop) model."""
    model = get_model(name, **opts)
    return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)


def prunable_weight_count(ticket):
    return sum(int(np.prod(lt.shape)) for lt in ticket.layers)


def overhead_bytes(data):
    """Header + manifest + BN arrays, computed from the file itself."""
    _, _, _, manifest_len, _ = struct.unpack_from("<8sIIQ32s", data)
    manifest = json.loads(data[56:56 + manifest_len])
    bn = sum(e["nbytes"] for e in manifest["arrays"]
             if e["name"].startswith(("params/", "batch_stats/")))
    return 56 + manifest_len + bn
