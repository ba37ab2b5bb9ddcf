"""Random values for every field of the config field table, through the real command-line
parser (``mpt_jax.main.run``): each either starts a run or ends in one ``error:`` line with
exit status 2, never a traceback.

The fast test stops an accepted run right before its first training step (a ``loop.Hooks``
fault, and steps that are never compiled), after the data, model, optimizer and state were
built from the fuzzed config; the slow one trains a few steps for real.
"""
import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mpt_jax import config_fields, loop, main, train
from mpt_jax.data import registry as datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "smoke.py")
SPECIAL = ["", "None", "none", "True", "false", "0", "-1", "1e400", "-1e400", "nan", "inf",
           "[1, 2]", "(1,)", "(0,)", "()", "{}", "0x10", "1_000", "2**70", "é", "a b", "../x",
           "18446744073709551617", "-9223372036854775809", "0.0", "1e-300", "\x00"]


def values(field):
    choices = list(field.valid) if isinstance(field.valid, tuple) else []
    if field.name == "dataset":  # no download attempts: only data that is here
        choices = [n for n in choices if datasets.get(n).tfds_name is None]
    return st.one_of(st.sampled_from(SPECIAL + choices),
                     st.integers(-2**70, 2**70).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.text(st.characters(blacklist_categories=("Cs",)), max_size=10))


# Dotted names too: the groups' fields are set one by one on a command line.
NAMES = [f.name for f in config_fields.FIELDS] + ["model_options.hidden",
                                                  "baseline_hparams.dense.learning_rate"]


class BeforeTheFirstStep(BaseException):
    """Ends an accepted run where training would begin."""


def before_step(step, batch):
    raise BeforeTheFirstStep()


@pytest.fixture
def uncompiled_steps(monkeypatch, tmp_path):
    """Steps that are never compiled (the run stops before the first one), in a scratch
    directory: a fuzzed cache_dir or data_dir may name a relative path."""
    monkeypatch.setattr(train, "make_parallel_steps", lambda *a, **k: (None, None))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(name, value, workdir, *extra, hooks=None):
    argv = ["mpt_jax.main", f"--config={SMOKE}", f"--config.{name}={value}",
            f"--workdir={workdir}", "--config.compilation_cache=False", *extra]
    if name == "compilation_cache":
        argv.remove("--config.compilation_cache=False")
    try:
        return main.run(argv, hooks=hooks)
    except BeforeTheFirstStep:
        return 0


def check(rc, err):
    assert "Traceback" not in err, err[-3000:]
    if rc != 0:
        assert rc == 2, err[-2000:]
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]


def fuzz_field(name, scratch, capsys, examples):
    field = config_fields.BY_NAME.get(name.split(".")[0])

    @settings(derandomize=True, database=None, deadline=None, max_examples=examples,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(value=values(field))
    def fuzz(value):
        rc = run(name, value, str(scratch / "runs" / "w"), "--config.restart=True",
                 hooks=loop.Hooks(before_step=before_step))
        check(rc, capsys.readouterr().err)

    fuzz()


@pytest.mark.parametrize("name", NAMES)
def test_fuzzed_field_values_start_a_run_or_fail_in_one_line(name, uncompiled_steps, capsys):
    fuzz_field(name, uncompiled_steps, capsys, examples=3)


@pytest.mark.end_to_end
@pytest.mark.parametrize("name", NAMES)
def test_more_fuzzed_field_values(name, uncompiled_steps, capsys):
    fuzz_field(name, uncompiled_steps, capsys, examples=10)


@pytest.mark.end_to_end
@pytest.mark.parametrize("name", ["model_options.hidden", "learning_rate", "batch_size",
                                  "keep_fraction", "seed", "label_smoothing", "grad_clip",
                                  "warmup_epochs", "log_every_steps", "precision"])
def test_fuzzed_values_train_for_real_or_fail_in_one_line(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    field = config_fields.BY_NAME.get(name.split(".")[0])

    @settings(derandomize=True, database=None, deadline=None, max_examples=4,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(value=values(field))
    def fuzz(value):
        rc = run(name, value, str(tmp_path / "w"), "--config.restart=True",
                 "--config.max_train_steps=3", "--config.num_epochs=1")
        check(rc, capsys.readouterr().err)

    fuzz()
    assert sys.exc_info() == (None, None, None)
