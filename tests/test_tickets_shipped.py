"""The tickets shipped in tickets/: each loads without JAX's random numbers (signs mode),
fits the size budget, records how it was found, evaluates on a user's own test split, and
reproduces its recorded held-out accuracy on the CPU."""
import glob
import os
import pathlib

import pytest

from mpt_jax import ticket as T

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = sorted(glob.glob(str(ROOT / "tickets" / "*.ticket")))
SHARED_ARCHIVE = ROOT.parent / "shared" / "data" / "cifar10_train_jpeg.tar.gz"


def config_for(path):
    stem = os.path.basename(path)[:-len(".ticket")]
    flags = ["--config.learn_batchnorm=True"] if stem.endswith("+bn") else []
    return f"--config=configs/{stem.split('+')[0]}.py", flags


def test_there_is_a_shipped_ticket():
    assert SHIPPED, "tickets/ holds no ticket"


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_shipped_ticket_records_how_it_was_found(path):
    ticket = T.load_ticket(path)
    assert ticket.mode == "signs"  # independent of JAX's PRNG staying the same
    assert os.path.getsize(path) <= 2_000_000
    extra = ticket.info["extra"]
    result, config = extra["result"], extra["config"]
    assert result["epochs_completed"] == config["num_epochs"] == 100
    assert result["final_top1"] == pytest.approx(ticket.info["metrics"]["accuracy"], abs=5e-3)
    assert result["eval_split"].startswith("held-out: last 500 per class")
    assert result["hardware"] and result["jax_version"] and result["precision"]
    assert config["model"] == ticket.model and config["keep_fraction"] == ticket.keep_fraction
    assert config["mode"] == "biprop" and config["seed"] == result["seed"]
    assert os.path.basename(path) in (ROOT / "tickets" / "README.md").read_text()


@pytest.mark.end_to_end  # the ticket CLI on a converted archive
@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_shipped_ticket_evaluates_on_a_users_test_split(path, tmp_path, capsys, monkeypatch):
    """--config.data_dir=<archive with a test/ split> evaluates on that split."""
    from test_data_convert_cifar import make_batches  # noqa: PLC0415  (a tiny CIFAR download)

    from mpt_jax.data import convert_cifar

    make_batches(str(tmp_path / "batches"))
    archive = tmp_path / "cifar10.tar"
    assert convert_cifar.main([f"--src={tmp_path / 'batches'}", f"--out={archive}"]) == 0
    monkeypatch.chdir(ROOT)
    config, flags = config_for(path)
    assert T.main(["ticket", "evaluate", f"--ticket={path}", config, *flags,
                   f"--config.data_dir={archive}", f"--config.cache_dir={tmp_path / 'cache'}"]
                  ) == 0  # the tiny archive has 20 training images, fewer than a training batch
    printed = capsys.readouterr().out
    assert "on 10 examples (test (10 images))" in printed


@pytest.mark.full_size
@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_shipped_ticket_reproduces_its_recorded_accuracy(path, capsys, monkeypatch):
    if not SHARED_ARCHIVE.exists():
        pytest.skip(f"the CIFAR-10 archive the ticket was evaluated on is not at {SHARED_ARCHIVE}")
    monkeypatch.chdir(ROOT)
    config, flags = config_for(path)
    assert T.main(["ticket", "evaluate", f"--ticket={path}", config, *flags,
                   f"--config.data_dir={SHARED_ARCHIVE}"]) == 0
    recorded = T.load_ticket(path).info["metrics"]["accuracy"]
    printed = capsys.readouterr().out
    assert f"top-1 {recorded:.2f}% on 5,000 examples" in printed, printed
