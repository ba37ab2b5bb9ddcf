"""``python -m mpt_jax.ticket``: usage and exit codes, summary, export from a run, evaluate."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax import ticket as T
from ticket_cases import KEEP, overhead_bytes, prunable_weight_count, run_case, \
    training_logits


@pytest.fixture(scope="module")
def mlp_run():
    return run_case("mlp_binact")


def test_usage_and_exit_codes(capsys, tmp_path):
    assert T.main(["ticket", "--help"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: python -m mpt_jax.ticket COMMAND [flags]") and not err
    assert "import-torch" in out
    assert T.main(["ticket", "summary", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage:")
    for argv in (["ticket"], ["ticket", "frobnicate"]):
        assert T.main(argv) == 2
        out, err = capsys.readouterr()
        assert not out and err.startswith("usage:")
    assert T.main(["ticket", "summary", "--no_such_flag=1"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert T.main(["ticket", "export", f"--out={tmp_path / 'x'}"]) == 2
    assert capsys.readouterr().err == "error: export needs --workdir=RUN and --out=FILE\n"


@pytest.mark.multiprocess
def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "mpt_jax.ticket", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m mpt_jax.ticket")
    proc = subprocess.run([sys.executable, "-m", "mpt_jax.ticket", "summary"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "error: summary needs --ticket=FILE or --workdir=RUN\n"
    # An error raised in a submodule (here the PyTorch import, with or without torch
    # installed) is the same TicketError class under `python -m`: one line, status 2.
    proc = subprocess.run([sys.executable, "-m", "mpt_jax.ticket", "import-torch",
                           "--checkpoint=missing.pth", "--model=conv2", "--keep_fraction=0.2",
                           "--out=never.ticket"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


@pytest.mark.multiprocess  # a subprocess writing into a closed pipe
def test_cli_summary_json_and_errors(mlp_run, tmp_path, capsys, run_into_closed_pipe):
    name, opts, shape, key, variables = mlp_run
    path = tmp_path / "t.mptk"
    size = T.save_ticket(T.make_ticket(name, opts, variables, shape, mode="seed", init_key=key),
                         path)
    assert T.main(["ticket", "summary", f"--ticket={path}", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["totals"]["file_bytes"] == size and s["mode"] == "seed"
    # A second call in the same process starts from the defaults, not the last call's flags.
    assert T.main(["ticket", "summary", f"--ticket={path}"]) == 0
    assert not capsys.readouterr().out.lstrip().startswith("{")
    # `ticket summary ... | head` whose reader has gone: status 0, no BrokenPipeError traceback.
    proc = run_into_closed_pipe("-m", "mpt_jax.ticket", "summary", f"--ticket={path}")
    assert proc.returncode == 0 and "Error" not in proc.stderr, proc.stderr
    path.write_bytes(path.read_bytes()[:-3])
    assert T.main(["ticket", "summary", f"--ticket={path}"]) == 2
    assert "error:" in capsys.readouterr().err


def test_export_from_run_and_evaluate(mlp_run, tmp_path, monkeypatch, capsys):
    """CLI export from a workdir (checkpoint loading stubbed with the run's variables)."""
    import ml_collections

    from mpt_jax import checkpoint

    name, opts, shape, key, variables = mlp_run
    config = ml_collections.ConfigDict(dict(
        model=name, model_options=dict(hidden=(48, 32)), mode="biprop", keep_fraction=KEEP,
        weight_init="kaiming_normal", fan_mode="fan_in", scale_fan="none", pruning="layerwise",
        bn_affine=False, dataset="digits", seed=3))
    run = dict(params=variables["params"], frozen=variables["frozen"],
               batch_stats=variables["batch_stats"], pruning={}, config=config,
               metrics=dict(accuracy=91.0, keep_fraction=KEEP))
    monkeypatch.setattr(checkpoint, "load_for_inference", lambda workdir, which="latest": run)
    out = tmp_path / "run.mptk"
    assert T.main(["ticket", "export", f"--workdir={tmp_path}", f"--out={out}"]) == 0
    assert "bits/weight" in capsys.readouterr().out
    ticket = T.load_ticket(out)
    assert ticket.mode == "seed" and ticket.info["metrics"]["accuracy"] == 91.0
    images = jax.random.normal(jax.random.key(4), (6, *shape))
    assert T.compare_with_run(ticket, str(tmp_path), "latest", images) <= 1e-5
    labels = jnp.argmax(training_logits(name, opts, variables, images), -1)
    result = T.evaluate_batches(ticket, [dict(image=images, label=labels,
                                              mask=jnp.array([1, 1, 1, 1, 1, 0.]))])
    assert result == dict(accuracy=100.0, examples=5)


def test_evaluate_compares_with_the_checkpoint_the_ticket_came_from(mlp_run, tmp_path,
                                                                    monkeypatch, capsys):
    """A ticket of the best checkpoint is compared with the best checkpoint (not the latest,
    whose network differs), and the printed line says what the number means."""
    import ml_collections

    from mpt_jax import checkpoint

    name, opts, shape, key, variables = mlp_run
    config = ml_collections.ConfigDict(dict(
        model=name, model_options=dict(hidden=(48, 32)), mode="biprop", keep_fraction=KEEP,
        weight_init="kaiming_normal", fan_mode="fan_in", scale_fan="none", pruning="layerwise",
        bn_affine=False, dataset="digits", seed=3, batch_size=64, eval_batch_size=64))
    best = dict(params=variables["params"], frozen=variables["frozen"],
                batch_stats=variables["batch_stats"], pruning={}, config=config,
                metrics=dict(accuracy=91.0, keep_fraction=KEEP))
    # The latest checkpoint: later scores, so other kept weights and other logits.
    later = jax.tree.map(lambda s: jax.random.normal(jax.random.key(9), s.shape, s.dtype),
                         variables["params"])
    runs = dict(best=best, latest=dict(best, params=later, metrics=dict(accuracy=80.0)))
    monkeypatch.setattr(checkpoint, "load_for_inference",
                        lambda workdir, which="latest": runs[which])
    out = tmp_path / "best.mptk"
    assert T.main(["ticket", "export", f"--workdir={tmp_path}", f"--out={out}",
                   "--which=best"]) == 0
    capsys.readouterr()
    assert T.main(["ticket", "evaluate", f"--ticket={out}", f"--workdir={tmp_path}"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("largest |logit difference| between this ticket and the run's best "
                           "checkpoint (the one this ticket was exported from), on 64 eval "
                           "images: "), line
    assert float(line.split("images: ")[1].split(" ")[0]) <= 1e-5
    assert "(0: the ticket computes exactly the trained network" in line
    # Asked for the latest explicitly: compared with it, and told why it differs.
    assert T.main(["ticket", "evaluate", f"--ticket={out}", f"--workdir={tmp_path}",
                   "--which=latest"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert "run's latest checkpoint (this ticket was exported from the best checkpoint: a " \
           "difference is expected)" in line
    assert float(line.split("images: ")[1].split(" ")[0]) > 1e-2


@pytest.mark.end_to_end
def test_real_run_export_and_evaluate(tmp_path, capsys):
    """train -> export (mode seed: the run's init key must regenerate W) -> evaluate gives
    the run's own final accuracy, through the command line."""
    import importlib.util
    import os

    from mpt_jax import loop

    spec = importlib.util.spec_from_file_location(
        "smoke", os.path.join(os.path.dirname(__file__), "..", "configs", "smoke.py"))
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    config = smoke.get_config()
    config.model = "mlp_binact"
    config.num_epochs = 1
    workdir = str(tmp_path / "run")
    result = loop.train_and_evaluate(config, workdir)
    out = tmp_path / "run.mptk"
    assert T.main(["ticket", "export", f"--workdir={workdir}", f"--out={out}"]) == 0
    capsys.readouterr()
    assert T.main(["ticket", "evaluate", f"--ticket={out}", f"--workdir={workdir}"]) == 0
    printed = capsys.readouterr().out
    assert f"top-1 {result['final_top1']:.2f}%" in printed
    assert "the run's latest checkpoint (the one this ticket was exported from), on " in printed
    assert " eval images: 0 (0: the ticket computes exactly the trained network" in printed
    ticket = T.load_ticket(out)
    n = prunable_weight_count(ticket)
    data = out.read_bytes()
    assert 8 * (len(data) - overhead_bytes(data)) / n <= 1.1
    # The trained MPT-1/1 ticket through the bit-packed path: integer pre-activations of the
    # binary layers identical to the float path's on real eval images.
    from mpt_jax import checkpoint, data as data_lib, parallel
    from mpt_jax.ticket import bitpack

    ds = data_lib.get_dataset(checkpoint.load_for_inference(workdir)["config"],
                              parallel.make_mesh())
    images = next(iter(ds.eval_batches()))["image"]
    counts = bitpack.binary_layer_counts(ticket, images)
    assert list(counts) == ["classifier"]  # dense0 sees the image
    for packed, floated in counts.values():
        np.testing.assert_array_equal(np.asarray(packed), np.asarray(floated).astype(np.int64))
