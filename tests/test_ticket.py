"""Tickets: export/reload round trip, file budgets, corruption handling, summary numbers."""
import hashlib
import json
import math
import struct

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax import ops
from mpt_jax import ticket as T
from mpt_jax.models import get_model

KEEP = 0.3
# (model name, get_model options, image shape): an MLP with sign activations, an MLP with
# "+BN" (affine BN, trained scale/bias) and a small conv model with BN, sign activations,
# max-pooling and a flatten into dense layers.
CASES = {
    "mlp_binact": ("mlp_binact", dict(hidden=(48, 32)), (8, 8, 1)),
    "mlp_affine": ("mlp", dict(hidden=(40,), bn_affine=True), (8, 8, 1)),
    "conv2_binact": ("conv2_binact", dict(width_mult=0.125), (8, 8, 3)),
}


def _randomize(tree, key, positive=False):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, max(len(leaves), 1))
    new = [jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)]
    if positive:
        new = [jnp.abs(l) + 0.5 for l in new]
    return jax.tree_util.tree_unflatten(treedef, new)


def _run(case, seed=3):
    """A 'trained' run: the init of the training code plus random BN statistics / affine."""
    name, opts, shape = CASES[case]
    opts = dict(opts, keep_fraction=KEEP, num_classes=10)
    key = T.run_init_key(seed)
    variables = dict(T.init_variables(name, opts, shape, key))
    if "batch_stats" in variables:
        stats = variables["batch_stats"]
        variables["batch_stats"] = jax.tree_util.tree_map_with_path(
            lambda p, a: (jnp.abs(jax.random.normal(jax.random.key(len(str(p))), a.shape)) + 0.5
                          if p[-1].key == "var" else
                          jax.random.normal(jax.random.key(len(str(p)) + 7), a.shape)), stats)
    if opts.get("bn_affine"):
        params = dict(variables["params"])
        for mod, leaves in params.items():
            if "scale" in leaves:
                params[mod] = dict(scale=leaves["scale"] + 0.3 * jax.random.normal(
                    jax.random.key(1), leaves["scale"].shape), bias=0.2 + leaves["bias"])
        variables["params"] = params
    return name, opts, shape, key, variables


@pytest.fixture(scope="module")
def runs():
    return {case: _run(case) for case in CASES}


def _logits(name, opts, variables, images):
    model = get_model(name, **opts)
    return jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", ["seed", "signs"])
def test_round_trip_reproduces_training_logits(runs, case, mode, tmp_path):
    name, opts, shape, key, variables = runs[case]
    images = jax.random.normal(jax.random.key(11), (5, *shape))
    ref = _logits(name, opts, variables, images)
    ticket = T.make_ticket(name, opts, variables, shape, mode=mode, init_key=key,
                           metrics=dict(accuracy=87.5))
    path = tmp_path / "t.mptk"
    size = T.save_ticket(ticket, path)
    assert size == path.stat().st_size
    loaded = T.load_ticket(path)
    out = T.predict_fn(loaded)(images)
    # Same kernel values (alpha computed by the ops' own jitted kernel) and the same ops as
    # the training-time model: identical logits on the same backend.
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    assert loaded.info["metrics"]["accuracy"] == 87.5
    assert loaded.model == name and loaded.mode == mode


def test_float16_batchnorm_storage(runs):
    name, opts, shape, key, variables = runs["mlp_binact"]
    t32 = T.make_ticket(name, opts, variables, shape, mode="signs")
    t16 = T.make_ticket(name, opts, variables, shape, mode="signs", bn_dtype="float16")
    b32, b16 = T.ticket_bytes(t32), T.ticket_bytes(t16)
    bn_values = sum(a.size for a in t32.others.values())
    assert bn_values > 0 and len(b32) - len(b16) >= 2 * bn_values - 64  # manifest differs a bit
    loaded = T.ticket_from_bytes(b16)
    assert all(a.dtype == np.float16 for a in loaded.others.values())
    images = jax.random.normal(jax.random.key(3), (4, *shape))
    np.testing.assert_allclose(np.asarray(T.predict_fn(loaded)(images)),
                               np.asarray(T.predict_fn(t32)(images)), rtol=0.05, atol=0.05)


def reference_mask(scores):
    """Float64 SPEC 1.2 reference: the kept count n - floor((1 - k) n) of the largest |s|,
    ties to the lowest flat index. Returns (flat mask, descending flat order, kept count)."""
    n = scores.size
    kept = n - math.floor((1.0 - KEEP) * n)
    order = np.argsort(-np.abs(scores).reshape(-1), kind="stable")
    mask = np.zeros(n, bool)
    mask[order[:kept]] = True
    return mask, order, kept


def test_mask_and_alpha_match_float64_reference(runs):
    """Independent NumPy float64 reference of SPEC 1.2/1.3 (kept count, top-|s|, mean |W|)."""
    name, opts, shape, key, variables = runs["conv2_binact"]
    ticket = T.make_ticket(name, opts, variables, shape, mode="signs")
    params = variables["params"]
    frozen = variables["frozen"]
    assert len(ticket.layers) == 5
    for lt in ticket.layers:
        s = np.asarray(params[lt.path[0]]["scores"], np.float64)
        w = np.asarray(frozen[lt.path[0]]["weight"], np.float64)
        mask = reference_mask(s)[0].reshape(s.shape)
        np.testing.assert_array_equal(lt.mask, mask)
        alpha = np.abs(w)[mask].mean()
        np.testing.assert_allclose(float(lt.alpha), alpha, rtol=2e-6)
        np.testing.assert_array_equal(lt.ternary(), np.sign(w) * mask)
        # The effective kernel equals the training-time op's.
        eff = ops.biprop_kernel(jnp.asarray(frozen[lt.path[0]]["weight"]),
                                jnp.asarray(params[lt.path[0]]["scores"]), KEEP)
        np.testing.assert_allclose(lt.kernel(), np.asarray(eff), rtol=1e-6, atol=0)


def test_kept_weight_that_is_exactly_zero(runs, tmp_path):
    """sign(0) = 0 (SPEC 8 item 27): a kept weight of exactly 0 contributes nothing, so the
    ticket stores it as pruned, with alpha still the mean |W| over the whole kept set (the
    zeros included, float64 reference), and reproduces the model's logits bit for bit.
    (PyTorch's normal_ draws exact zeros; reference checkpoints of big models have some.)"""
    name, opts, shape, key, variables = runs["conv2_binact"]
    layer = "conv1"
    params, frozen = variables["params"], dict(variables["frozen"])
    mask, order, kept = reference_mask(np.asarray(params[layer]["scores"], np.float64))
    w = np.array(frozen[layer]["weight"], np.float32)
    zeroed = order[[0, 5, kept - 1]]  # three kept entries, the last one at the threshold
    w.reshape(-1)[zeroed] = 0.0
    frozen[layer] = dict(weight=jnp.asarray(w))
    variables = dict(variables, frozen=frozen)
    images = jax.random.normal(jax.random.key(5), (4, *shape))
    ref = _logits(name, opts, variables, images)
    ticket = T.make_ticket(name, opts, variables, shape, mode="signs")
    lt = ticket.layer(layer)
    alpha = np.abs(w.astype(np.float64)).reshape(-1)[mask].mean()  # zeros included
    np.testing.assert_allclose(float(lt.alpha), alpha, rtol=2e-6)
    mask[zeroed] = False
    np.testing.assert_array_equal(lt.mask.reshape(-1), mask)
    assert lt.kept == kept - 3
    T.save_ticket(ticket, tmp_path / "z.mptk")
    out = T.predict_fn(T.load_ticket(tmp_path / "z.mptk"))(images)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def _prunable_weight_count(ticket):
    return sum(int(np.prod(lt.shape)) for lt in ticket.layers)


def _overhead_bytes(data):
    """Header + manifest + BN arrays, computed from the file itself."""
    _, _, _, manifest_len, _ = struct.unpack_from("<8sIIQ32s", data)
    manifest = json.loads(data[56:56 + manifest_len])
    bn = sum(e["nbytes"] for e in manifest["arrays"]
             if e["name"].startswith(("params/", "batch_stats/")))
    return 56 + manifest_len + bn


@pytest.mark.parametrize("mode,keep,budget", [("seed", 0.95, 1.1), ("signs", 0.95, 2.2)])
def test_file_size_within_bit_budget(mode, keep, budget):
    name, opts, shape = "mlp_binact", dict(hidden=(128, 128), keep_fraction=keep), (8, 8, 1)
    key = T.run_init_key(0)
    variables = T.init_variables(name, opts, shape, key)
    ticket = T.make_ticket(name, opts, variables, shape, mode=mode, init_key=key)
    data = T.ticket_bytes(ticket)
    n = _prunable_weight_count(ticket)
    layer_bits = 8 * (len(data) - _overhead_bytes(data))
    assert layer_bits / n <= budget
    # The stored bits are exactly: packed mask + packed kept signs (signs mode) + f32 alpha.
    expected = sum(8 * ((int(np.prod(lt.shape)) + 7) // 8) + 32 +
                   (8 * ((lt.kept + 7) // 8) if mode == "signs" else 0) for lt in ticket.layers)
    assert layer_bits == expected


@pytest.fixture(scope="module")
def mlp_ticket_bytes(runs):
    name, opts, shape, key, variables = runs["mlp_binact"]
    return T.ticket_bytes(T.make_ticket(name, opts, variables, shape, mode="seed", init_key=key))


def _rewrite(data, edit_manifest=None, version=None):
    """Re-serialises a ticket after editing its manifest, with a VALID checksum."""
    magic, ver, res, mlen, _ = struct.unpack_from("<8sIIQ32s", data)
    manifest = json.loads(data[56:56 + mlen])
    payload = data[56 + mlen:]
    if edit_manifest:
        edit_manifest(manifest)
    mbytes = json.dumps(manifest).encode()
    digest = hashlib.sha256(mbytes + payload).digest()
    return struct.pack("<8sIIQ32s", magic, ver if version is None else version, res,
                       len(mbytes), digest) + mbytes + payload


def test_untouched_bytes_load(mlp_ticket_bytes):
    assert T.ticket_from_bytes(_rewrite(mlp_ticket_bytes)).model == "mlp_binact"


@pytest.mark.parametrize("damage,match", [
    (lambda d: d[:-7], "checksum|payload"),
    (lambda d: d[:40], "shorter than"),
    (lambda d: d[:200], "truncated|checksum"),
    (lambda d: d[:-30] + bytes([d[-30] ^ 1]) + d[-29:], "checksum"),
    (lambda d: b"NOTATICK" + d[8:], "magic"),
    (lambda d: _rewrite(d, version=2), "version 2"),
])
def test_corrupt_files_raise(mlp_ticket_bytes, damage, match):
    with pytest.raises(T.TicketError, match=match):
        T.ticket_from_bytes(damage(mlp_ticket_bytes))


def test_mismatched_manifest_raises(mlp_ticket_bytes):
    def other_model(m):
        m["model"] = "mlp"  # ReLU MLP: same layers but no match for ... everything else
        m["model_options"]["hidden"] = [16]

    def wrong_shape(m):
        m["layers"][0]["shape"] = [7, 7]

    def wrong_seed(m):
        m["init"]["key_data"][1] += 1

    for edit, match in ((other_model, "does not match|shape|regenerat"),
                        (wrong_shape, "bytes, expected|keeps|regenerat"),
                        (wrong_seed, "different signs")):
        with pytest.raises(T.TicketError, match=match):
            ticket = T.ticket_from_bytes(_rewrite(mlp_ticket_bytes, edit))
            T.inference_model(ticket)


def test_ticket_for_another_model_is_refused(runs):
    name, opts, shape, key, variables = runs["mlp_binact"]
    ticket = T.make_ticket(name, opts, variables, shape, mode="signs")
    ticket.model_options = dict(ticket.model_options, hidden=[48, 33])
    with pytest.raises(T.TicketError, match="shape"):
        T.inference_model(ticket)
    with pytest.raises(T.TicketError, match="biprop"):
        T.make_ticket(name, dict(opts, mode="edgepopup"), variables, shape)
    with pytest.raises(T.TicketError, match="init key"):
        T.make_ticket(name, opts, variables, shape, mode="seed", init_key=T.run_init_key(99))


def test_summary_numbers(runs):
    name, opts, shape, key, variables = runs["conv2_binact"]
    ticket = T.make_ticket(name, opts, variables, shape, mode="signs")
    s = T.summary(ticket)
    rows = {r["layer"]: r for r in s["layers"]}
    assert list(rows) == ["conv1", "conv2", "fc1", "fc2", "classifier"]  # call order
    c = [8, 8]  # width_mult 0.125: 64 -> 8 channels; 8x8 images, MP2 -> 4x4 before flatten
    shapes = {"conv1": (3, 3, 3, c[0]), "conv2": (3, 3, c[0], c[1]), "fc1": (4 * 4 * 8, 32),
              "fc2": (32, 32), "classifier": (32, 10)}
    positions = {"conv1": 64, "conv2": 64, "fc1": 1, "fc2": 1, "classifier": 1}
    for layer, shp in shapes.items():
        r = rows[layer]
        n = math.prod(shp)
        kept = n - math.floor((1.0 - KEEP) * n)
        nbytes = math.ceil(n / 8) + math.ceil(kept / 8) + 4
        assert (r["weights"], r["kept"], r["bytes"]) == (n, kept, nbytes)
        assert r["bits_per_weight"] == pytest.approx(8 * nbytes / n)
        assert r["compression"] == pytest.approx(4 * n / nbytes)
        macs = n * positions[layer]
        # The first layer sees the image; every other layer of conv2_binact sees signs.
        assert (r["binary_macs"], r["other_macs"]) == ((0, macs) if layer == "conv1" else (macs, 0))
    t = s["totals"]
    assert t["file_bytes"] == len(T.ticket_bytes(ticket))
    assert t["binary_macs"] + t["other_macs"] == sum(
        math.prod(v) * positions[k] for k, v in shapes.items())
    table = T.summary_table(s)
    assert "TOTAL" in table and "classifier" in table


@pytest.mark.parametrize("case", list(CASES))
def test_inexact_ticket_has_the_exported_sizes(runs, case, monkeypatch):
    """exact=False (the end-of-run summary) gives the exported ticket's masks, signs, byte
    size and summary rows, alpha to float32 rounding, and compiles neither check."""
    name, opts, shape, key, variables = runs[case]
    full = T.make_ticket(name, opts, variables, shape, mode="seed", init_key=key)

    def refuse(*args, **kwargs):
        raise AssertionError("exact=False must not run the compiled exactness checks")

    monkeypatch.setattr(T, "training_kernels", refuse)
    monkeypatch.setattr(T, "regenerate_frozen", refuse)
    fast = T.make_ticket(name, opts, variables, shape, mode="seed", init_key=key, exact=False)
    assert [lt.name for lt in fast.layers] == [lt.name for lt in full.layers]
    for a, b in zip(fast.layers, full.layers):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.signs[a.mask], b.signs[b.mask])
        assert float(a.alpha) == pytest.approx(float(b.alpha), rel=1e-6)
    assert len(T.ticket_bytes(fast)) == len(T.ticket_bytes(full))
    assert T.summary(fast)["layers"] == T.summary(full)["layers"]
    with pytest.raises(AssertionError, match="exactness checks"):
        T.make_ticket(name, opts, variables, shape, mode="seed", init_key=key)


def test_relu_model_has_no_binary_macs(runs):
    name, opts, shape, key, variables = runs["mlp_affine"]
    s = T.summary(T.make_ticket(name, opts, variables, shape, mode="signs"))
    assert s["totals"]["binary_macs"] == 0 and s["totals"]["other_macs"] > 0


def test_global_pruning_ticket_matches_model():
    name, shape = "mlp_binact", (8, 8, 1)
    opts = dict(hidden=(24,), keep_fraction=0.4, pruning="global", num_classes=10)
    key = T.run_init_key(1)
    variables = dict(T.init_variables(name, opts, shape, key))
    scores = [variables["params"][m]["scores"] for m in ("dense0", "classifier")]
    tau = ops.global_threshold(scores, 0.4)
    variables["pruning"] = jax.tree_util.tree_map(lambda _: tau, variables["pruning"])
    images = jax.random.normal(jax.random.key(2), (3, *shape))
    ref = _logits(name, opts, variables, images)
    ticket = T.make_ticket(name, opts, variables, shape, mode="signs")
    total_kept = sum(lt.kept for lt in ticket.layers)
    n = sum(int(np.prod(lt.shape)) for lt in ticket.layers)
    assert total_kept == n - math.floor(0.6 * n)  # one global threshold (SPEC 1.7)
    out = T.predict_fn(T.ticket_from_bytes(T.ticket_bytes(ticket)))(images)
    chex.assert_trees_all_close(out, ref, rtol=1e-6, atol=1e-6)


def test_cli_summary_json_and_errors(runs, tmp_path, capsys, run_into_closed_pipe):
    name, opts, shape, key, variables = runs["mlp_binact"]
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


def test_export_from_run_and_evaluate(runs, tmp_path, monkeypatch, capsys):
    """CLI export from a workdir (checkpoint loading stubbed with the run's variables)."""
    import ml_collections

    from mpt_jax import checkpoint

    name, opts, shape, key, variables = runs["mlp_binact"]
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
    labels = jnp.argmax(_logits(name, opts, variables, images), -1)
    result = T.evaluate_batches(ticket, [dict(image=images, label=labels,
                                              mask=jnp.array([1, 1, 1, 1, 1, 0.]))])
    assert result == dict(accuracy=100.0, examples=5)


@pytest.mark.slow
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
    assert "vs the training-time model on one batch: 0\n" in printed
    ticket = T.load_ticket(out)
    n = _prunable_weight_count(ticket)
    data = out.read_bytes()
    assert 8 * (len(data) - _overhead_bytes(data)) / n <= 1.1
    # The trained MPT-1/1 ticket through the bit-packed path: integer pre-activations of the
    # binary layers identical to the float path's on real eval images.
    from mpt_jax import bitpack, checkpoint, data as data_lib, parallel

    ds = data_lib.get_dataset(checkpoint.load_for_inference(workdir)["config"],
                              parallel.make_mesh())
    images = next(iter(ds.eval_batches()))["image"]
    counts = bitpack.binary_layer_counts(ticket, images)
    assert list(counts) == ["classifier"]  # dense0 sees the image
    for packed, floated in counts.values():
        np.testing.assert_array_equal(np.asarray(packed), np.asarray(floated).astype(np.int64))
