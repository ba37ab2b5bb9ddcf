"""mpt_jax.members: a member program trains runs that differ in keep_fraction and seed as one
vmapped program, and each member equals its single run (same init seed, the program's data
seed, its keep fraction): scores, masks, BatchNorm statistics, metrics, results. Also: the
member workdirs are complete single-run workdirs, a SIGTERM mid-epoch resumes to the
uninterrupted program, a non-finite step in one member stops the program naming it, and bad
member configs are one-line errors."""
import json
import math
import os
import signal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax import checkpoint, config_utils, loop, main, members, parallel
from mpt_jax import ticket as T
from mpt_jax.errors import CheckpointError, Interrupted, TrainingError

from test_train import TinyDataset, tiny_config  # 4x4x1 blobs, 6 steps per epoch


pytestmark = pytest.mark.usefixtures("compilation_cache")  # conftest.py


def member_dir(workdir, keep, seed):
    """Where the member (keep, seed) of a program in ``workdir`` writes (built here
    independently of mpt_jax.members: the name is the overrides that recreate it)."""
    return os.path.join(workdir, "members", f"keep_fraction={keep!r},seed={seed}")


def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def reference_mask(scores: np.ndarray, keep: float) -> np.ndarray:
    """Float64 NumPy kept set: the first n - floor((1 - k) n) entries of a stable descending
    sort of |scores|."""
    flat = np.abs(scores.astype(np.float64)).ravel()
    kept = flat.size - math.floor((1.0 - keep) * flat.size)
    mask = np.zeros(flat.size, bool)
    mask[np.argsort(-flat, kind="stable")[:kept]] = True
    return mask.reshape(scores.shape)


def score_leaves(params):
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat
            if getattr(p[-1], "key", None) == "scores"}


def timings(result):
    """A result's wall-time fields (they differ between any two runs)."""
    return {k: result[k] for k in ("wall_seconds", "wall_seconds_parts", "time_breakdown")}


def assert_member_equals_single(member, single, keep):
    """Checkpointed state, masks, config, metrics and result of a member and its single run."""
    a, b = checkpoint.load_for_inference(member), checkpoint.load_for_inference(single)
    assert a["config"].to_dict() == b["config"].to_dict()  # the member IS that single run
    chex.assert_trees_all_equal(a["frozen"], b["frozen"])  # the same init, bit for bit
    chex.assert_trees_all_close(a["params"], b["params"], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(a["batch_stats"], b["batch_stats"], rtol=1e-5, atol=1e-5)
    sa, sb = score_leaves(a["params"]), score_leaves(b["params"])
    assert sa and sa.keys() == sb.keys()
    for name in sa:
        mask = reference_mask(sa[name], keep)
        np.testing.assert_array_equal(mask, reference_mask(sb[name], keep), err_msg=name)
        assert mask.sum() == mask.size - math.floor((1.0 - keep) * mask.size)
    ra, rb = records(member), records(single)
    assert [(r["step"], r["split"]) for r in ra] == [(r["step"], r["split"]) for r in rb]
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for key in x.keys() - {"time", "images_per_s"}:
            want = pytest.approx(y[key], rel=1e-4, abs=1e-4) if isinstance(y[key], float) else y[key]
            assert x[key] == want, (key, x, y)
    with open(os.path.join(member, "result.json")) as f:
        result_a = json.load(f)
    with open(os.path.join(single, "result.json")) as f:
        result_b = json.load(f)
    assert result_a.keys() == result_b.keys()
    for key in result_a.keys() - {"wall_seconds", "wall_seconds_parts", "time_breakdown"}:
        want = result_b[key]
        assert result_a[key] == (pytest.approx(want, rel=1e-4, abs=1e-4)
                                 if isinstance(want, float) else want), key


# ---------------------------------------------------------------------------
# Every member equals its single run

CASES = {
    # BN-free Conv-2 (MPT-1/32), an init that reads k (scale_fan="reference"), per-layer masks.
    "conv2_bn_free": dict(model="conv2", model_options=dict(width_mult=1 / 16),
                          scale_fan="reference", mask_impl="per_layer"),
    # Conv-2 BinAct (MPT-1/1, BatchNorm), all layers' masks at once (compare select).
    "conv2_binact_batched": dict(model="conv2_binact", model_options=dict(width_mult=1 / 16),
                                 mask_impl="batched", mask_method="compare"),
}


@pytest.mark.end_to_end
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_member_equals_its_single_run(tmp_path, case):
    keeps, seeds, data_seed = (0.6, 0.3), (1, 2), 5
    options = dict(CASES[case])
    model_options = options.pop("model_options")
    mesh = parallel.make_mesh()

    def config(**kw):
        c = tiny_config(**options, **kw)
        c.model_options = model_options
        return c

    program = config(data_seed=data_seed)
    program.members.keep_fraction, program.members.seed = keeps, seeds
    workdir = str(tmp_path / "program")
    got = loop.train_and_evaluate(program, workdir, dataset=TinyDataset(mesh, seed=data_seed))
    assert sorted(got) == sorted(f"keep_fraction={k!r},seed={s}" for k, s in zip(keeps, seeds))
    for keep, seed in zip(keeps, seeds):
        single = str(tmp_path / f"single_{keep}_{seed}")
        alone = config(keep_fraction=keep, seed=seed, data_seed=data_seed)
        result = loop.train_and_evaluate(alone, single, dataset=TinyDataset(mesh, seed=data_seed))
        assert_member_equals_single(member_dir(workdir, keep, seed), single, keep)
        assert got[f"keep_fraction={keep!r},seed={seed}"]["final_top1"] == pytest.approx(
            result["final_top1"], abs=1e-4)
    with open(os.path.join(workdir, "members.json")) as f:
        record = json.load(f)
    assert record["data_seed"] == data_seed
    assert [(m["keep_fraction"], m["seed"]) for m in record["members"]] == list(zip(keeps, seeds))


@pytest.mark.end_to_end
def test_digits_members_equal_single_runs_and_their_workdirs_are_single_runs(tmp_path, capsys):
    """The embedded digits through the real data pipeline (so the data order comes from
    data_seed, not seed), the MLP with BatchNorm, batched radix masks; member keep 0.6
    keeps 96 of the classifier's 160 weights (a float32 k on the device would keep 97). A
    member's workdir is a finished single run: the single-run command finds it complete,
    and its exported ticket (W regenerated from the member's seed) scores its accuracy."""
    keeps, seed, data_seed = (0.6, 0.25), 3, 7
    base = dict(dataset="digits", batch_size=64, eval_batch_size=64, mask_impl="batched",
                mask_method="radix_many", log_every_steps=10, data_seed=data_seed)
    program = tiny_config(**base)
    program.members.keep_fraction, program.members.seed = keeps, (seed,)
    workdir = str(tmp_path / "program")
    got = loop.train_and_evaluate(program, workdir)
    for keep in keeps:
        single = str(tmp_path / f"single_{keep}")
        loop.train_and_evaluate(tiny_config(keep_fraction=keep, seed=seed, **base), single)
        assert_member_equals_single(member_dir(workdir, keep, seed), single, keep)
    classifier = score_leaves(checkpoint.load_for_inference(
        member_dir(workdir, 0.6, seed))["params"])["['classifier']['scores']"]
    assert classifier.size == 160 and reference_mask(classifier, 0.6).sum() == 96
    # The member's directory as a single run: complete, with the member's stored result.
    member = member_dir(workdir, 0.25, seed)
    capsys.readouterr()
    again = loop.train_and_evaluate(tiny_config(keep_fraction=0.25, seed=seed, **base), member)
    assert again == got[f"keep_fraction=0.25,seed={seed}"]
    assert "is complete" in capsys.readouterr().out
    out = tmp_path / "member.ticket"
    assert T.main(["ticket", "export", f"--workdir={member}", f"--out={out}"]) == 0
    capsys.readouterr()
    assert T.main(["ticket", "evaluate", f"--ticket={out}", f"--workdir={member}"]) == 0
    assert f"top-1 {again['final_top1']:.2f}%" in capsys.readouterr().out
    # A rerun of the finished program returns every member's stored result.
    assert loop.train_and_evaluate(program, workdir) == got


def test_data_seed_defaults_to_seed():
    from mpt_jax import data
    c = config_utils.base_config()
    c.seed = 4
    assert data.data_seed(c) == 4
    c.data_seed = 9
    assert data.data_seed(c) == 9 and c.seed == 4
    assert data.get_dataset(c, parallel.make_mesh()).seed == 9
    c.data_seed = None
    assert data.get_dataset(c, parallel.make_mesh()).seed == 4


# ---------------------------------------------------------------------------
# Stops: a signal, a kill between members' saves, a non-finite member


@pytest.mark.end_to_end  # a whole run in this process
def test_sigterm_mid_epoch_resumes_to_the_uninterrupted_program(tmp_path):
    mesh = parallel.make_mesh()
    program = tiny_config(checkpoint_every_steps=2)
    program.members.keep_fraction, program.members.seed = (0.5, 0.2), (0, 1)
    straight = str(tmp_path / "straight")
    expected = loop.train_and_evaluate(program, straight, dataset=TinyDataset(mesh))

    def on_step(step, stop):
        if step == 9:  # epoch 2, step 3 of 6
            os.kill(os.getpid(), signal.SIGTERM)

    workdir = str(tmp_path / "run")
    with pytest.raises(Interrupted) as e:
        loop.train_and_evaluate(program, workdir, dataset=TinyDataset(mesh),
                                hooks=loop.Hooks(on_step=on_step))
    assert e.value.exit_code == 143
    assert str(e.value).startswith("stopped by SIGTERM at epoch 2, step 3 of 6 (global step 9); "
                                   "checkpoint saved: every member's, e.g. ")
    for keep, seed in ((0.5, 0), (0.2, 1)):
        assert checkpoint.load_for_inference(member_dir(workdir, keep, seed))["metrics"]["step"] == 9
    # As if killed between two members' saves of step 10: one member holds a newer save.
    resumed = loop.train_and_evaluate(program, workdir, dataset=TinyDataset(mesh))
    assert resumed.keys() == expected.keys()
    for name in expected:
        assert resumed[name] == dict(expected[name], **timings(resumed[name]))
    for keep, seed in ((0.5, 0), (0.2, 1)):
        a = checkpoint.load_for_inference(member_dir(straight, keep, seed))
        b = checkpoint.load_for_inference(member_dir(workdir, keep, seed))
        chex.assert_trees_all_equal(a["params"], b["params"])
        chex.assert_trees_all_equal(a["batch_stats"], b["batch_stats"])
        # The evaluations as the uninterrupted program logged them (train-log intervals
        # around a stop follow the single-run rule, tests/test_loop.py).
        evals = [[{k: v for k, v in r.items() if k != "time"} for r in records(d)
                  if r["split"] == "eval"] for d in (member_dir(workdir, keep, seed),
                                                     member_dir(straight, keep, seed))]
        assert evals[0] == evals[1] and [r["epoch"] for r in evals[0]] == [1, 2]


@pytest.mark.end_to_end  # a whole run in this process
def test_a_save_not_every_member_finished_resumes_from_the_one_before(tmp_path):
    """The program was killed after member 0 saved step 4 but before member 1 did: both
    resume from step 2 (the newest step every member saved) and end as if never stopped."""
    mesh = parallel.make_mesh()
    program = tiny_config(checkpoint_every_steps=2)
    program.members.keep_fraction, program.members.seed = (0.5,), (0, 1)
    straight = str(tmp_path / "straight")
    expected = loop.train_and_evaluate(program, straight, dataset=TinyDataset(mesh))

    def on_step(step, stop):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    workdir = str(tmp_path / "run")
    with pytest.raises(Interrupted):
        loop.train_and_evaluate(program, workdir, dataset=TinyDataset(mesh),
                                hooks=loop.Hooks(on_step=on_step))
    import shutil
    late = member_dir(workdir, 0.5, 1)
    shutil.rmtree(os.path.join(late, "checkpoints", "latest", "4"))  # member 1 never finished it
    assert [r["step"] for r in records(member_dir(workdir, 0.5, 0))] == [2, 4]
    resumed = loop.train_and_evaluate(program, workdir, dataset=TinyDataset(mesh))
    for name in expected:
        assert resumed[name] == dict(expected[name], **timings(resumed[name]))
        assert [r["step"] for r in records(os.path.join(workdir, "members", name))] == [
            r["step"] for r in records(os.path.join(straight, "members", name))]


@pytest.mark.end_to_end  # a whole run in this process
def test_a_nonfinite_member_stops_the_program_naming_it(tmp_path, monkeypatch):
    """Member 1's weights turn NaN before global step 5: the program stops at the next log
    point with exit code 3, names the member, and every member keeps its step-4 checkpoint."""
    built = members.parallel_steps

    def poisoned(*args, **kwargs):
        p_train, p_eval = built(*args, **kwargs)
        calls = []

        def p_train_nan(state, batch):
            calls.append(1)
            if len(calls) == 5:
                state = state.replace(frozen=jax.tree.map(
                    lambda w: w.at[1].set(jnp.nan), state.frozen))
            return p_train(state, batch)
        return p_train_nan, p_eval

    monkeypatch.setattr(members, "parallel_steps", poisoned)
    program = tiny_config(checkpoint_every_steps=2)
    program.members.keep_fraction, program.members.seed = (0.5, 0.3), (0,)
    workdir = str(tmp_path / "run")
    with pytest.raises(TrainingError) as e:
        loop.train_and_evaluate(program, workdir, dataset=TinyDataset(parallel.make_mesh()))
    assert e.value.exit_code == 3
    message = str(e.value)
    assert message.startswith("non-finite loss or gradients at global step 5 (epoch 1) in "
                              "member keep_fraction=0.3,seed=0; training stopped")
    assert "(global step 4, epoch 1, step 4 of that epoch)" in message
    for keep in (0.5, 0.3):
        directory = member_dir(workdir, keep, 0)
        assert checkpoint.load_for_inference(directory)["metrics"]["step"] == 4
        assert [r["step"] for r in records(directory)] == [2, 4]  # nothing logged after


# ---------------------------------------------------------------------------
# Configs and workdirs


@pytest.mark.parametrize("args,message", [
    (["--config.members.keep_fraction=0.8,0.6,0.5", "--config.members.seed=0,1"],
     "members.keep_fraction has 3 values and members.seed 2"),
    (["--config.members.keep_fraction=0.5,1.5"], "members.keep_fraction[1] must be in (0, 1]"),
    (["--config.members.keep_fraction=0.5,0"], "members.keep_fraction[1] must be in (0, 1]"),
    (["--config.members.seed=0,x"], "members.seed must be comma-separated integers (e.g. "
                                     "0,1,2); got '0,x'"),
    (["--config.members.seed=0,1.5"], "members.seed[1] must be an integer; got 1.5"),
    (["--config.members.keep_fraction=0.5,0.5"], "two members are keep_fraction=0.5,seed=0"),
    (["--config.members.seed=0,1", "--config.pruning=global"],
     "a member program needs pruning='layerwise'"),
    (["--config.members.seed=0,1", "--config.stop_if_not_learning=True"],
     "stop_if_not_learning stops one run"),
    (["--config.members.keep_fraction=0.5,1.0", "--config.scale_fan=reference"],
     "scale_fan='reference' scales the fan by (1 - keep_fraction) = 0"),
])
def test_bad_member_configs_are_one_line_errors(tmp_path, capsys, args, message):
    workdir = tmp_path / "run"
    assert main.run(["m", "--config=configs/smoke.py", f"--workdir={workdir}", *args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], err
    assert not workdir.exists()  # refused before anything was written


@pytest.mark.end_to_end  # a whole run in this process
def test_workdirs_of_the_other_kind_are_refused(tmp_path):
    mesh = parallel.make_mesh()
    program = tiny_config(num_epochs=1)
    program.members.seed = (0, 1)
    workdir = str(tmp_path / "program")
    loop.train_and_evaluate(program, workdir, dataset=TinyDataset(mesh))
    with pytest.raises(CheckpointError, match="holds a member program"):
        loop.train_and_evaluate(tiny_config(num_epochs=1), workdir, dataset=TinyDataset(mesh))
    other = tiny_config(num_epochs=1)
    other.members.seed = (0, 2)
    with pytest.raises(CheckpointError, match=r"other members .*seed=1.*restart=True"):
        loop.train_and_evaluate(other, workdir, dataset=TinyDataset(mesh))
    single = str(tmp_path / "single")
    loop.train_and_evaluate(tiny_config(num_epochs=1), single, dataset=TinyDataset(mesh))
    with pytest.raises(CheckpointError, match="holds a single run's checkpoints"):
        loop.train_and_evaluate(program, single, dataset=TinyDataset(mesh))


def test_member_configs_pair_and_broadcast():
    c = config_utils.base_config()
    c.keep_fraction, c.seed, c.data_seed = 0.4, 8, None
    assert config_utils.member_configs(c) == []  # one run
    c.members.seed = (1, 2)
    got = config_utils.member_configs(c)
    assert [n for n, _ in got] == ["keep_fraction=0.4,seed=1", "keep_fraction=0.4,seed=2"]
    assert all(m.data_seed == 8 and m.keep_fraction == 0.4 for _, m in got)  # the program's
    c.members.keep_fraction = (0.1,)
    got = config_utils.member_configs(c)
    assert [(m.keep_fraction, m.seed) for _, m in got] == [(0.1, 1), (0.1, 2)]
    assert all(tuple(m.members.keep_fraction) == tuple(m.members.seed) == () for _, m in got)
