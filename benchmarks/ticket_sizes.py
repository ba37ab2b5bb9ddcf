"""The README's table of ticket file sizes, rebuilt and printed.

    python benchmarks/ticket_sizes.py [--rows conv4:0.5,resnet18_cifar_binact:0.2]

For each model and keep fraction: the model's own initialisation (seed 0, 32x32x3 CIFAR
images, 10 classes: random weights and random initial scores) made into a ticket in both
modes (``seed``: the seed regenerates the weights; ``signs``: the kept signs are stored), and
the bytes of the ticket file. The sizes depend on the layer shapes and the keep fraction,
not on which weights a training run keeps (a mask of n weights takes n bits whichever they
are), so no training is needed. Columns: the file's bytes, bits per weight of the whole
file (header, manifest and BatchNorm arrays included) and of the prunable layers alone,
and how much smaller the file is than the network's float32 weights.
"""
from __future__ import annotations

import argparse
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from mpt_jax import ticket as T  # noqa: E402

IMAGE_SHAPE = (32, 32, 3)
DEFAULT_ROWS = "conv4:0.5,resnet18_cifar_binact:0.2"
HEADER = ("| model | keep | mode | file | bits per weight (whole file) | bits per weight "
          "(layers only) | vs fp32 |")


def file_size(nbytes: int) -> str:
    """As the README writes sizes: bytes below a megabyte, decimal MB above."""
    return f"{nbytes:,} B" if nbytes < 1_000_000 else f"{nbytes / 1e6:.2f} MB"


def rows(model: str, keep_fraction: float) -> list[dict]:
    """The seed and signs rows of one model and keep fraction."""
    options = dict(keep_fraction=keep_fraction, num_classes=10)
    key = T.run_init_key(0)
    variables = T.init_variables(model, options, IMAGE_SHAPE, key)
    out = []
    for mode in ("seed", "signs"):
        # exact=False: the same masks, signs and bytes without compiling the exactness checks.
        ticket = T.make_ticket(model, options, variables, IMAGE_SHAPE, mode=mode,
                               init_key=key if mode == "seed" else None, exact=False)
        size = len(T.ticket_bytes(ticket))
        totals = T.summary(ticket, file_bytes=size)["totals"]
        out.append(dict(model=model, keep=keep_fraction, mode=mode, file_bytes=size,
                        file_bits_per_weight=totals["file_bits_per_weight"],
                        layer_bits_per_weight=totals["bits_per_weight"],
                        vs_fp32=totals["compression"]))
    return out


def table_line(row: dict) -> str:
    return (f"| {row['model']} | {row['keep']:g} | {row['mode']} | {file_size(row['file_bytes'])}"
            f" | {row['file_bits_per_weight']:.3f} | {row['layer_bits_per_weight']:.4f} | "
            f"{row['vs_fp32']:.1f}x |")


def table(all_rows: list[dict]) -> str:
    return "\n".join([HEADER, "|" + "---|" * 7] + [table_line(r) for r in all_rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default=DEFAULT_ROWS, help="comma list of model:keep_fraction")
    args = ap.parse_args(argv)
    all_rows = []
    for item in args.rows.split(","):
        model, _, keep = item.strip().partition(":")
        all_rows += rows(model, float(keep))
    print(table(all_rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
