"""The Pallas histogram select (mpt_jax.select_pallas, mask_method "radix_pallas"): the same
thresholds and kept sets as a float64 NumPy sort, bit for bit (ties, denormals, all-equal
scores, tiny and odd-sized layers, k = 1 and k = n), run here in Pallas' interpret mode;
its GPU lowering goes through Triton; training with it is identical to radix_many."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from mpt_jax import config_utils, optim, select_blocks, select_many, select_pallas, train

KINDS = ("uniform", "ties", "equal", "zeros", "denormal", "wide")


def make(kind: str, shape, rng) -> np.ndarray:
    """Scores of one kind (signed: the masks take |x|)."""
    n = int(np.prod(shape))
    sign = rng.choice([-1.0, 1.0], n)
    if kind == "uniform":
        v = rng.uniform(0, 0.1, n)
    elif kind == "ties":  # five magnitudes: the threshold is a heavy tie
        v = rng.integers(0, 5, n) * 0.25
    elif kind == "equal":
        v = np.full(n, 0.3)
    elif kind == "zeros":  # mostly +-0.0
        v = np.where(rng.random(n) < 0.15, 1.0, 0.0)
    elif kind == "denormal":  # below float32's smallest normal (1.2e-38), a few normal
        v = rng.integers(0, 40, n) * 1.4e-45
        v[rng.random(n) < 0.1] = 1e-3
    else:  # ~70 binades, denormals and the largest float
        v = rng.random(n) * 10.0 ** rng.integers(-44, 38, n)
        v[rng.random(n) < 0.02] = np.finfo(np.float32).max
    return (sign * v).astype(np.float32).reshape(shape)


def stable_topk(x: np.ndarray, k: int) -> np.ndarray:
    """Independent reference: the first k entries of a stable descending sort of |x|
    (float64, exact for every float32 including denormals)."""
    flat = np.abs(x.astype(np.float64)).ravel()
    mask = np.zeros(flat.size, bool)
    mask[np.argsort(-flat, kind="stable")[:k]] = True
    return mask.reshape(x.shape)


def kth_code(x: np.ndarray, k: int) -> int:
    """The float32 bit pattern of the k-th largest |x| (float64 sort)."""
    flat = np.sort(np.abs(x.astype(np.float64)).ravel())
    return int(np.float32(flat[flat.size - k]).view(np.int32))


@pytest.mark.parametrize("n", [1, 2, 3, 1000, 4099])
def test_kth_largest_bit_exact(n):
    rng = np.random.default_rng(n)
    fn = jax.jit(select_pallas.kth_largest_pallas)  # traced k: one compilation per n
    for kind in KINDS:
        values = np.abs(make(kind, (n,), rng))
        for k in sorted({1, 2 if n > 1 else 1, max(1, n // 5), max(1, n // 2), n}):
            got = np.float32(fn(jnp.asarray(values), jnp.int32(k)))
            assert int(got.view(np.int32)) == kth_code(values, k), (kind, n, k)
    with pytest.raises(ValueError, match="k must satisfy"):
        select_pallas.kth_largest_pallas(jnp.ones(4), 5)


SHAPES = [(1,), (2,), (7,), (3, 3, 3, 4), (1031,), (2500,), (300, 17)]


def test_kept_sets_of_many_random_trees():
    # One compilation, many draws: kinds mixed per layer, kept counts from 1 to n (traced).
    rng = np.random.default_rng(0)
    fn = jax.jit(lambda leaves, ks: select_many.topk_masks(leaves, ks, "radix_pallas"))
    for draw in range(16):
        leaves = [make(KINDS[(draw + i) % len(KINDS)], s, rng) for i, s in enumerate(SHAPES)]
        sizes = [x.size for x in leaves]
        ks = [1 if draw % 4 == 0 else n if draw % 4 == 1 else int(rng.integers(1, n + 1))
              for n in sizes]
        out = fn([jnp.asarray(x) for x in leaves], jnp.asarray(ks, jnp.int32))
        for x, k, m in zip(leaves, ks, out):
            assert m.shape == x.shape and m.dtype == jnp.bool_
            np.testing.assert_array_equal(np.asarray(m), stable_topk(x, k),
                                          err_msg=f"draw {draw} {x.shape} k={k}")


@pytest.mark.parametrize("digits,chunk,group", [((11, 10, 10), 16, 1), ((1, 10, 10, 10), 32, 3),
                                                ((12, 12, 7), 64, 2)])
def test_knobs_do_not_change_the_thresholds(digits, chunk, group):
    # Digit plan, chunk and programs per layer change only the speed.
    rng = np.random.default_rng(len(digits) + chunk)
    leaves = [make(kind, (n,), rng) for kind, n in
              [("ties", 300), ("uniform", 1), ("wide", 257), ("denormal", 64)]]
    ks = [150, 1, 200, 64]
    layout = select_blocks.BlockLayout([x.size for x in leaves], 128)

    @jax.jit  # one program per knob setting (op by op, every primitive compiles alone)
    def thresholds(xs, kvec):
        blocked = select_blocks.blocked_codes([select_blocks.abs_codes(x) for x in xs], layout)
        return select_pallas.pallas_thresholds(blocked, layout, kvec, digits, chunk, group)

    t, above = thresholds([jnp.asarray(x) for x in leaves], jnp.asarray(ks))
    for i, (x, k) in enumerate(zip(leaves, ks)):
        assert int(t[i]) == kth_code(x, k)
        codes = np.abs(x).view(np.int32)
        assert int(above[i]) == int(np.sum(codes > kth_code(x, k)))


def test_layout_block_and_bad_arguments():
    assert select_pallas.layout_block(7) == select_pallas.CHUNK
    assert select_pallas.layout_block(2048) == 2048
    assert select_pallas.layout_block(3000) == 4096
    with pytest.raises(ValueError, match="sum to 31"):
        select_pallas.check_digits((8, 8, 8))
    with pytest.raises(ValueError, match="1..12 bits"):
        select_pallas.check_digits((16, 15))
    with pytest.raises(ValueError, match="multiple of the chunk"):
        select_pallas.ProgramPlan(select_blocks.BlockLayout([100], 48), chunk=32)
    with pytest.raises(ValueError, match="at most 2"):
        select_pallas.ProgramPlan(select_blocks.BlockLayout([100], 64), chunk=64, group=2 ** 18 + 1)
    assert select_many.check_method("radix_pallas") == "radix_pallas"


def test_gpu_lowering_is_one_triton_kernel_per_digit():
    # Lowered for CUDA from this CPU machine: Pallas' Triton backend must accept every
    # operation of the kernel, and the interpreter's loops must not be in the GPU program.
    leaves = [jnp.ones((300, 17)), jnp.ones((2500,))]
    fn = jax.jit(lambda ls: select_many.topk_masks(ls, [100, 7], "radix_pallas"))
    cuda = fn.trace(leaves).lower(lowering_platforms=("cuda",)).as_text()
    assert cuda.count("__gpu$xla.gpu.triton") == len(select_pallas.DIGITS)
    assert "stablehlo.while" not in cuda
    cpu = fn.trace(leaves).lower().as_text()
    assert "triton" not in cpu and "stablehlo.while" in cpu  # interpreted here


def _steps(method: str, steps: int = 3):
    config = common.cifar10_config("conv2")
    config.update(dict(batch_size=8, eval_batch_size=8, precision="float32", mode="biprop",
                       keep_fraction=0.3, mask_impl="batched", mask_method=method))
    config = config_utils.resolve(config)
    model = train.create_model(config, 10)
    tx = optim.make_optimizer(config, 10)
    state = train.create_train_state(config, model, tx, jax.random.PRNGKey(0), (32, 32, 3))
    step_fn, eval_fn = train.make_steps(config, model, tx)
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(lambda s, b: step_fn(s, b), n=1))
    rng = np.random.default_rng(0)
    batch = dict(image=jnp.asarray(rng.standard_normal((8, 32, 32, 3)), jnp.float32),
                 label=jnp.asarray(rng.integers(0, 10, 8), jnp.int32))
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(metrics["loss"])
    return state, losses, jax.jit(eval_fn)(state, batch)


def training_is_identical(method: str):
    """Three training steps and an evaluation with ``method`` give bit for bit the params,
    BN statistics, losses and eval sums of radix_many; returns the final state."""
    ref, got = _steps("radix_many"), _steps(method)
    for a, b in zip(jax.tree.leaves((ref[0].params, ref[0].batch_stats, ref[1], ref[2])),
                    jax.tree.leaves((got[0].params, got[0].batch_stats, got[1], got[2]))):
        assert np.array_equal(np.asarray(a), np.asarray(b)), method
    return got[0]


def test_training_with_radix_pallas_is_identical_to_radix_many():
    state = training_is_identical("radix_pallas")
    assert state.mask_state == {}
