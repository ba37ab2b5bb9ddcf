"""ImageNet's per-host input for real in 2 processes (``jax.distributed`` on localhost, 2 CPU
devices each): a small imagenet2012 is prepared by tensorflow-datasets' own builder from
fake manual-download tars, then each process reads it through ``ImageNetDataset``. Every
image is one colour that encodes its id, so the test knows which examples each host read:
the hosts' shards are disjoint, together they hold every training example once per epoch
(and every validation example once in the evaluation), a resumed epoch continues each
host's own order, and the next epoch reads the same examples in another order."""
import io
import json
import os
import socket
import subprocess
import sys
import tarfile

import numpy as np
import pytest

tfds = pytest.importorskip(
    "tensorflow_datasets", reason="tensorflow-datasets is not installed; pip install -e "
    "'.[test,tf]' to run the multi-host ImageNet input test")
pytest.importorskip("tensorflow", reason="TensorFlow is not installed; pip install -e "
                    "'.[test,tf]' to run the multi-host ImageNet input test")

from PIL import Image  # noqa: E402

from mpt_jax.data import imagenet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multihost_input_worker.py")
SYNSETS = ("n01440764", "n01443537")  # the first two ImageNet classes
PER_CLASS, NUM_VAL = 16, 6


def colour(example_id):
    return (10 * (example_id % 20) + 5, 10 * (example_id // 20) + 5, 128)


def jpeg(example_id):
    out = io.BytesIO()
    Image.new("RGB", (48, 40), colour(example_id)).save(out, format="JPEG", quality=95)
    return out.getvalue()


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def fake_manual_download(directory):
    """ILSVRC2012_img_train.tar (one tar per synset) and ILSVRC2012_img_val.tar; ids
    0..31 are training images, 32..37 validation images."""
    with tarfile.open(os.path.join(directory, "ILSVRC2012_img_train.tar"), "w") as train:
        for c, synset in enumerate(SYNSETS):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(PER_CLASS):
                    add(tar, f"{synset}_{i}.JPEG", jpeg(c * PER_CLASS + i))
            add(train, f"{synset}.tar", inner.getvalue())
    with tarfile.open(os.path.join(directory, "ILSVRC2012_img_val.tar"), "w") as val:
        for i in range(NUM_VAL):
            add(val, f"ILSVRC2012_val_{i + 1:08d}.JPEG", jpeg(len(SYNSETS) * PER_CLASS + i))


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_two_hosts_read_disjoint_shards_that_cover_every_example(tmp_path):
    data_dir = str(tmp_path / "tfds")
    os.makedirs(data_dir)
    fake_manual_download(data_dir)
    tf, _ = imagenet.import_tf()
    builder = imagenet.prepare_builder(tfds, data_dir)  # tfds' own imagenet2012 builder
    assert builder.info.splits["train"].num_examples == len(SYNSETS) * PER_CLASS
    port = free_port()
    procs = []
    for pid in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen(
            [sys.executable, WORKER, data_dir, str(tmp_path / f"host{pid}.json")], cwd=ROOT,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    hosts = [json.load(open(tmp_path / f"host{pid}.json")) for pid in range(2)]
    assert [h["process"] for h in hosts] == [0, 1] and hosts[0]["processes"] == 2
    num_train = len(SYNSETS) * PER_CLASS
    assert hosts[0]["steps_per_epoch"] == num_train // 8
    for epoch in ("epoch0", "epoch1"):
        a, b = hosts[0][epoch], hosts[1][epoch]
        assert len(a) == len(b) == num_train // 2  # 4 local examples per step, 4 steps
        assert not set(a) & set(b)  # disjoint shards
        assert sorted(a + b) == list(range(num_train))  # every example once per epoch
    for h in hosts:
        assert sorted(h["epoch0"]) == sorted(h["epoch1"])  # each host keeps its shard
        assert h["epoch0"] != h["epoch1"]  # in another order
        # A resume at step 2 reads what the epoch's steps 2 and 3 read (4 per step and host).
        assert h["epoch0_from_step2"] == h["epoch0"][8:]
    val = list(range(num_train, num_train + NUM_VAL))
    assert not set(hosts[0]["eval"]) & set(hosts[1]["eval"])
    assert sorted(hosts[0]["eval"] + hosts[1]["eval"]) == val
