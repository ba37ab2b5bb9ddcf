"""What a ticket costs: per layer and total sizes, bits per weight, compression against
float32, and multiply-accumulates split into binary (1-bit x 1-bit) and other, as a dict
(``summary``) or as a Larq-style text table (``summary_table``).

For a training run: ``summary_table(make_ticket(name, opts, variables, image_shape))``.
"""
from __future__ import annotations

import numpy as np

from mpt_jax.ticket import format as ticket_format
from mpt_jax.ticket import inference
from mpt_jax.ticket.core import Ticket


def _layer_row(lt, mode: str, probed: dict) -> dict:
    n = int(np.prod(lt.shape))
    mask_bytes = (n + 7) // 8
    sign_bytes = (lt.kept + 7) // 8 if mode == "signs" else 0
    nbytes = mask_bytes + sign_bytes + 4
    macs = n * probed["out_positions"]
    return dict(
        layer=lt.name, kind=probed["kind"], shape=list(lt.shape), weights=n, kept=lt.kept,
        kept_fraction=lt.kept / n, bits_per_weight=8.0 * nbytes / n, bytes=nbytes,
        fp32_bytes=4 * n, compression=4.0 * n / nbytes, binary_input=probed["binary_input"],
        binary_macs=macs if probed["binary_input"] else 0,
        other_macs=0 if probed["binary_input"] else macs)


def summary(ticket: Ticket, file_bytes: int | None = None,
            checkpoint_bytes: int | None = None) -> dict:
    """Per layer and total sizes, bits per weight, compression and MACs (per example).

    bits per weight = (mask bits + sign bits stored + 32 alpha bits) / weights, counted from
    the actual packed byte sizes; MACs are of the dense layer (every weight position, as the
    bit-packed kernel computes them) and are "binary" when the layer input is binary AND the
    weights are binary (1-bit x 1-bit XNOR-popcount), otherwise "other".
    """
    probed = inference.probe_layers(ticket)
    rows = [_layer_row(lt, ticket.mode, probed[lt.name]) for lt in ticket.layers]
    bn_bytes = int(sum(a.nbytes for a in ticket.others.values()))
    bn_values = int(sum(a.size for a in ticket.others.values()))
    total_w = sum(r["weights"] for r in rows)
    layer_bytes = sum(r["bytes"] for r in rows)
    size = len(ticket_format.ticket_bytes(ticket)) if file_bytes is None else int(file_bytes)
    fp32_total = 4 * (total_w + bn_values)
    totals = dict(
        weights=total_w, kept=sum(r["kept"] for r in rows), layer_bytes=layer_bytes,
        bits_per_weight=8.0 * layer_bytes / total_w, bn_values=bn_values, bn_bytes=bn_bytes,
        overhead_bytes=size - layer_bytes - bn_bytes, file_bytes=size,
        file_bits_per_weight=8.0 * size / total_w, fp32_bytes=fp32_total,
        compression=fp32_total / size,
        binary_macs=sum(r["binary_macs"] for r in rows),
        other_macs=sum(r["other_macs"] for r in rows))
    if checkpoint_bytes is not None:
        totals["checkpoint_bytes"] = int(checkpoint_bytes)
    return dict(model=ticket.model, mode=ticket.mode, keep_fraction=ticket.keep_fraction,
                image_shape=list(ticket.image_shape), layers=rows, totals=totals,
                metrics=ticket.info.get("metrics", {}))


def format_bytes(n: float) -> str:
    """``n`` bytes as "123 B", "1.50 KiB", "2.25 MiB" or "1.00 GiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024.0
    return str(n)


def format_macs(n: float) -> str:
    """A MAC count as "1.23G", "4.56M", "7.89k" or "123"."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


_HEAD = ("layer", "kind", "weights", "kept", "bits/w", "bytes", "fp32", "ratio", "binary MACs",
         "other MACs")


def _table_rows(s: dict) -> list[tuple]:
    """The layer rows, then the three total rows (BatchNorm, header + manifest, file)."""
    rows = []
    for r in s["layers"]:
        rows.append((r["layer"], r["kind"], f"{r['weights']:,}", f"{r['kept']:,}",
                     f"{r['bits_per_weight']:.3f}", format_bytes(r["bytes"]),
                     format_bytes(r["fp32_bytes"]), f"{r['compression']:.1f}x",
                     format_macs(r["binary_macs"]), format_macs(r["other_macs"])))
    t = s["totals"]
    rows.append(("BatchNorm / other", "", f"{t['bn_values']:,}", "", "",
                 format_bytes(t["bn_bytes"]), format_bytes(4 * t["bn_values"]), "", "", ""))
    rows.append(("header + manifest", "", "", "", "", format_bytes(t["overhead_bytes"]), "", "",
                 "", ""))
    rows.append(("TOTAL (file)", "", f"{t['weights']:,}", f"{t['kept']:,}",
                 f"{t['file_bits_per_weight']:.3f}", format_bytes(t["file_bytes"]),
                 format_bytes(t["fp32_bytes"]), f"{t['compression']:.1f}x",
                 format_macs(t["binary_macs"]), format_macs(t["other_macs"])))
    return rows


def _footer(s: dict) -> list[str]:
    t = s["totals"]
    lines = [f"prunable weights only: {t['bits_per_weight']:.3f} bits/weight"]
    if "checkpoint_bytes" in t:
        lines.append(f"run checkpoint: {format_bytes(t['checkpoint_bytes'])} "
                     f"({t['checkpoint_bytes'] / t['file_bytes']:.1f}x the ticket)")
    acc = {k: v for k, v in s.get("metrics", {}).items() if "acc" in k}
    if acc:
        lines.append("run metrics: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float)
                                                 else f"{k}={v}" for k, v in acc.items()))
    return lines


def summary_table(source, **kwargs) -> str:
    """Larq-style text table of ``summary(...)``; ``source`` is a Ticket or a summary dict
    (``kwargs`` go to ``summary`` for a Ticket)."""
    s = summary(source, **kwargs) if isinstance(source, Ticket) else source
    rows = _table_rows(s)
    widths = [max(len(str(row[i])) for row in [_HEAD, *rows]) for i in range(len(_HEAD))]

    def fmt(row):
        return "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))

    rule = "-" * len(fmt(_HEAD))
    out = [f"Ticket of {s['model']} (keep_fraction={s['keep_fraction']}, mode={s['mode']}; "
           f"MACs per example)", rule, fmt(_HEAD), rule]
    out += [fmt(r) for r in rows[:-3]]
    out += [rule] + [fmt(r) for r in rows[-3:]]
    return "\n".join(out + [rule] + _footer(s))
