"""Packed (XNOR-popcount) vs float32 inference: throughput and weight memory.

    python benchmarks/bitpack_inference.py [--device=cpu|gpu] [--batch=64] [--repeats=10]

Three rows: one dense layer (Conv-4's FC 8192 -> 256), one 3x3 conv (128 -> 128 on a 16x16
map) and a whole MPT-1/1 ticket (conv4_binact, keep 0.5, random scores: the binary layers
packed, the image layer in float). Both paths are jit-compiled JAX; the float path is the
ordinary float32 dot / convolution with the ternary kernel alpha * sign(W) * M (what the
training-time model runs). Memory = bytes of the layer weights as held for inference
(packed: sign + mask uint32 words + alpha; float: float32 kernel). Numbers are whatever
this machine gives: XLA has no native popcount GEMM, so the packed path is a reference
implementation whose memory saving is real and whose speed is not expected to win.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu", "tpu"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--model", default="conv4_binact")
    p.add_argument("--keep_fraction", type=float, default=0.5)
    return p.parse_args()


def _time(fn, *args, repeats):
    import jax

    jax.block_until_ready(fn(*args))  # compile + warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    args = _args()
    os.environ["JAX_PLATFORMS"] = {"gpu": "cuda", "cpu": "cpu", "tpu": "tpu"}[args.device]
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import jax
    import jax.numpy as jnp
    import numpy as np

    from mpt_jax.ticket import bitpack
    from mpt_jax import ticket as T

    rng = np.random.default_rng(0)
    b = args.batch
    rows = []

    def ternary(shape):
        return (np.where(rng.random(shape) < 0.5, -1, 1) * (rng.random(shape) < args.keep_fraction)
                ).astype(np.int8)

    def signs(shape):
        return jnp.asarray(np.where(rng.random(shape) < 0.5, -1.0, 1.0), jnp.float32)

    alpha = np.float32(0.05)

    # Dense layer
    t = ternary((8192, 256))
    x = signs((b, 8192))
    kernel = jnp.asarray(alpha * t, jnp.float32)
    packed = bitpack.pack_dense_kernel(t)
    f_float = jax.jit(lambda x, k: x @ k)
    tf = _time(f_float, x, kernel, repeats=args.repeats)
    tp = _time(bitpack.packed_dense, x, packed, alpha, repeats=args.repeats)
    pbytes = int(packed["signs"].nbytes + packed["mask"].nbytes + 4)
    rows.append(("dense 8192->256", b / tf, b / tp, kernel.nbytes, pbytes))

    # Conv layer
    t = ternary((3, 3, 128, 128))
    x = signs((b, 16, 16, 128))
    kernel = jnp.asarray(alpha * t, jnp.float32)
    packed = bitpack.pack_conv_kernel(t)
    f_float = jax.jit(lambda x, k: jax.lax.conv_general_dilated(
        x, k, (1, 1), [(1, 1), (1, 1)], dimension_numbers=("NHWC", "HWIO", "NHWC")))
    f_packed = jax.jit(lambda x, p: bitpack.packed_conv(x, p, alpha, kernel_size=(3, 3)))
    tf = _time(f_float, x, kernel, repeats=args.repeats)
    tp = _time(f_packed, x, packed, repeats=args.repeats)
    pbytes = int(packed["signs"].nbytes + packed["mask"].nbytes + 4)
    rows.append(("conv3x3 128->128 @16x16", b / tf, b / tp, kernel.nbytes, pbytes))

    # Whole ticket
    name, shape = args.model, (32, 32, 3)
    opts = dict(keep_fraction=args.keep_fraction, num_classes=10)
    variables = dict(T.init_variables(name, opts, shape, T.run_init_key(0)))
    # Trained-like BN statistics: with the init's mean 0 an integer count of exactly 0 maps to
    # exactly 0 before the sign, where the float path's rounding (not the ticket) decides.
    variables["batch_stats"] = jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.asarray(rng.uniform(0.5, 2.0, a.shape) if p[-1].key == "var"
                                 else rng.uniform(-0.5, 0.5, a.shape), jnp.float32),
        variables["batch_stats"])
    ticket = T.make_ticket(name, opts, variables, shape, mode="signs")
    images = jax.random.normal(jax.random.key(1), (b, *shape))
    f_float = T.predict_fn(ticket)
    f_packed = bitpack.packed_apply_fn(ticket, "packed")
    tf = _time(f_float, images, repeats=args.repeats)
    tp = _time(f_packed, images, repeats=args.repeats)
    sizes = bitpack.packed_weight_bytes(ticket)
    rows.append((f"{name} (binary layers)", b / tf, b / tp, sizes["float32_bytes"],
                 sizes["packed_bytes"]))
    lp, lf = f_packed(images), f_float(images)
    agree = float(jnp.mean(jnp.argmax(lf, -1) == jnp.argmax(lp, -1)))
    # Logits of a binary-input classifier are integers times alpha: exact ties for the top-1
    # are broken by the float path's rounding noise, by the lowest index in the packed path.
    tied = float(jnp.mean(jnp.sum(lp == jnp.max(lp, -1, keepdims=True), -1) > 1))

    dev = jax.devices()[0]
    print(f"device: {dev.platform} ({dev.device_kind}), batch {b}, keep_fraction "
          f"{args.keep_fraction}, best of {args.repeats}")
    head = ("workload", "float32 img/s", "packed img/s", "packed/float", "float32 weights",
            "packed weights", "memory ratio")
    print(" | ".join(head))
    for name_, f, p, fb, pb in rows:
        print(" | ".join((name_, f"{f:,.0f}", f"{p:,.0f}", f"{p / f:.2f}x", f"{fb:,} B",
                          f"{pb:,} B", f"{fb / pb:.1f}x")))
    print(f"{args.model}: packed and float top-1 agree on {100 * agree:.1f}% of the batch; "
          f"{100 * tied:.1f}% of the packed logit rows have a tied maximum")
    return 0


if __name__ == "__main__":
    sys.exit(main())
