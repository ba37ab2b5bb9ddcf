"""experiments/colab_tpu.ipynb: every code cell is valid Python once IPython's shell (!) and
magic (%) lines are taken out, and the install, embedded-default and curves cells, run as one
script from the repository root, train the default run to its result line and draw its
training curves (the library calls the notebook makes still exist and work). /content
(Colab's disk) is mapped to a temporary directory; the CIFAR-10 cell is syntax-checked only
(100 epochs of ResNet-18)."""
import ast
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "experiments", "colab_tpu.ipynb")


def code_cells() -> dict:
    """{cell index: source} of the notebook's code cells."""
    with open(NOTEBOOK) as f:
        nb = json.load(f)
    return {i: "".join(c["source"]) for i, c in enumerate(nb["cells"])
            if c["cell_type"] == "code"}


def as_python(source: str) -> str:
    """IPython's !shell and %magic lines become ``pass`` (same indentation)."""
    out = []
    for line in source.splitlines():
        body = line.lstrip()
        out.append(line[:len(line) - len(body)] + "pass" if body[:1] in "!%" and body else line)
    return "\n".join(out)


def test_every_code_cell_is_python():
    cells = code_cells()
    assert len(cells) >= 4
    for index, source in cells.items():
        ast.parse(as_python(source), filename=f"cell {index}")


def test_install_and_default_cells_train_the_default_run(tmp_path):
    cells = code_cells()
    script = "\n\n".join(as_python(cells[i]) for i in (1, 3, 5))
    assert "loop.train_and_evaluate" in script and "enable_compilation_cache" in script
    assert "plot.plot_curves" in script
    script = script.replace("/content", str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final accuracy: top-1" in proc.stdout, proc.stdout[-2000:]
    assert os.path.exists(tmp_path / "runs" / "default" / "result.json")
    # The curves cell drew the run's training curves.
    assert (tmp_path / "curves_default.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# experiments/explore_ticket.ipynb, executed cell by cell in a real Jupyter kernel (nbclient).
EXPLORE = os.path.join(ROOT, "experiments", "explore_ticket.ipynb")


def execute_notebook(path, overrides: str, tmp_path, monkeypatch):
    """Runs every cell of ``path`` from the repository root with the parameters cell's values
    replaced by ``overrides`` (a cell inserted after it, as papermill does); returns the
    text the cells printed."""
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need the test extra")
    nbclient = pytest.importorskip("nbclient", reason="notebook tests need the test extra")
    nb = nbformat.read(path, as_version=4)
    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(overrides))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": ROOT}}).execute()
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


def test_explore_ticket_notebook_evaluates_a_ticket(tmp_path, monkeypatch):
    ticket = os.path.join(ROOT, "tests", "fixtures", "digits_mlp_signs_v1.ticket")
    printed = execute_notebook(EXPLORE, f"TICKET = {ticket!r}\nCONFIG = 'configs/default.py'\n"
                               f"OUT = {str(tmp_path)!r}", tmp_path, monkeypatch)
    assert "Ticket of mlp (keep_fraction=0.5, mode=signs" in printed
    assert "top-1 93.31% on 359 examples" in printed and "run recorded 93.31%" in printed
    for name in ("ticket_layers.png", "ticket_masks.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explore_ticket_notebook_reads_the_shipped_ticket(tmp_path, monkeypatch):
    """The notebook's own default, a ticket under tickets/ (without the minute-long CPU
    evaluation of 5,000 CIFAR images)."""
    printed = execute_notebook(EXPLORE, f"EVALUATE = False\nOUT = {str(tmp_path)!r}", tmp_path,
                               monkeypatch)
    assert "Ticket of resnet18_cifar (keep_fraction=0.2, mode=signs" in printed
    assert "found by: 100 epochs, seed 0" in printed
    assert (tmp_path / "ticket_masks.png").exists()
