"""Tickets written by an earlier version of the code keep loading and evaluating.

The two files in tests/fixtures/ were exported (signs and seed mode) from the embedded
default run (`python -m mpt_jax.main --config=configs/default.py`, 10 epochs, seed 0, CPU
float32), before the package layout changed. Their manifests record the run's final
held-out accuracy; evaluating them must give it again."""
import os

import pytest

from mpt_jax import ticket as T

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.mark.parametrize("name", ["digits_mlp_signs_v1.ticket", "digits_mlp_seed_v1.ticket"])
def test_committed_ticket_loads_and_evaluates(name, capsys):
    path = os.path.join(FIXTURES, name)
    ticket = T.load_ticket(path)
    assert ticket.model == "mlp" and ticket.keep_fraction == 0.5
    recorded = ticket.info["metrics"]["accuracy"]
    assert round(recorded, 2) == 93.31  # what the run printed when it was exported
    assert T.main(["ticket", "evaluate", f"--ticket={path}", "--config=configs/default.py"]) == 0
    printed = capsys.readouterr().out
    assert f"top-1 {recorded:.2f}% on 359 examples" in printed
