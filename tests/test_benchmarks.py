"""benchmarks/: the scripts run on tiny inputs and keep their raw rows; every table of
RESULTS.md has its rows in benchmarks/results/; the README's ticket-size table is what
benchmarks/ticket_sizes.py prints. (Benchmarks are not timed here: only that they work.)"""
import json
import os
import re
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCH)

import results_log  # noqa: E402  (benchmarks/results_log.py)

STAMP = ("date", "run", "host_cpu", "python", "command")


def markdown_tables(path=None, text=None):
    """[(header cells, row cells list, the first non-empty line after the table)] of the
    file ``path`` or of ``text``."""
    if text is None:
        with open(path) as f:
            text = f.read()
    lines = text.splitlines()

    def cells(line):
        return [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]

    tables, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            after = next((t for t in lines[j:] if t.strip()), "")
            tables.append((cells(lines[i]), [cells(t) for t in lines[i + 2:j]], after))
            i = j
        else:
            i += 1
    return tables


def test_every_results_table_has_its_raw_rows():
    """Each table of RESULTS.md is followed by the line naming its rows in
    benchmarks/results/: the same cells for a table transcribed from an old printout, or the
    rows of one run that the script's own formatting turns into exactly the table."""
    import input_pipeline  # noqa: PLC0415  (imports mpt_jax's ImageNet module, not TensorFlow)

    tables = markdown_tables(os.path.join(BENCH, "RESULTS.md"))
    assert len(tables) >= 14
    pattern = re.compile(r"^Raw rows: \[results/([\w.]+\.jsonl)\]\(results/\1\), "
                         r"(table|run) `([^`]+)`")
    for header, rows, after in tables:
        match = pattern.match(after)
        assert match, (header, after)
        name, kind, key = match.groups()
        stored = [r for r in results_log.read(os.path.join(BENCH, "results", name))
                  if r.get(kind) == key]
        assert len(stored) == len(rows), (name, key)
        if kind == "table":
            for row, raw in zip(rows, stored):
                assert raw["columns"] == header and raw["cells"] == row, (name, key, row)
                assert raw["source"].startswith("transcribed from the printed table")
                assert raw["hardware"] and raw["date"] and raw["jax"]
        else:
            assert name == "input_pipeline.jsonl"
            assert [input_pipeline.table_cells(r) for r in stored] == rows
            assert all(r[k] for r in stored for k in STAMP + ("tensorflow",))


@pytest.mark.end_to_end  # the script, whole
def test_ticket_sizes_rebuilds_the_readme_table(capsys):
    import ticket_sizes  # noqa: PLC0415

    readme = next(t for t in markdown_tables(os.path.join(ROOT, "README.md"))
                  if t[0][:4] == ["model", "keep", "mode", "file"])
    header, expected, _ = readme
    assert len(expected) == 4
    assert ticket_sizes.main([]) == 0
    [printed] = markdown_tables(text=capsys.readouterr().out)
    assert printed[0] == header
    for got, want in zip(printed[1], expected, strict=True):
        assert got[:3] == want[:3] and got[5] == want[5], (got, want)  # layers only: exact
        # The manifest names the library versions: a file may move by a few bytes.
        assert size_bytes(got[3]) == pytest.approx(size_bytes(want[3]), rel=2e-3), (got, want)
        assert float(got[4]) == pytest.approx(float(want[4]), abs=1.5e-3), (got, want)
        assert float(got[6].rstrip("x")) == pytest.approx(float(want[6].rstrip("x")), abs=0.15)


def size_bytes(cell: str) -> float:
    number, unit = cell.split()
    return float(number.replace(",", "")) * (1e6 if unit == "MB" else 1)


FAKE_PEER = textwrap.dedent("""
    import json, sys
    args = sys.argv[1:]
    with open({log!r}, "a") as f:
        f.write(json.dumps(args) + "\\n")
    compiled = "--compile" in args
    print("some torch log line")
    print(json.dumps(dict(impl="torch_peer", model=args[args.index("--model") + 1],
                          compile=compiled, images_per_s=150.0 if compiled else 100.0)))
""")


@pytest.mark.end_to_end  # the script, whole
def test_train_step_times_both_peer_kinds_and_keeps_its_rows(tmp_path, capsys):
    """``--torch-peer``: the peer eager and with --compile; ours is divided by the faster;
    every row goes to the results file with when, where and what."""
    import train_step  # noqa: PLC0415

    peer, log, results = tmp_path / "peer.py", tmp_path / "peer_calls.jsonl", tmp_path / "r.jsonl"
    peer.write_text(FAKE_PEER.format(log=str(log)))
    assert train_step.main(["--model", "conv4", "--batch", "8", "--modes", "biprop",
                            "--precision", "float32", "--warmup", "1", "--steps", "1",
                            "--repeats", "1", "--torch-peer", f"--peer-path={peer}",
                            "--peer-device", "cpu", "--peer-repeats", "2",
                            f"--results={results}"]) == 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert ["--compile" in c for c in calls] == [False, True]
    assert all(c[c.index("--repeats") + 1] == "2" and c[c.index("--batch") + 1] == "8"
               for c in calls)
    [row] = results_log.read(str(results))
    assert (row["peer_eager_images_per_s"], row["peer_compile_images_per_s"]) == (100.0, 150.0)
    assert row["peer_best"] == "compile" and row["peer_images_per_s"] == 150.0
    assert all(row[k] for k in STAMP + ("jax", "accelerator"))
    table = capsys.readouterr().out.split("| model |", 1)[1]
    ours = row["images_per_s"]
    assert "ours/faster peer" in table and f"| {round(ours / 150.0, 2):g} |" in table


@pytest.mark.end_to_end  # the script, whole
def test_select_bench_keeps_its_rows(tmp_path):
    import select_bench  # noqa: PLC0415

    results = tmp_path / "select.jsonl"
    assert select_bench.main(["--model", "conv2", "--repeats", "1", "--only",
                              "thr:sort,thr:radix", f"--results={results}"]) == 0
    rows = results_log.read(str(results))
    assert [r["variant"] for r in rows] == ["thr:sort", "thr:radix"]
    assert rows[1]["same_as_sort"] is True
    assert all(r[k] for r in rows for k in STAMP + ("jax", "accelerator"))
    assert len({r["run"] for r in rows}) == 1


@pytest.mark.end_to_end  # the script, whole
def test_input_pipeline_runs_on_a_few_images(tmp_path, capsys):
    pytest.importorskip("tensorflow", reason="the ImageNet input path needs TensorFlow: "
                        "pip install -e '.[tf]'")
    import input_pipeline  # noqa: PLC0415

    results = tmp_path / "ip.jsonl"
    assert input_pipeline.main(["--images", "6", "--batch", "4", "--batches", "2",
                                "--threads", "1", f"--results={results}"]) == 0
    [row] = results_log.read(str(results))
    assert row["threads"] == 1 and row["images"] == 8 and row["images_per_core_s"] > 0
    for card, rate in input_pipeline.STEP_RATES.items():
        assert row["cores_for_step"][card] == pytest.approx(rate / row["images_per_core_s"],
                                                            abs=0.06)
    out = capsys.readouterr().out
    assert input_pipeline.HEADER in out
    assert "| " + " | ".join(input_pipeline.table_cells(row)) + " |" in out


def test_speed_summary_reads_what_a_cut_short_call_left(tmp_path):
    """benchmarks/speed_summary.py on the files of a GPU call cut off by its time limit: a
    half-written last row is dropped, the measured rows give biprop / dense and ours / the
    faster peer (checked against the numbers written here), the rest says not measured."""
    import speed_summary  # noqa: PLC0415

    common = dict(batch=256, precision="bfloat16")
    rows = [dict(model="conv4", mode="dense", images_per_s=200000.0, ms_per_step=1.28,
                 **common),
            dict(model="conv4", mode="biprop", select="batched:radix_many",
                 images_per_s=150000.0, ms_per_step=1.7, **common)]
    peers = [dict(model="conv4", images_per_s=40000.0, compile=False),
             dict(model="conv4", images_per_s=60000.0, compile=True)]
    (tmp_path / "rows.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"model": "resnet18_ci')
    (tmp_path / "peers.jsonl").write_text("".join(json.dumps(p) + "\n" for p in peers))
    (tmp_path / "meta.jsonl").write_text(
        json.dumps(dict(key="not measured: wrn50", value="budget: 3s left")) + "\n")
    text = speed_summary.summarize(str(tmp_path))
    [conv4] = [r for header, body, _ in markdown_tables(text=text) for r in body
               if r[0] == "conv4"]
    assert conv4[1] == "200,000" and conv4[2] == f"150,000 ({150000 / 200000:.3f})"
    assert conv4[3] == conv4[4] == "not measured"
    assert conv4[-3:] == ["40,000", "60,000", f"{150000 / 60000:.2f}x"]
    assert "not measured: wrn50: budget: 3s left" in text
    [r18] = [r for _, body, _ in markdown_tables(text=text) for r in body
             if r[0] == "resnet18_cifar"]
    assert r18[1] == "not measured"


def test_gpu_scripts_keep_their_stamped_rows_in_the_returned_folder():
    """The GPU scripts run in a copy of the checkout of which only $OUT comes back: every
    benchmark they start that appends stamped rows (benchmarks/results/ by default) is told
    to write them into $OUT instead, so that nothing is lost there, and a CPU dry run here
    leaves the checkout as it was."""
    stamping = [name for name in os.listdir(BENCH) if name.endswith(".py")
                and "results_log.default_path(" in open(os.path.join(BENCH, name)).read()]
    assert {"train_step.py", "select_bench.py", "input_pipeline.py"} <= set(stamping)
    scripts = [os.path.join(d, n) for d in (BENCH, os.path.join(ROOT, "experiments"))
               for n in sorted(os.listdir(d)) if n.endswith(".sh")]
    started = 0
    for script in scripts:
        with open(script) as f:
            commands = f.read().replace("\\\n", " ").splitlines()  # one line per command
        for command in commands:
            for name in stamping:
                if re.search(rf"benchmarks/{re.escape(name)}\b", command.split("#")[0]):
                    started += 1
                    assert re.search(r"--results[ =]\S*\$OUT/", command), (script, command)
    assert started >= 3  # run_gpu.sh (train_step, select_bench) and run_gpu_speed.sh
