"""Host cost of the ImageNet input path: images per second per host core, and the cores a
measured WRN-50-2 step rate needs.

    python benchmarks/input_pipeline.py [--images 256] [--batch 128] [--batches 12] [--threads 1,0]

What is timed: mpt_jax's ImageNet training preprocessing (``mpt_jax.data.imagenet.train_image``:
JPEG decode of a random-resized-crop window with libjpeg's accurate IDCT, bilinear
antialiased resize to 224x224, horizontal flip) in tf.data, batched, over synthetic
ImageNet-sized JPEGs made with PIL (sizes 300-500 px a side like ImageNet's ~400x350
average, smooth content with noise, quality 90: ~40-110 KB each) held in memory, so file
reads and TFRecord parsing are not in the figure. For each ``--threads`` value (0 = every
core) tf.data runs the map on a private pool of that many threads; the table gives wall
images/s and images per CPU-second of this process (CPU time over the timed batches, which
stays right on a machine shared with other work). The last columns divide the measured
WRN-50-2 training step rates of RESULTS.md by the images per core-second: the host cores
that step needs to never wait for its input.

Rows are appended to benchmarks/results/input_pipeline.jsonl (``--results``). Needs
TensorFlow (``pip install -e ".[tf]"``).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import results_log  # noqa: E402  (benchmarks/, this script's directory)
from mpt_jax.data import imagenet  # noqa: E402

# WRN-50-2 biprop training steps measured in RESULTS.md (batch 256, bf16, images/s).
STEP_RATES = {"H100": 3832.0, "H200": 4374.0}


def make_jpegs(folder: str, count: int, seed: int = 0) -> list[str]:
    """``count`` ImageNet-sized JPEGs in ``folder``: smooth colour fields with noise."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        h, w = (int(v) for v in rng.integers(300, 501, size=2))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi, size=3)
        freq = rng.uniform(0.005, 0.05, size=(3, 2))
        channels = [127 + 100 * np.sin(freq[c, 0] * yy + freq[c, 1] * xx + phase[c])
                    for c in range(3)]
        image = np.stack(channels, -1) + rng.normal(0, 12, size=(h, w, 3))
        path = os.path.join(folder, f"{i:05d}.jpg")
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def dataset(tf, encoded: list[bytes], batch: int, threads: int):
    """The training map of mpt_jax's ImageNet pipeline over ``encoded``, repeated, batched,
    on a private pool of ``threads`` threads."""
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(encoded)).repeat().enumerate()

    def preprocess(index, image_bytes):
        seed = tf.stack([tf.constant(0, tf.int64), index])
        return imagenet.train_image(tf, image_bytes, seed)

    ds = ds.map(preprocess, num_parallel_calls=threads, deterministic=True)
    ds = ds.batch(batch, drop_remainder=True).prefetch(2)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def measure(tf, encoded, batch: int, batches: int, threads: int, warmup: int = 2) -> dict:
    """Wall images/s and images per CPU-second over ``batches`` batches after ``warmup``."""
    iterator = iter(dataset(tf, encoded, batch, threads))
    for _ in range(warmup):
        next(iterator).numpy()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        out = next(iterator).numpy()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert out.shape == (batch, 224, 224, 3) and out.dtype == np.uint8
    images = batch * batches
    per_core = images / cpu
    return dict(threads=threads, batch=batch, batches=batches, images=images,
                wall_s=round(wall, 3), cpu_s=round(cpu, 3),
                images_per_s=round(images / wall, 1),
                images_per_core_s=round(per_core, 1),
                cores_for_step={card: round(rate / per_core, 1)
                                for card, rate in STEP_RATES.items()})


HEADER = ("| threads | images/s (wall) | images per core-second | "
          + " | ".join(f"cores for WRN-50-2 on the {card} ({rate:,.0f} images/s)"
                       for card, rate in STEP_RATES.items()) + " |")


def table_cells(row: dict) -> list[str]:
    """One table row's cells (the test rebuilds RESULTS.md's table from the raw rows)."""
    return [f"{row['threads']} of {row['cores']}", f"{row['images_per_s']:,.1f}",
            f"{row['images_per_core_s']:,.1f}",
            *(f"{row['cores_for_step'][card]:.1f}" for card in STEP_RATES)]


def markdown_table(rows: list[dict]) -> str:
    lines = [HEADER, "|" + "---|" * (3 + len(STEP_RATES))]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=256, help="synthetic JPEGs to make")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=12, help="timed batches per row")
    ap.add_argument("--threads", default="1,0", help="comma list; 0 = every core")
    ap.add_argument("--results", default=results_log.default_path("input_pipeline"),
                    help="append the rows, with date, hardware and versions, here ('' = no)")
    args = ap.parse_args(argv)
    tf, _ = imagenet.import_tf()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="input_pipeline_") as folder:
        paths = make_jpegs(folder, args.images)
        encoded = [read_bytes(p) for p in paths]
    kib = np.mean([len(e) for e in encoded]) / 1024
    print(f"# {len(encoded)} synthetic JPEGs, {kib:.0f} KiB on average; {cores} host cores; "
          f"TensorFlow {tf.__version__}", flush=True)
    rows = []
    for threads in (int(t) for t in args.threads.split(",") if t.strip()):
        row = measure(tf, encoded, args.batch, args.batches, threads or cores)
        row.update(cores=cores, jpeg_kib=round(float(kib), 1), synthetic_jpegs=len(encoded),
                   step_rates=STEP_RATES)
        rows.append(row)
        results_log.append(args.results, dict(row, **results_log.stamp(
            tensorflow=tf.__version__)))
        print(row, flush=True)
    print(markdown_table(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
