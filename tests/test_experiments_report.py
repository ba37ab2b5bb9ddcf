"""experiments/report.py: the tables' statistics and error ratios against float64 numpy, the
figures drawn from exactly the CSV's points, tickets/README.md from the manifests, and the
committed README / tickets/README.md in step with the committed results file."""
import importlib.util
import os
import shutil
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name):
    spec = importlib.util.spec_from_file_location(
        f"experiments_{name}", os.path.join(ROOT, "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


report = load("report")


def row(run, final, best=None, group="table", config=None, overrides="", seed=0):
    stem = run.split(",")[0]
    return dict(run=f"{run},seed={seed}", group=group, config=config or f"configs/{stem}.py",
                overrides=overrides, seed=str(seed), final_top1=str(final),
                best_top1=str(best if best is not None else final),
                hardware="1x NVIDIA H200", precision="bfloat16")


def cells(table, name):
    line = next(l for l in table.splitlines() if l.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_headline_table_statistics_and_error_ratio():
    tickets = [89.46, 89.50, 90.12]
    dense = [91.46, 91.36]
    rows = [row("cifar10_resnet18", a, seed=s) for s, a in enumerate(tickets)]
    rows += [row("cifar10_resnet18,mode=dense", a, seed=s, overrides="mode=dense")
             for s, a in enumerate(dense)]
    table = report.headline_table(rows)
    c = cells(table, "ResNet-18 MPT-1/32, 80 % pruned")
    t = np.asarray(tickets, np.float64)
    d = np.asarray(dense, np.float64)
    assert c[1] == "0,1,2"
    assert c[2] == f"{t.mean():.2f} ± {t.std(ddof=1):.2f}"
    assert c[4] == f"{d.mean():.2f} ± {d.std(ddof=1):.2f}"
    assert c[5] == f"{(100 - t.mean()) / (100 - d.mean()):.2f}"
    assert c[6:9] == ["94.66", "93.02", f"{(100 - 94.66) / (100 - 93.02):.2f}"]
    # A key without rows is left out; a key without its dense twin shows a dash.
    assert "VGG-Small" not in table
    table = report.headline_table([row("cifar10_vgg_small", 88.0)])
    assert cells(table, "VGG-Small MPT-1/32, 95 % pruned")[2:6] == ["88.00", "88.00", "—", "—"]


def test_sweep_points_and_figure(tmp_path):
    rows = [row("cifar10_conv4,keep_fraction=0.2", 82.0, group="conv", overrides="keep_fraction=0.2",
                seed=s) for s in (0, 1)]
    rows[1]["final_top1"] = "84.0"
    rows.append(row("cifar10_conv4_binact,keep_fraction=0.5", 70.0, group="conv",
                    overrides="keep_fraction=0.5"))
    rows.append(row("cifar10_conv4,mode=dense", 80.0, group="conv", overrides="mode=dense"))
    rows.append(row("cifar10_conv2,mode=edgepopup,keep_fraction=0.5", 65.0, group="conv",
                    config="configs/cifar10_conv2.py", overrides="mode=edgepopup keep_fraction=0.5"))
    points = report.sweep_points(rows, "conv")
    assert points["Conv-4"]["MPT-1/32"] == [(80.0, 83.0, pytest.approx(np.std([82, 84], ddof=1)), 2)]
    assert points["Conv-4"]["MPT-1/1"] == [(50.0, 70.0, 0.0, 1)]
    assert points["Conv-4"]["dense"] == [(None, 80.0, 0.0, 1)]
    assert points["Conv-2"]["edge-popup"] == [(50.0, 65.0, 0.0, 1)]
    table = report.sweep_table(rows, "conv")
    assert "| Conv-4 | MPT-1/32 | 80.0 | 83.00 ± 1.41 | 2 |" in table
    assert report.sweep_table(rows, "width") == "_No finished runs yet._"
    pytest.importorskip("matplotlib", reason="figures need matplotlib (the test extra has it)")
    out = tmp_path / "conv.png"
    assert report.plot_group(rows, "conv", str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not report.plot_group(rows, "depth", str(tmp_path / "depth.png"))
    assert not (tmp_path / "depth.png").exists()


def test_tickets_readme_reads_the_manifests(tmp_path):
    shutil.copyfile(os.path.join(ROOT, "tests", "fixtures", "digits_mlp_signs_v1.ticket"),
                    tmp_path / "digits+bn.ticket")
    text = report.tickets_readme(str(tmp_path))
    line = next(l for l in text.splitlines() if l.startswith("| `digits+bn.ticket`"))
    size = os.path.getsize(tmp_path / "digits+bn.ticket")
    assert f"| mlp | 0.5 | {size / 1e6:.2f} MB |" in line
    assert "--config=configs/digits.py --config.learn_batchnorm=True" in line


def test_replace_block_needs_its_markers():
    text = "a\n<!-- results:x -->\nold\n<!-- /results:x -->\nb"
    assert report.replace_block(text, "x", "new") == "a\n<!-- results:x -->\nnew\n<!-- /results:x -->\nb"
    with pytest.raises(SystemExit, match="no <!-- results:y -->"):
        report.replace_block(text, "y", "new")


def test_committed_tables_match_the_committed_results(capsys):
    """README.md and tickets/README.md are generated: a hand edit or a new row without
    `python experiments/report.py` fails here."""
    assert report.main(["--check"]) == 0, capsys.readouterr().out
