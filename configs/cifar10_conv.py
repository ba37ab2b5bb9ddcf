"""Conv-2/4/6/8 on CIFAR-10, MPT-1/32 or MPT-1/1: the paper's Conv-n family in one config.

    python -m mpt_jax.main --config=configs/cifar10_conv.py:depth=4 --workdir=runs/cifar10_conv4
    python -m mpt_jax.main --config=configs/cifar10_conv.py:depth=4,binact
    python -m mpt_jax.main --config=configs/cifar10_conv.py:depth=8,width=1.5,scale_fan=none

Parameters, after the ':' and separated by commas (ml_collections passes the text to
``get_config``):
  depth=2|4|6|8       number of convolutions (default 4)
  binact              binary (sign) activations, MPT-1/1, trained with Adam 0.1 (the reference's
                      Adam has no weight decay); without it ReLU, MPT-1/32, with SGD 0.1,
                      momentum 0.9, weight decay 1e-4
  width=W             channel width multiplier (default 1; the width sweep uses 0.5, 1, 1.5, 2)
  scale_fan=S         fan scaling of the init (default reference; the reference's width-sweep
                      files use none)
Everything else: the CIFAR-10 recipe of configs/common.py (batch 128, cosine, 100 epochs,
Kaiming normal, BatchNorm without scale and shift), keep_fraction 0.5.
The reference's files: conv{n}_kn_unsigned.yml, conv{n}_BinAct_kn_unsigned.yml and
conv8wide*_ukn_unsigned.yml; configs/cifar10_conv{2,4,6,8}{,_binact}.py and
cifar10_conv8_wide.py name the same configs as files.

Paper: no single number: accuracy against the fraction pruned, as figure curves of Conv-2/4/6/8
MPT-1/32 and MPT-1/1 (sweep --config.keep_fraction over 0.8, 0.6, 0.5, 0.4, 0.2, 0.1;
experiments/sweep.py runs it) and of Conv-8 at widths 0.5 to 2. Scores per depth (width 1):
Conv-2 4,300,992; Conv-4 2,425,024; Conv-6 2,261,184; Conv-8 5,275,840.
Held-out split (45,000 train / 5,000 held-out, the shared archive has no test split), the
baselines (--config.mode=dense | edgepopup | binary_trained) and "+BN"
(--config.learn_batchnorm=True): configs/common.py and docs/data.md#cifar-10-in-this-project.
"""
from configs import common

DEPTHS = (2, 4, 6, 8)
USAGE = "depth=2|4|6|8, binact, width=<multiplier>, scale_fan=<none|reference|kept>"


def parse(arg: str | None) -> dict:
    """The parameters of ``arg`` ("depth=4,binact"), with the defaults filled in."""
    params = dict(depth=4, binact=False, width=1.0, scale_fan="reference")
    for item in (part.strip() for part in (arg or "").split(",")):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not item:
            continue
        if key == "binact" and not eq:
            params["binact"] = True
        elif key == "depth" and value in tuple(map(str, DEPTHS)):
            params["depth"] = int(value)
        elif key == "width" and eq:
            params["width"] = _positive(value, item)
        elif key == "scale_fan" and value:
            params["scale_fan"] = value  # validated with the whole config
        else:
            raise ValueError(f"cannot use {item!r}; the parameters are {USAGE}")
    return params


def _positive(text: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"cannot use {item!r}; width needs a positive number")
    return value


def get_config(arg: str | None = None):
    p = parse(arg)
    model = f"conv{p['depth']}" + ("_binact" if p["binact"] else "")
    if p["binact"]:
        config = common.cifar10_adam_config(model, learning_rate=0.1)
    else:
        config = common.cifar10_config(model)
    config.keep_fraction = 0.5
    config.scale_fan = p["scale_fan"]
    config.model_options.width_mult = p["width"]
    return config
