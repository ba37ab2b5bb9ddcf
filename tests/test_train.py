"""Training program: steps, data parallelism, recompilation, checkpoints / resume, logging,
and one end-to-end run of ``python -m mpt_jax.main``."""
import functools
import glob
import json
import math
import os
import re
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax import checkpoint, compilation, config_utils, loop, optim, parallel, train
from mpt_jax import metrics as metrics_lib
from mpt_jax.errors import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("compilation_cache")  # conftest.py


class TinyDataset:
    """Stand-in for mpt_jax.data's contract: separable Gaussian blobs, 4x4x1 images."""

    name = "tiny"
    image_shape = (4, 4, 1)

    def __init__(self, mesh, batch_size=16, eval_batch_size=16, num_train=96, num_eval=40,
                 num_classes=4, seed=0, eval_label=None):
        rng = np.random.default_rng(123)
        centers = rng.normal(size=(num_classes, 16)) * 2.0
        def make(n):
            labels = rng.integers(0, num_classes, size=n).astype(np.int32)
            images = centers[labels] + rng.normal(size=(n, 16))
            return images.reshape(n, 4, 4, 1).astype(np.float32), labels
        self.train_x, self.train_y = make(num_train)
        self.eval_x, self.eval_y = make(num_eval)
        if eval_label is not None:
            self.eval_y[:] = eval_label
        self.mesh, self.batch_size, self.eval_batch_size = mesh, batch_size, eval_batch_size
        self.num_classes, self.seed = num_classes if eval_label is None else 10, seed
        self.num_train, self.num_eval = num_train, num_eval
        self.eval_split_name = "tiny held-out"
        self.steps_per_epoch = num_train // batch_size
        self.eval_steps = math.ceil(num_eval / eval_batch_size)

    def train_batches(self, epoch, start_step=0):
        perm = np.random.default_rng((self.seed, epoch)).permutation(self.num_train)
        for s in range(start_step, self.steps_per_epoch):
            idx = perm[s * self.batch_size:(s + 1) * self.batch_size]
            yield parallel.host_batch_to_global(
                dict(image=self.train_x[idx], label=self.train_y[idx]), self.mesh)

    def eval_batches(self):
        b = self.eval_batch_size
        for s in range(self.eval_steps):
            x, y = self.eval_x[s * b:(s + 1) * b], self.eval_y[s * b:(s + 1) * b]
            pad = b - len(y)
            mask = np.concatenate([np.ones(len(y)), np.zeros(pad)]).astype(np.float32)
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(pad, y.dtype)])
            yield parallel.host_batch_to_global(dict(image=x, label=y, mask=mask), self.mesh)


def tiny_config(**kw):
    c = config_utils.base_config()
    c.model_options.hidden = (16,)
    c.update(dict(batch_size=16, eval_batch_size=16, num_epochs=2, learning_rate=0.1,
                  log_every_steps=2, progress_bar=False, precision="float32"))
    c.update(kw)
    return config_utils.resolve(c)


def setup(config, mesh, num_classes=4, seed=0):
    model = train.create_model(config, num_classes)
    tx = optim.make_optimizer(config, steps_per_epoch=6)
    state = train.create_train_state(config, model, tx, jax.random.PRNGKey(seed), (4, 4, 1))
    return model, tx, parallel.replicate(state, mesh)


# ---------------------------------------------------------------------------
# Steps


def test_global_pruning_threshold_no_retrace():
    mesh = parallel.make_mesh()
    assert mesh.size == 8  # conftest: 8 simulated CPU devices
    config = tiny_config(pruning="global", keep_fraction=0.3)
    model, tx, state = setup(config, mesh)
    ds = TinyDataset(mesh)
    train_fn, _ = train.make_steps(config, model, tx)
    step_fn = chex.assert_max_traces(lambda s, b: train_fn(s, b), n=1)
    p_train = jax.jit(step_fn, in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                      donate_argnums=(0,))
    batches = ds.train_batches(0)
    total = sum(x.size for x in train._score_leaves(state.params))
    for k in (0.5, 0.4, 0.3):
        state = train.with_keep_fraction(state, k, parallel.replicated(mesh))
        assert int(state.kept_total) == total - math.floor((1.0 - k) * total)
        scores = [np.asarray(x) for x in train._score_leaves(state.params)]
        state, metrics = p_train(state, next(batches))
        assert bool(metrics["finite"])
        # the global threshold tau (docs/method.md) from the pre-step scores, float64 NumPy: z ascending, z[p - 1].
        z = np.sort(np.abs(np.concatenate([s.ravel() for s in scores])).astype(np.float64))
        p = math.floor((1.0 - k) * z.size)
        taus = jax.tree.leaves(state.pruning)
        assert len(taus) == 2  # both prunable layers of the MLP get the same tau
        for t in taus:
            assert float(t) == pytest.approx(z[p - 1], rel=1e-6)
        kept = sum(int((np.abs(s) > z[p - 1]).sum()) for s in scores)
        assert kept == z.size - p
    chex.clear_trace_counter()


def test_global_kept_count_is_the_float64_count():
    """Global pruning's kept count N - floor((1 - k) N) in float64, also where float32 arithmetic on the
    device would give another count (e.g. N = 1000, k = 0.066: 934 in float64, 933 in
    float32): the state carries the host's count, not k."""
    params = {"a": {"scores": jnp.zeros((10, 60))}, "b": {"scores": jnp.zeros((400,))}}
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen={},
                             batch_stats={}, opt_state={}, pruning={},
                             kept_total=jnp.zeros((), jnp.int32), rng=jnp.zeros(2, jnp.uint32))
    differs = 0
    for k in np.arange(0.05, 0.5, 0.001).round(3):
        k = float(k)
        kept = int(train.with_keep_fraction(state, k).kept_total)
        assert kept == 1000 - math.floor((1.0 - k) * 1000)
        f32 = 1000 - math.floor(np.float32(1.0 - np.float32(k)) * np.float32(1000))
        differs += kept != f32
    assert differs > 0  # the float32 route really would have been off on this grid


def test_data_parallel_matches_single_device():
    config = tiny_config(learn_batchnorm=True)
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = parallel.make_mesh(devices)
        model, tx, state = setup(config, mesh)
        p_train, p_eval = train.make_parallel_steps(config, model, tx, mesh)
        ds = TinyDataset(mesh)
        for batch in list(ds.train_batches(0))[:3]:
            state, _ = p_train(state, batch)
        results.append((jax.device_get(state.params), jax.device_get(state.batch_stats),
                        train.evaluate(p_eval, state, ds)))
    chex.assert_trees_all_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)
    assert results[0][2]["count"] == results[1][2]["count"] == 40


def test_nonfinite_step_leaves_state_unchanged():
    mesh = parallel.make_mesh()
    config = tiny_config()
    model, tx, state = setup(config, mesh)
    p_train, _ = train.make_parallel_steps(config, model, tx, mesh)
    batch = next(TinyDataset(mesh).train_batches(0))
    before = jax.device_get(state)
    bad = dict(batch, image=batch["image"] * jnp.nan)
    state, metrics = p_train(state, bad)
    assert not bool(metrics["finite"])
    chex.assert_trees_all_equal(jax.device_get(state), before)


def test_eval_step_compiled_ahead_matches_and_falls_back():
    """compilation.CompiledAhead: the eval step compiled in a thread from abstract shapes (taken
    before the train step donates the state) is the executable used and gives p_eval's
    numbers; an executable built for other shapes is dropped for the jitted function."""
    mesh = parallel.make_mesh()
    config = tiny_config(learn_batchnorm=True)
    model, tx, state = setup(config, mesh)
    ds = TinyDataset(mesh)
    p_train, p_eval = train.make_parallel_steps(config, model, tx, mesh)
    first = next(ds.eval_batches())
    ahead = compilation.CompiledAhead(p_eval, compilation.abstract(state),
                                      compilation.abstract(first))
    wrong = compilation.CompiledAhead(p_eval, compilation.abstract(state),
                                      compilation.abstract(jax.tree.map(lambda x: x[:8], first)))
    for batch in list(ds.train_batches(0))[:2]:
        state, _ = p_train(state, batch)
    want = train.evaluate(p_eval, state, ds)
    assert train.evaluate(ahead, state, ds) == want
    assert ahead.uses_compiled  # the ahead-of-time executable ran
    assert train.evaluate(wrong, state, ds) == want
    assert not wrong.uses_compiled  # rejected the real batches: the jitted step ran


def test_eval_step_counts_each_example_once_with_topk():
    mesh = parallel.make_mesh()
    config = tiny_config()
    model, tx, state = setup(config, mesh)
    ds = TinyDataset(mesh)
    _, p_eval = train.make_parallel_steps(config, model, tx, mesh)
    got = train.evaluate(p_eval, state, ds)
    # One compiled forward pass (op by op, every op would be a compilation of its own).
    apply = jax.jit(functools.partial(model.apply, train=False))
    logits = np.asarray(apply(state.variables(), jnp.asarray(ds.eval_x)), np.float64)
    order = np.argsort(-logits, axis=1)
    top1 = 100 * np.mean(order[:, 0] == ds.eval_y)
    top5 = 100 * np.mean([y in order[i, :4] for i, y in enumerate(ds.eval_y)])  # 4 classes
    z = logits - logits.max(1, keepdims=True)
    loss = np.mean(-(z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(40), ds.eval_y])
    assert got["count"] == 40
    assert got["top1"] == pytest.approx(top1, abs=1e-4)
    assert got["top5"] == pytest.approx(top5, abs=1e-4) and top5 == 100.0
    assert got["loss"] == pytest.approx(loss, rel=1e-4)


# ---------------------------------------------------------------------------
# In-process loop: resume equivalence, fingerprint, early stop


@pytest.mark.end_to_end  # a whole run in this process
def test_resume_mid_epoch_reproduces_uninterrupted_run(tmp_path, capsys):
    mesh = parallel.make_mesh()
    ds = TinyDataset(mesh)
    straight = loop.train_and_evaluate(tiny_config(), str(tmp_path / "a"), dataset=ds)
    part = loop.train_and_evaluate(tiny_config(max_train_steps=3), str(tmp_path / "b"), dataset=ds)
    assert part["global_step"] == 3 and part["stop_reason"] == "max_train_steps"
    resumed = loop.train_and_evaluate(tiny_config(), str(tmp_path / "b"), dataset=ds)
    assert "resuming" in capsys.readouterr().out
    assert resumed["global_step"] == straight["global_step"] == 12
    a = checkpoint.load_for_inference(str(tmp_path / "a"))
    b = checkpoint.load_for_inference(str(tmp_path / "b"))
    chex.assert_trees_all_equal(a["params"], b["params"])  # same data order, same updates
    chex.assert_trees_all_equal(a["batch_stats"], b["batch_stats"])
    assert resumed["final_top1"] == straight["final_top1"]
    # A finished run returns its stored result without training.
    again = loop.train_and_evaluate(tiny_config(), str(tmp_path / "b"), dataset=ds)
    assert again == resumed


@pytest.mark.end_to_end  # a whole run in this process
def test_different_config_in_workdir_is_refused(tmp_path):
    mesh = parallel.make_mesh()
    ds = TinyDataset(mesh)
    loop.train_and_evaluate(tiny_config(num_epochs=1), str(tmp_path), dataset=ds)
    with pytest.raises(CheckpointError, match=r"keep_fraction: checkpoint 0.5 vs config 0.3.*"
                                              r"--config.restart=True"):
        loop.train_and_evaluate(tiny_config(num_epochs=1, keep_fraction=0.3), str(tmp_path),
                                 dataset=ds)
    out = loop.train_and_evaluate(tiny_config(num_epochs=1, keep_fraction=0.3, restart=True),
                                   str(tmp_path), dataset=ds)
    assert out["keep_fraction"] == 0.3


@pytest.mark.end_to_end  # a whole run in this process
def test_not_learning_early_stop(tmp_path):
    mesh = parallel.make_mesh()
    ds = TinyDataset(mesh, eval_label=9)  # eval labels of a class never trained: top-1 = 0 %
    out = loop.train_and_evaluate(tiny_config(num_epochs=6, stop_if_not_learning=True),
                                   str(tmp_path), dataset=ds)
    assert out["stop_reason"] == "not_learning"
    assert out["epochs_completed"] == 3  # checked after each evaluation from epoch 2 on (docs/decisions.md#not-learning)


# ---------------------------------------------------------------------------
# End to end through the command line


def _main(workdir, *args, timeout=240, cache=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if cache:
        env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", "mpt_jax.main", "--config=configs/smoke.py",
                           f"--workdir={workdir}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout, time.time() - t


def _read_events(workdir):
    from tensorboard.backend.event_processing import event_file_loader
    scalars = {}
    for path in glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*")):
        for event in event_file_loader.LegacyEventFileLoader(path).Load():
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_tensorboard_forgets_steps_a_resumed_run_replays(tmp_path):
    """A run logged steps 1..6 and was killed; resumed from its checkpoint at step 3, it logs
    4..6 again: TensorBoard must show 1..6 once each, 4..6 with the new values."""
    from tensorboard.backend.event_processing import event_accumulator

    def shown(workdir, resume_marker):
        first = metrics_lib.MetricsLogger(workdir, start_step=1)
        for step in range(1, 7):
            first.write(dict(step=step, split="train", loss=float(step)))
        first.close()
        resumed = metrics_lib.MetricsLogger(workdir, start_step=4 if resume_marker else None)
        for step in range(4, 7):
            resumed.write(dict(step=step, split="train", loss=10.0 * step))
        resumed.close()
        assert len(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))) == 2
        acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"))
        acc.Reload()
        return [(e.step, e.value) for e in acc.Scalars("train/loss")]

    assert shown(str(tmp_path / "a"), True) == [
        (1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]
    # Without the restart marker TensorBoard keeps both copies of 4..6 (the old behaviour).
    assert len(shown(str(tmp_path / "b"), False)) == 9


@pytest.mark.multiprocess  # subprocess runs of main, end to end
def test_main_end_to_end_resume_and_finished(tmp_path, compilation_cache):
    workdir = str(tmp_path / "run")
    out1, _ = _main(workdir, "--config.num_epochs=1", cache=compilation_cache)
    assert re.search(r"dense0\s+\(64, 32\)\s+2,048\s+1,024\s+50\.00", out1)  # layer table
    final = out1.strip().splitlines()[-1]
    assert re.search(r"accuracy: top-1 \d+\.\d+%", final), final
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train_recs = [r for r in records if r["split"] == "train"]
    eval_recs = [r for r in records if r["split"] == "eval"]
    assert train_recs and len(eval_recs) == 1
    for r in train_recs:
        assert {"step", "epoch", "loss", "top1", "lr", "images_per_s"} <= set(r)
    # Every logged interval spans log_every_steps (5) to 9 steps: the epoch's remainder joins
    # its last interval (22 steps: 5, 10, 15, 22), no short interval at the epoch's end.
    intervals = np.diff([0] + [r["step"] for r in train_recs])
    assert all(5 <= d <= 9 for d in intervals), intervals
    assert {"top1", "top5", "loss"} <= set(eval_recs[0]) and eval_recs[0]["epoch"] == 1
    num_train = int(re.search(r"on digits: (\d+) train", out1).group(1))
    spe = num_train // 64  # smoke batch 64; the last partial batch is dropped
    assert eval_recs[0]["step"] == spe
    events = _read_events(workdir)
    assert events["eval/top1"][0][0] == spe
    assert events["eval/top1"][0][1] == pytest.approx(eval_recs[0]["top1"], rel=1e-5)
    assert len(events["train/loss"]) == len(train_recs)
    loaded = checkpoint.load_for_inference(workdir, "latest")
    assert loaded["params"]["dense0"]["scores"].shape == (64, 32)
    assert loaded["frozen"]["dense0"]["weight"].shape == (64, 32)
    assert loaded["config"].model == "mlp" and loaded["metrics"]["epoch"] == 1
    assert loaded["metrics"]["accuracy"] == pytest.approx(eval_recs[0]["top1"])
    best = checkpoint.load_for_inference(workdir, "best")
    assert best["metrics"]["best_top1"] == loaded["metrics"]["best_top1"]

    # The same run continued to 2 epochs: a longer schedule must be accepted explicitly.
    out2, _ = _main(workdir, "--config.num_epochs=2", "--config.accept_schedule_change=True",
                    cache=compilation_cache)
    assert "resuming" in out2 and "epoch 2, step 0" in out2
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["epoch"] for r in records if r["split"] == "eval"] == [1, 2]
    result = json.load(open(os.path.join(workdir, "result.json")))
    assert result["epochs_completed"] == 2 and result["global_step"] == 2 * spe
    assert result["final_top1"] > 30.0  # 10 classes; chance is 10 %

    out3, _ = _main(workdir, "--config.num_epochs=2")
    assert "complete" in out3 and "resuming" not in out3
    assert out3.strip().splitlines()[-1] == out2.strip().splitlines()[-1]


# ---------------------------------------------------------------------------
# Logging pieces and workdir checks


def test_progress_lines(tmp_path):
    import io

    from mpt_jax import metrics
    stream = io.StringIO()  # not a TTY: plain lines, one per update
    bar = metrics.ProgressBar(num_epochs=3, steps_per_epoch=10, stream=stream)
    bar.set_batch_size(32)
    bar.update(0, 5, loss=1.25, acc=0.5, images_per_s=32.0)
    line = stream.getvalue()
    assert line.count("\n") == 1 and "\r" not in line
    # 32 images/s at batch 32 = 1 step/s: 5 steps left in the epoch, 25 in the run.
    assert re.search(r"epoch 1/3 .* 5/10 loss 1.2500 acc 50.00% 32 img/s, epoch ETA 00:05, "
                     r"run ETA 00:25$", line.strip()), line


def test_unwritable_workdir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError, match=r"is not writable"):
        checkpoint.check_writable(str(blocker / "run"))


@pytest.mark.end_to_end  # a whole run in this process
def test_best_checkpoint_is_the_best_epoch_with_sparse_checkpoints(tmp_path):
    """With checkpoint_every_epochs > 1 the best epoch's state is held on the host and
    written with the next checkpoint: the "best" checkpoint equals the one of a run that
    saves every epoch."""
    mesh = parallel.make_mesh()
    ds = TinyDataset(mesh)
    kw = dict(num_epochs=5, learning_rate=0.5)
    every = loop.train_and_evaluate(tiny_config(**kw), str(tmp_path / "every"), dataset=ds)
    sparse = loop.train_and_evaluate(tiny_config(checkpoint_every_epochs=4, **kw),
                                      str(tmp_path / "sparse"), dataset=ds)
    timings = dict(wall_seconds=0, wall_seconds_parts=0, time_breakdown=0)
    assert dict(sparse, **timings) == dict(every, **timings)
    a = checkpoint.load_for_inference(str(tmp_path / "every"), which="best")
    b = checkpoint.load_for_inference(str(tmp_path / "sparse"), which="best")
    assert a["metrics"]["epoch"] == b["metrics"]["epoch"] == every["best_epoch"]
    chex.assert_trees_all_equal(a["params"], b["params"])
    chex.assert_trees_all_equal(a["batch_stats"], b["batch_stats"])
