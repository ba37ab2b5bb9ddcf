"""Ticket summary: sizes, bits per weight, compression and MAC counts per layer."""
import math

import pytest

from mpt_jax import ticket as T
from ticket_cases import KEEP, all_runs


@pytest.fixture(scope="module")
def runs():
    return all_runs()


def test_summary_numbers(runs):
    name, opts, shape, key, variables = runs["conv2_binact"]
    ticket = T.make_ticket(name, opts, variables, shape, mode="signs")
    s = T.summary(ticket)
    rows = {r["layer"]: r for r in s["layers"]}
    assert list(rows) == ["conv1", "conv2", "fc1", "fc2", "classifier"]  # call order
    c = [8, 8]  # width_mult 0.125: 64 -> 8 channels; 8x8 images, MP2 -> 4x4 before flatten
    shapes = {"conv1": (3, 3, 3, c[0]), "conv2": (3, 3, c[0], c[1]), "fc1": (4 * 4 * 8, 32),
              "fc2": (32, 32), "classifier": (32, 10)}
    positions = {"conv1": 64, "conv2": 64, "fc1": 1, "fc2": 1, "classifier": 1}
    for layer, shp in shapes.items():
        r = rows[layer]
        n = math.prod(shp)
        kept = n - math.floor((1.0 - KEEP) * n)
        nbytes = math.ceil(n / 8) + math.ceil(kept / 8) + 4
        assert (r["weights"], r["kept"], r["bytes"]) == (n, kept, nbytes)
        assert r["bits_per_weight"] == pytest.approx(8 * nbytes / n)
        assert r["compression"] == pytest.approx(4 * n / nbytes)
        macs = n * positions[layer]
        # The first layer sees the image; every other layer of conv2_binact sees signs.
        assert (r["binary_macs"], r["other_macs"]) == ((0, macs) if layer == "conv1" else (macs, 0))
    t = s["totals"]
    assert t["file_bytes"] == len(T.ticket_bytes(ticket))
    assert t["binary_macs"] + t["other_macs"] == sum(
        math.prod(v) * positions[k] for k, v in shapes.items())
    table = T.summary_table(s)
    assert "TOTAL" in table and "classifier" in table


def test_relu_model_has_no_binary_macs(runs):
    name, opts, shape, key, variables = runs["mlp_affine"]
    s = T.summary(T.make_ticket(name, opts, variables, shape, mode="signs"))
    assert s["totals"]["binary_macs"] == 0 and s["totals"]["other_macs"] > 0


def test_size_and_mac_formatting():
    from mpt_jax.ticket.summary import format_bytes, format_macs

    assert [format_bytes(n) for n in (0, 1023, 1536, 5 * 1024 ** 2, 3 * 1024 ** 3,
                                      2048 * 1024 ** 3)] == [
        "0 B", "1023 B", "1.50 KiB", "5.00 MiB", "3.00 GiB", "2048.00 GiB"]
    assert [format_macs(n) for n in (999, 1234, 2.5e6, 7e9)] == ["999", "1.23k", "2.50M",
                                                                  "7.00G"]


def test_table_footer_reports_checkpoint_and_accuracy(runs):
    name, opts, shape, key, variables = runs["mlp_binact"]
    ticket = T.make_ticket(name, opts, variables, shape, mode="signs",
                           metrics=dict(accuracy=91.25, loss=0.3))
    size = len(T.ticket_bytes(ticket))
    table = T.summary_table(ticket, checkpoint_bytes=10 * size)
    lines = table.splitlines()
    assert lines[0] == (f"Ticket of mlp_binact (keep_fraction={KEEP}, mode=signs; "
                        f"MACs per example)")
    assert lines[-2].endswith("(10.0x the ticket)")
    assert lines[-1] == "run metrics: accuracy=91.2500"  # accuracies only
