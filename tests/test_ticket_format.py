"""The ticket file: export/reload round trip, bit budgets, corruption handling."""
import hashlib
import json
import struct

import numpy as np
import pytest

from mpt_jax import ticket as T
from ticket_cases import CASES, all_runs, overhead_bytes, prunable_weight_count, training_logits


@pytest.fixture(scope="module")
def runs():
    return all_runs()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", ["seed", "signs"])
def test_round_trip_reproduces_training_logits(runs, case, mode, tmp_path):
    name, opts, shape, key, variables = runs[case]
    images = np.random.default_rng(11).standard_normal((5, *shape)).astype(np.float32)
    ref = training_logits(name, opts, variables, images)
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
    images = np.random.default_rng(3).standard_normal((4, *shape)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(T.predict_fn(loaded)(images)),
                               np.asarray(T.predict_fn(t32)(images)), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("mode,keep,budget", [("seed", 0.95, 1.1), ("signs", 0.95, 2.2)])
def test_file_size_within_bit_budget(mode, keep, budget):
    name, opts, shape = "mlp_binact", dict(hidden=(128, 128), keep_fraction=keep), (8, 8, 1)
    key = T.run_init_key(0)
    variables = T.init_variables(name, opts, shape, key)
    ticket = T.make_ticket(name, opts, variables, shape, mode=mode, init_key=key)
    data = T.ticket_bytes(ticket)
    n = prunable_weight_count(ticket)
    layer_bits = 8 * (len(data) - overhead_bytes(data))
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
