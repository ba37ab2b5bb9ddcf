"""Test-only: one process of a jax.distributed run (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID in the environment) that reads a prepared imagenet2012 through
``mpt_jax.data.imagenet.ImageNetDataset`` and writes, as JSON, the ids of the examples this
host read: epochs 0 and 1, epoch 0 resumed at step 2, and the evaluation.

    python tests/multihost_input_worker.py <tfds data dir> <output .json>

Every image of the test dataset is one uniform colour that encodes its id (see
tests/test_data_multihost.py); crops, flips and resizes keep it uniform.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's mpt_jax

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from mpt_jax import parallel  # noqa: E402
from mpt_jax.data import imagenet  # noqa: E402

MEAN, STD = np.array(imagenet.INFO.mean), np.array(imagenet.INFO.std)


def example_id(image):
    """The id an image's colour encodes: R = 10 * (id % 20) + 5, G = 10 * (id // 20) + 5."""
    rgb = (np.asarray(image, np.float64).reshape(-1, 3).mean(0) * STD + MEAN) * 255.0
    return int(round((rgb[0] - 5) / 10)) + 20 * int(round((rgb[1] - 5) / 10))


def local_rows(array):
    """This host's rows of a batch sharded over the "data" axis, in global order."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])


def ids(batches, masked=False):
    out = []
    for batch in batches:
        images = local_rows(batch["image"])
        keep = local_rows(batch["mask"]) > 0 if masked else np.ones(len(images), bool)
        out += [example_id(im) for im, k in zip(images, keep) if k]
    return out


def main(data_dir, out_path):
    parallel.maybe_initialize_distributed()
    import jax  # noqa: PLC0415  (after jax.distributed started)
    mesh = parallel.make_mesh()
    config = ml_collections.ConfigDict(dict(dataset="imagenet2012", data_dir=data_dir,
                                            batch_size=8, eval_batch_size=8, seed=0,
                                            augment=True))
    ds = imagenet.ImageNetDataset(config, mesh)
    record = dict(process=jax.process_index(), processes=jax.process_count(),
                  steps_per_epoch=ds.steps_per_epoch,
                  epoch0=ids(ds.train_batches(0)), epoch1=ids(ds.train_batches(1)),
                  epoch0_from_step2=ids(ds.train_batches(0, start_step=2)),
                  eval=ids(ds.eval_batches(), masked=True))
    with open(out_path, "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
