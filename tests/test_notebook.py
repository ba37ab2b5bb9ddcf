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
