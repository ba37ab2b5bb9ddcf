"""mpt_jax.stages: what a run says while it starts (data, compilation) and where its wall
time goes (the breakdown printed before the final line and stored in result.json)."""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mpt_jax import config_utils, loop, stages
from mpt_jax.compilation import CompiledAhead
from mpt_jax.data import image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_clock_splits_the_wall_time_into_its_buckets():
    t = FakeTime()
    clock = stages.Clock(now=t)
    t.now += 2.0  # outside every section, before training: start-up
    with clock.section("data"):
        t.now += 5.0
    t.now += 1.0
    clock.begin_training()
    t.now += 3.0  # outside every section, now training
    with clock.section("evaluation"):
        t.now += 4.0
        with clock.section("compile"):  # nested: its time leaves the evaluation's
            t.now += 6.0
        t.now += 0.5
    saving = clock.timed(lambda x: t.__setattr__("now", t.now + x), "checkpoint")
    saving(7.0)
    assert clock.elapsed() == pytest.approx(28.5)
    assert clock.breakdown() == dict(startup=3.0, data=5.0, compile=6.0, training=3.0,
                                     evaluation=4.5, checkpoint=7.0, total=28.5)
    with pytest.raises(ValueError, match="unknown bucket 'decode'"):
        with clock.section("decode"):
            pass


def test_breakdown_line_names_every_part():
    line = stages.breakdown_line(dict(startup=3.04, data=13.0, compile=35.2, training=8.0,
                                      evaluation=2.4, checkpoint=0.6, total=62.24))
    assert line == ("wall time 62.2 s: start-up 3.0 s, data 13.0 s, compile 35.2 s, training "
                    "8.0 s, evaluation 2.4 s, checkpoint writes 0.6 s")


def test_first_call_of_a_jitted_step_is_announced_and_counted_as_compile(capsys):
    t = FakeTime()
    clock = stages.Clock(now=t)
    jitted = jax.jit(lambda x: jnp.sin(x) * 2)

    def slow_step(x):  # the first call takes 2 s of the clock's time
        t.now += 2.0
        return jitted(x)

    step = stages.FirstCallTimed(slow_step, "train step", clock, starts_training=True)
    assert capsys.readouterr().out == ""  # a plain jit compiles at its first call
    t.now += 1.0
    np.testing.assert_allclose(step(jnp.ones(3)), 2 * np.sin(np.ones(3)), rtol=1e-6)
    out = capsys.readouterr().out
    assert out.startswith("compiling the train step ... done in ") and out.endswith(" s\n")
    t.now += 5.0  # after the first step, time outside every section is training
    step(jnp.ones(3))
    assert capsys.readouterr().out == ""  # later calls say nothing
    breakdown = clock.breakdown()
    assert (breakdown["startup"], breakdown["compile"]) == (1.0, 2.0)
    assert breakdown["training"] == 7.0  # 5 s between the calls, 2 s in the second


def test_a_step_compiled_ahead_says_so(capsys):
    clock = stages.Clock()
    jitted = jax.jit(lambda x: x + 1)
    ahead = CompiledAhead(jitted, jax.ShapeDtypeStruct((3,), jnp.float32))
    step = stages.FirstCallTimed(ahead, "eval step", clock)
    assert capsys.readouterr().out == "compiling the eval step in the background\n"
    deadline = time.time() + 60
    while not ahead.ready and time.time() < deadline:
        time.sleep(0.05)
    np.testing.assert_array_equal(step(jnp.zeros(3, jnp.float32)), np.ones(3))
    out = capsys.readouterr().out
    assert out.startswith("the eval step is compiled (") and out.endswith(
        " s, in the background)\n")
    assert step.uses_compiled and ahead.compile_seconds > 0


def _image_folder(root, n_per_class=3):
    for split in ("train", "test"):
        for c, color in (("a", 40), ("b", 200)):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n_per_class):
                Image.new("RGB", (6, 6), (color, i * 10, 0)).save(d / f"{i}.png")


def test_image_folder_says_when_it_decodes_and_when_it_reads_the_cache(tmp_path, capsys):
    _image_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    first = image_folder.read_image_folder(str(tmp_path / "imgs"), str(cache))
    out = capsys.readouterr().out.splitlines()
    [npz] = os.listdir(cache)
    assert out[0].startswith(f"reading {tmp_path / 'imgs'} ... done in ")
    assert out[1].startswith(f"decoding 12 images (once: kept in the cache {cache / npz}) "
                             "... done in ")
    again = image_folder.read_image_folder(str(tmp_path / "imgs"), str(cache))
    out = capsys.readouterr().out
    assert out.startswith(f"12 images of {tmp_path / 'imgs'} read from the cache {cache / npz} (")
    np.testing.assert_array_equal(again["train_images"], first["train_images"])
    image_folder.read_image_folder(str(tmp_path / "imgs"), None)
    assert "decoding 12 images (no cache: cache_dir is empty) ... done" in \
        capsys.readouterr().out


@pytest.mark.end_to_end
def test_a_run_prints_its_stages_and_where_the_time_went(tmp_path, capsys):
    config = config_utils.base_config()  # the embedded default: digits, in memory
    config.num_epochs = 2
    config.progress_bar = False
    config.cache_dir = ""
    result = loop.train_and_evaluate(config, str(tmp_path / "run"))
    lines = capsys.readouterr().out.splitlines()
    for announced in ("compiling the train step in the background",
                      "compiling the eval step in the background"):
        assert announced in lines
    assert any(line.startswith("the train step is compiled (") or
               line.startswith("waiting for the train step to compile ... done in ")
               for line in lines)
    # The breakdown is the line before the final one, which is unchanged.
    assert lines[-1].startswith("final accuracy: top-1 ")
    assert lines[-2].startswith("wall time ") and "checkpoint writes" in lines[-2]
    with open(tmp_path / "run" / "result.json") as f:
        stored = json.load(f)
    breakdown = stored["time_breakdown"]
    assert result["time_breakdown"] == breakdown
    parts = ("startup", "data", "compile", "training", "evaluation", "checkpoint")
    assert set(breakdown) == set(parts) | {"total"}
    assert all(breakdown[p] >= 0 for p in parts)
    for p in ("startup", "data", "training", "evaluation", "checkpoint"):
        assert breakdown[p] > 0, p
    assert sum(breakdown[p] for p in parts) == pytest.approx(breakdown["total"], abs=0.05)
    # The run's own wall clock (result["wall_seconds"]) stops before the last checkpoint.
    assert breakdown["total"] >= stored["wall_seconds"] - 0.05
    assert stages.breakdown_line(breakdown) == lines[-2]
    # A rerun of the finished run keeps the breakdown only the run itself could measure.
    again = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert again["time_breakdown"] == breakdown
    with open(tmp_path / "run" / "result.json") as f:
        assert json.load(f)["time_breakdown"] == breakdown
