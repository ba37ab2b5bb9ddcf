"""Import of checkpoints of the original PyTorch biprop code (chrundle/biprop) as tickets.

A reference ``model_best.pth`` holds (under ``state_dict``, keys possibly prefixed
``module.`` by DataParallel) for every SubnetConv ``<name>.weight`` (random W, OIHW) and
``<name>.scores``, and for every BatchNorm ``running_mean``, ``running_var``,
``num_batches_tracked`` and, when affine ("+BN"), ``weight``/``bias``.

Mapping: the reference registers its modules in the order they run (Conv-n:
``convs.<i>`` then ``linear.<i>``; CIFAR ResNets: ``conv1``, ``bn1``,
``layer<s>.<b>.conv1/bn1/conv2/bn2`` (``/conv3/bn3`` in bottlenecks), ``shortcut.0/1``,
``fc``; ImageNet / WRN BinAct: the same with ``downsample.0/1``; VGG: ``convs.<i>``,
``linear.0``), which is the call order of the mpt_jax models. Prunable layers and BatchNorm
layers are therefore matched in order, separately, and every converted shape is checked
against the mpt_jax model, so a wrong ``--model`` fails with the first mismatching layer
instead of loading silently.

Layouts: conv OIHW -> HWIO; the "FC" 1x1 convs (O, I, 1, 1) -> dense (I, O); the first FC
after a flatten takes the reference's channel-major (c, h, w) input order and is permuted
to the NHWC flatten order (h, w, c) (square maps, C = output channels of the last conv).

The imported ticket uses this project's alpha (mean |W| over the kept entries, the
least-squares gain, which never divides by zero), not the reference's floor(k n) divisor:
per layer the two differ by a factor (D + 1) / D when k n is not an integer; the masks and
signs are identical.

torch is optional and imported lazily (``import mpt_jax`` never imports it).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import numpy as np
from flax import traverse_util

from mpt_jax.models import probe
from mpt_jax.ticket import freeze
from mpt_jax.ticket.core import Ticket, TicketError, build_model, flatten_variables

TORCH_HINT = ('pip install torch==2.13.0 (CPU), or pip install -e ".[torch]" in the mpt_jax '
              'checkout')
IMAGENET_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "wrn50_2", "wrn101_2",
                   "wrn34_2")


def _torch():
    try:
        import torch  # noqa: PLC0415  (optional and slow to import: only the import needs it)
    except ImportError:
        raise TicketError(f"import-torch needs PyTorch, which is not installed: {TORCH_HINT}") \
            from None
    return torch


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """The reference checkpoint's state_dict as numpy arrays, ``module.`` prefixes removed."""
    torch = _torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TicketError(f"no such checkpoint: {path}") from None
    except Exception as e:  # pickle with non-tensor objects, corrupt file
        raise TicketError(f"cannot read PyTorch checkpoint {path} with weights_only=True "
                          f"({str(e).splitlines()[0][:160]})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise TicketError(f"{path} holds no state_dict (a {type(obj).__name__})")
    return strip_prefix({k: v.detach().cpu().numpy() for k, v in obj.items()
                         if hasattr(v, "detach")})


def strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state_dict.items():
        out[key[len("module."):] if key.startswith("module.") else key] = value
    return out


def _torch_layers(sd: Mapping[str, np.ndarray]):
    prunable, norms = [], []
    for key in sd:
        if key.endswith(".scores"):
            prefix = key[: -len(".scores")]
            if prefix + ".weight" not in sd:
                raise TicketError(f"checkpoint has {key} but no {prefix}.weight")
            prunable.append(prefix)
        elif key.endswith(".running_mean"):
            norms.append(key[: -len(".running_mean")])
    if not prunable:
        raise TicketError("the checkpoint has no '*.scores' tensors: not a biprop/edge-popup "
                          "SubnetConv model")
    return prunable, norms


def _call_order(model, image_shape):
    """(prunable module paths, BatchNorm module paths, abstract variables), paths in call
    order, from one abstract init."""
    prunable, norms = [], []

    def record(module, call, args, kwargs):
        group = prunable if probe.is_prunable(module) else norms
        path = tuple(module.path)
        if path not in group:
            group.append(path)
        return call(*args, **kwargs)

    with probe.intercept_layers(record, kinds=probe.PRUNABLE + (nn.BatchNorm,)):
        shapes = probe.abstract_variables(model, image_shape)
    return prunable, norms, shapes


def _convert_kernel(t: np.ndarray, jax_shape, flatten_channels: int | None, name: str):
    t = np.asarray(t, np.float32)
    if len(jax_shape) == 4:
        out = np.transpose(t, (2, 3, 1, 0))  # OIHW -> HWIO
    else:
        if t.ndim == 4:
            if t.shape[2:] != (1, 1):
                raise TicketError(f"{name}: a {t.shape} conv cannot become a dense layer")
            t = t[:, :, 0, 0]
        o, i = t.shape
        c = flatten_channels
        if c and i != c and i % c == 0:
            # Reference input order (c, h, w) -> NHWC flatten order (h, w, c).
            hw = i // c
            h = math.isqrt(hw)
            if h * h != hw:
                raise TicketError(f"{name}: cannot un-flatten {i} inputs as {c} channels of a "
                                  f"square map")
            t = t.reshape(o, c, h, h).transpose(0, 2, 3, 1).reshape(o, i)
        out = t.T
    if tuple(out.shape) != tuple(jax_shape):
        raise TicketError(f"torch layer {name} converts to shape {tuple(out.shape)} but the "
                          f"mpt_jax model expects {tuple(jax_shape)}: wrong --model or "
                          f"--model_options for this checkpoint")
    return np.ascontiguousarray(out)


def default_image_shape(model_name: str) -> tuple[int, int, int]:
    base = model_name[: -len("_binact")] if model_name.endswith("_binact") else model_name
    return (224, 224, 3) if base in IMAGENET_MODELS else (32, 32, 3)


def convert_state_dict(sd: Mapping[str, np.ndarray], model_name: str, keep_fraction: float,
                       model_opts: Mapping[str, Any] | None = None,
                       num_classes: int | None = None, image_shape: Sequence[int] | None = None):
    """(model options, variables dict(params, frozen, batch_stats)) of a reference state_dict."""
    if "_v2" in model_name:
        # Layers are matched in call order; a v2 block calls its shortcut BN before BN2
        # (BN2 follows the add) while the reference file lists bn2 first, and both have the
        # same shape: the import would silently swap their statistics.
        raise TicketError(f"importing reference checkpoints of the v2 models ({model_name!r}) "
                          "is not supported: their BatchNorm order differs from the "
                          "reference file's; import a v1 model or train the v2 model here")
    sd = strip_prefix(sd)
    t_prunable, t_norms = _torch_layers(sd)
    opts = dict(model_opts or {})
    opts.update(mode="biprop", keep_fraction=float(keep_fraction))
    affine = any(p + ".weight" in sd for p in t_norms)
    opts.setdefault("bn_affine", affine)
    if num_classes is None:
        num_classes = int(sd[t_prunable[-1] + ".weight"].shape[0])
    opts["num_classes"] = int(num_classes)
    image_shape = tuple(int(d) for d in (image_shape or default_image_shape(model_name)))
    model = build_model(model_name, opts)
    j_prunable, j_norms, shapes = _call_order(model, image_shape)
    if len(j_prunable) != len(t_prunable) or len(j_norms) != len(t_norms):
        raise TicketError(f"the checkpoint has {len(t_prunable)} prunable and {len(t_norms)} "
                          f"BatchNorm layers, model {model_name!r} has {len(j_prunable)} and "
                          f"{len(j_norms)}: wrong --model for this checkpoint")
    flat_params = flatten_variables(shapes["params"])
    params, frozen, stats = {}, {}, {}
    channels = image_shape[-1]  # channels of the map a dense layer may flatten
    for tname, jpath in zip(t_prunable, j_prunable):
        jshape = flat_params[jpath + ("scores",)].shape
        for src, dst, tree in (("scores", "scores", params), ("weight", "weight", frozen)):
            tree[jpath + (dst,)] = _convert_kernel(sd[f"{tname}.{src}"], jshape, channels,
                                                   f"{tname}.{src}")
        channels = int(jshape[-1]) if len(jshape) == 4 else None
    for tname, jpath in zip(t_norms, j_norms):
        stats[jpath + ("mean",)] = np.asarray(sd[tname + ".running_mean"], np.float32)
        stats[jpath + ("var",)] = np.asarray(sd[tname + ".running_var"], np.float32)
        if opts["bn_affine"]:
            c = stats[jpath + ("mean",)].shape
            params[jpath + ("scale",)] = np.asarray(sd.get(tname + ".weight", np.ones(c)),
                                                    np.float32)
            params[jpath + ("bias",)] = np.asarray(sd.get(tname + ".bias", np.zeros(c)),
                                                   np.float32)
    variables = dict(params=traverse_util.unflatten_dict(params),
                     frozen=traverse_util.unflatten_dict(frozen))
    if stats:
        variables["batch_stats"] = traverse_util.unflatten_dict(stats)
    for coll in ("params", "batch_stats"):
        want = {k: v.shape for k, v in flatten_variables(shapes.get(coll, {})).items()}
        have = {k: v.shape for k, v in flatten_variables(variables.get(coll, {})).items()}
        if want != have:
            diff = sorted(set(want.items()) ^ set(have.items()))[:3]
            raise TicketError(f"converted {coll} do not fit model {model_name!r} (first "
                              f"differences {diff}); check --model and --model_options")
    return opts, variables, image_shape


def ticket_from_torch(checkpoint: str, model_name: str, keep_fraction: float, *,
                      model_opts: Mapping[str, Any] | None = None,
                      num_classes: int | None = None, image_shape=None,
                      bn_dtype: str = "float32") -> Ticket:
    """A mode "signs" ticket (W cannot be regenerated from a JAX seed) of a reference file."""
    sd = load_state_dict(checkpoint)
    opts, variables, image_shape = convert_state_dict(sd, model_name, keep_fraction, model_opts,
                                                      num_classes, image_shape)
    return freeze.make_ticket(model_name, opts, variables, image_shape, mode="signs",
                              bn_dtype=bn_dtype, extra=dict(imported_from=str(checkpoint)))
