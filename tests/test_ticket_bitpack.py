"""Bit-packed XNOR-popcount inference: exact against float64 NumPy and the float path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax.models import probe
from mpt_jax.ticket import bitpack
from mpt_jax import ticket as T

# The integer counts compiled once per shape and geometry (op by op, every jnp op of the
# per-tap loop would be a compilation of its own); the same functions, so the same integers.
_dense_counts = jax.jit(bitpack.dense_counts)
_conv_counts = jax.jit(bitpack.conv_counts, static_argnums=(2, 3, 4))


def _signs(rng, shape):
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0)


def _ternary(rng, shape, keep=0.4):
    return (_signs(rng, shape) * (rng.random(shape) < keep)).astype(np.int8)


def _random_variables(name, opts, shape, seed):
    """Variables of the model drawn in NumPy (its init would be one more slow compilation):
    scores ~ U(-1, 1), random weights Kaiming-normal over the fan-in, BN statistics 0.3."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[0].key == "batch_stats":
            return np.full(leaf.shape, 0.3, np.float32)
        if path[-1].key == "weight":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        return rng.uniform(-1.0, 1.0, leaf.shape).astype(np.float32)

    abstract = probe.abstract_variables(T.build_model(name, opts), shape)
    return jax.tree_util.tree_map_with_path(draw, abstract)


def _conv_ref(x, t, stride, pad):
    """float64 NumPy NHWC x HWIO convolution with symmetric zero padding."""
    x = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw, c, o = t.shape
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, o))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, t.astype(np.float64))
    return out


def test_pack_bits_layout():
    bits = np.zeros((2, 40), bool)
    bits[0, [0, 5, 31]] = True
    bits[1, [32, 39]] = True
    words = np.asarray(bitpack.pack_bits(jnp.asarray(bits)))
    assert words.dtype == np.uint32 and words.shape == (2, 2)
    assert words[0].tolist() == [1 + 2 ** 5 + 2 ** 31, 0]
    assert words[1].tolist() == [0, 1 + 2 ** 7]


@pytest.mark.parametrize("k,n", [(70, 9), (256, 16), (1, 3)])
def test_dense_counts_exact(k, n):
    rng = np.random.default_rng(k)
    x = _signs(rng, (5, k)).astype(np.float32)
    t = _ternary(rng, (k, n))
    ref = x.astype(np.float64) @ t.astype(np.float64)
    packed = bitpack.pack_dense_kernel(t)
    counts = np.asarray(_dense_counts(jnp.asarray(x), packed))
    np.testing.assert_array_equal(counts, ref.astype(np.int64))
    alpha = np.float32(0.0123)
    out = np.asarray(bitpack.packed_dense(jnp.asarray(x), packed, alpha))
    # One float32 rounding of an exact product: identical to the float64 value rounded.
    np.testing.assert_array_equal(out, (np.float64(alpha) * ref).astype(np.float32))


@pytest.mark.parametrize("hw,c,o,ks,stride,pad", [
    (7, 5, 6, 3, 1, 1),   # padding, odd size
    (7, 5, 6, 3, 2, 1),   # stride 2 with symmetric padding (as PyTorch pads)
    (8, 33, 4, 1, 2, 0),  # 1x1 projection shortcut, K = 33 spans two words
    (9, 2, 3, 7, 2, 3),   # 7x7 stem geometry
    (6, 40, 5, 3, 1, 1),  # C >= 32: per-tap packed-channel path with padding correction
    (7, 64, 3, 3, 2, 1),  # ... with stride 2 on an odd map
    (8, 70, 4, 1, 2, 0),  # ... 1x1 stride-2 shortcut, channels spanning three words
])
def test_conv_counts_exact(hw, c, o, ks, stride, pad):
    rng = np.random.default_rng(hw * c + ks)
    x = _signs(rng, (2, hw, hw, c)).astype(np.float32)
    t = _ternary(rng, (ks, ks, c, o))
    ref = _conv_ref(x, t, stride, pad)
    packed = bitpack.pack_conv_kernel(t)
    counts = np.asarray(_conv_counts(jnp.asarray(x), packed, (ks, ks), (stride, stride), pad))
    np.testing.assert_array_equal(counts, ref.astype(np.int64))
    alpha = np.float32(0.731)
    out = np.asarray(bitpack.packed_conv(jnp.asarray(x), packed, alpha, kernel_size=(ks, ks),
                                         strides=(stride, stride), padding=pad))
    np.testing.assert_array_equal(out, (np.float64(alpha) * ref).astype(np.float32))


@pytest.mark.parametrize("name,opts,shape", [
    ("mlp_binact", dict(hidden=(40, 24)), (8, 8, 1)),
    ("conv2_binact", dict(width_mult=0.5), (8, 8, 3)),  # 32 channels: per-tap conv path
])
def test_binact_ticket_packed_path_is_exact(name, opts, shape):
    opts = dict(opts, keep_fraction=0.35, num_classes=10)
    variables = _random_variables(name, opts, shape, seed=5)
    ticket = T.make_ticket(name, opts, variables, shape, mode="signs")
    images = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    counts = bitpack.binary_layer_counts(ticket, images)
    # Every layer but the first (image input) is binary in these MPT-1/1 models.
    assert sorted(counts) == sorted(lt.name for lt in ticket.layers[1:])
    for name_, (packed, floated) in counts.items():
        np.testing.assert_array_equal(np.asarray(packed), np.asarray(floated).astype(np.int64))
    packed_logits = bitpack.packed_apply_fn(ticket, "packed")(images)
    float_logits = bitpack.packed_apply_fn(ticket, "float")(images)
    np.testing.assert_array_equal(np.asarray(packed_logits), np.asarray(float_logits))
    # And close to the ticket's ordinary float32 forward (which rounds inside the conv sums).
    np.testing.assert_allclose(np.asarray(packed_logits), np.asarray(T.predict_fn(ticket)(images)),
                               rtol=1e-4, atol=1e-4)
    sizes = bitpack.packed_weight_bytes(ticket)
    assert sizes["packed_bytes"] < sizes["float32_bytes"] / 8


def test_is_binary_accepts_only_plus_minus_one():
    assert bitpack.is_binary(jnp.array([[1.0, -1.0], [-1.0, -1.0]]))
    assert not bitpack.is_binary(jnp.array([1.0, 0.0, -1.0]))  # padding / sign(0) = 0
    assert not bitpack.is_binary(jnp.array([1.0, -0.5]))
