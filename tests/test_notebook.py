"""The notebooks, executed cell by cell in a real Jupyter kernel (nbclient), with the
parameters cell's values replaced by a cell inserted after it (as papermill does).

experiments/colab_tpu.ipynb runs as written: its install cell clones the repository (here
the local checkout, cloned offline into a temporary directory, from a working directory
outside any checkout) and installs nothing that is importable already; its data cell
"downloads" a tiny CIFAR-10 python archive built here (a file:// URL) and converts it; the
CIFAR-10 ResNet-18 cell is shrunk to one step by its parameters. Colab's /content is a
temporary directory.
"""
import ast
import json
import os
import tarfile

import pytest

from test_data_convert_cifar import make_batches

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
    assert len(cells) >= 8
    for index, source in cells.items():
        ast.parse(as_python(source), filename=f"cell {index}")
    # Nothing the shell would misread: no placeholder in angle brackets outside a comment.
    for index, source in cells.items():
        for line in source.splitlines():
            assert "<" not in line.split("#")[0].replace("<=", ""), (index, line)


def execute(cells, cwd, monkeypatch) -> str:
    """Runs the notebook cells ``cells`` (nbformat nodes) in a new kernel started in ``cwd``;
    returns the text they printed."""
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need the test extra")
    nbclient = pytest.importorskip("nbclient", reason="notebook tests need the test extra")
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3"}})
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


def colab_cells(*tags, **overrides):
    """The Colab notebook's cells: the parameters cell, then ``overrides`` as a cell, then
    the cells with the given tags (all of them if none), in the notebook's order."""
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need the test extra")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    rest = [c for c in cells if c is not params[0] and (
        not tags or set(tags) & set(c.metadata.get("tags", [])))]
    assert not tags or len(rest) == len(tags), [c.metadata for c in rest]
    override = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in
                                                   overrides.items()))
    return [params[0], override, *rest]


def cifar_python_archive(tmp_path) -> str:
    """A tiny "CIFAR-10 python version" download (20 train, 10 test images)."""
    make_batches(str(tmp_path / "src" / "cifar-10-batches-py"), per_batch=4, test=10)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return str(archive)


def colab_settings(tmp_path, **kw):
    """The parameters that point the notebook at this test's checkout clone, data and disk."""
    return dict(REPO_URL=ROOT, BRANCH="", CHECKOUT=str(tmp_path / "checkout"),
                WORK=str(tmp_path / "content"), DATA="",
                CIFAR_URL="file://" + cifar_python_archive(tmp_path), **kw)


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """A working directory outside any checkout, on one CPU device (the default run's
    numbers are those of one device)."""
    path = tmp_path / "outside"
    path.mkdir()
    monkeypatch.setenv("XLA_FLAGS", "")
    return path


def test_colab_install_accelerator_and_data_cells(tmp_path, outside, monkeypatch):
    settings = colab_settings(tmp_path)
    cells = colab_cells("install", "accelerator", "data", **settings)
    nbformat = pytest.importorskip("nbformat", reason="notebook tests need the test extra")
    # The data cell again: the archive is there, so nothing is downloaded (the URL is bad);
    # then with DATA naming a copy, that copy is used.
    data_cell = cells[-1].source
    cells += [nbformat.v4.new_code_cell("CIFAR_URL = 'file:///no/such/file.tar.gz'"),
              nbformat.v4.new_code_cell(data_cell),
              nbformat.v4.new_code_cell(f"DATA = {str(tmp_path / 'mine.tar')!r}"),
              nbformat.v4.new_code_cell(data_cell)]
    (tmp_path / "mine.tar").write_bytes(b"")
    printed = execute(cells, outside, monkeypatch)
    checkout = tmp_path / "checkout"
    assert (checkout / ".git").is_dir() and (checkout / "configs" / "cifar10_resnet18.py").exists()
    assert f"working directory {checkout}" in printed
    assert "accelerator: CPU (1 x cpu)" in printed and "no TPU or GPU found" in printed
    content = tmp_path / "content"
    assert (content / "cifar-10-python.tar.gz").exists()  # fetched through CIFAR_URL
    assert "wrote 30 images to " + str(content / "cifar10.tar") in printed
    with tarfile.open(content / "cifar10.tar") as tar:
        names = tar.getnames()
    assert len(names) == 30 and sum(n.startswith("test/") for n in names) == 10
    assert f"{content / 'cifar10.tar'} is there already: nothing to download" in printed
    assert f"CIFAR-10: {tmp_path / 'mine.tar'}" in printed
    assert os.listdir(outside) == []  # the clone went where CHECKOUT said


@pytest.mark.end_to_end
def test_colab_notebook_runs_every_cell(tmp_path, outside, monkeypatch):
    """Every cell as written, the install cell included; ResNet-18 for one step."""
    settings = colab_settings(tmp_path, EPOCHS=1, MAX_STEPS=1, BATCH_SIZE=8,
                              SHOW_TENSORBOARD=False)
    printed = execute(colab_cells(**settings), outside, monkeypatch)
    content = tmp_path / "content"
    # The embedded default, with the numbers every run of it gives on one device.
    assert ("final accuracy: top-1 93.31% (top-5 99.72%), best top-1 93.59% at epoch 9"
            in printed), printed[-3000:]
    assert (content / "curves_default.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # CIFAR-10 ResNet-18 on the converted archive: its real test split, one step.
    assert "decoding 30 images" in printed
    with open(content / "runs" / "cifar10_resnet18" / "result.json") as f:
        result = json.load(f)
    assert (result["model"], result["global_step"]) == ("resnet18_cifar", 1)
    assert result["eval_split"] == "test (10 images)" and result["num_eval"] == 10
    assert "wrote " + str(content / "resnet18.ticket") in printed
    assert "Ticket of resnet18_cifar (keep_fraction=0.2" in printed
    assert (content / "resnet18.ticket").stat().st_size > 1_000_000  # ~1 bit x 11 M weights


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


@pytest.mark.end_to_end  # the notebook, every cell
def test_explore_ticket_notebook_evaluates_a_ticket(tmp_path, monkeypatch):
    ticket = os.path.join(ROOT, "tests", "fixtures", "digits_mlp_signs_v1.ticket")
    printed = execute_notebook(EXPLORE, f"TICKET = {ticket!r}\nCONFIG = 'configs/default.py'\n"
                               f"OUT = {str(tmp_path)!r}", tmp_path, monkeypatch)
    assert "Ticket of mlp (keep_fraction=0.5, mode=signs" in printed
    assert "top-1 93.31% on 359 examples" in printed and "run recorded 93.31%" in printed
    for name in ("ticket_layers.png", "ticket_masks.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.end_to_end  # the notebook, every cell
def test_explore_ticket_notebook_reads_the_shipped_ticket(tmp_path, monkeypatch):
    """The notebook's own default, a ticket under tickets/ (without the minute-long CPU
    evaluation of 5,000 CIFAR images)."""
    printed = execute_notebook(EXPLORE, f"EVALUATE = False\nOUT = {str(tmp_path)!r}", tmp_path,
                               monkeypatch)
    assert "Ticket of resnet18_cifar (keep_fraction=0.2, mode=signs" in printed
    assert "found by: 100 epochs, seed 0" in printed
    assert (tmp_path / "ticket_masks.png").exists()
