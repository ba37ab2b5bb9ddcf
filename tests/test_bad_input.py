"""Bad input: every user error through ``python -m mpt_jax.main`` (real subprocesses)
gives one ``error:`` line on stderr that names the bad value / file, a non-zero exit status and
no traceback, before any training. The subprocesses of all cases run concurrently (module
fixture); each test checks one case."""
import concurrent.futures
import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.multiprocess  # real runs of python -m mpt_jax.main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 150


def _png(path, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def _png_bytes(size=8):
    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def make_data(root):
    """Bad data sets; returns {case: (data_dir, the file the error must name)}."""
    out = {}
    empty = os.path.join(root, "empty_class")
    _png(os.path.join(empty, "train", "cat", "0.png"))
    os.makedirs(os.path.join(empty, "train", "dog"))
    out["empty_class"] = (empty, "train/dog/")
    corrupt = os.path.join(root, "corrupt")
    _png(os.path.join(corrupt, "train", "cat", "0.png"))
    bad = os.path.join(corrupt, "train", "cat", "1.png")
    with open(bad, "wb") as f:
        f.write(b"this is not an image")
    out["corrupt"] = (corrupt, bad)
    truncated = os.path.join(root, "truncated")
    _png(os.path.join(truncated, "train", "cat", "0.png"))
    cut = os.path.join(truncated, "train", "cat", "1.png")
    with open(cut, "wb") as f:
        data = _png_bytes(32)
        f.write(data[:len(data) // 2])  # a PNG cut in the middle of its pixel data
    out["truncated"] = (truncated, cut)
    archive = os.path.join(root, "flat.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:  # images, but not <split>/<class>/<file>
        data = _png_bytes()
        info = tarfile.TarInfo("images/0.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    out["not_image_folder"] = (archive, archive)
    out["missing"] = (os.path.join(root, "no_such.tar.gz"), os.path.join(root, "no_such.tar.gz"))
    return out


CONFIG_CASES = {
    # case: (extra arguments, substrings the error line must contain)
    "model": (["--config.model=resnet1000"], ["unknown model 'resnet1000'", "mlp", "conv2"]),
    "dataset": (["--config.dataset=imagenet21k"], ["unknown dataset 'imagenet21k'", "digits",
                                                   "cifar10"]),
    "optimizer": (["--config.optimizer=rmsprop"], ["unknown optimizer 'rmsprop'", "sgd, adam"]),
    "keep_zero": (["--config.keep_fraction=0.0"], ["keep_fraction must be in (0, 1]", "0.0"]),
    "keep_big": (["--config.keep_fraction=1.5"], ["keep_fraction must be in (0, 1]", "1.5"]),
    "epochs_zero": (["--config.num_epochs=0"], ["num_epochs must be an integer > 0", "got 0"]),
    "epochs_neg": (["--config.num_epochs=-3"], ["num_epochs must be an integer > 0", "got -3"]),
    "batch_zero": (["--config.batch_size=0"], ["batch_size must be an integer > 0", "got 0"]),
    "batch_neg": (["--config.batch_size=-64"], ["batch_size must be an integer > 0"]),
    "batch_devices": (["--config.batch_size=12"], ["batch_size=12 is not divisible by the 8 "
                                                   "devices", "multiple of 8"]),
    "warmup": (["--config.warmup_epochs=5", "--config.num_epochs=2"],
               ["warmup_epochs=5 must be smaller than num_epochs=2"]),
    "unknown_key": (["--config.learning_rat=0.1"], [
        "unknown config field 'learning_rat'; did you mean 'learning_rate'? (python -m "
        "mpt_jax.main --config=configs/smoke.py --help lists the fields)"]),
    "bad_type": (["--config.num_epochs=many"], ["many"]),
}
DATA_CASES = ("empty_class", "corrupt", "truncated", "not_image_folder", "missing")
DATA_MESSAGES = {"empty_class": "contains no images", "corrupt": "corrupt or truncated image",
                 "truncated": "corrupt or truncated image",
                 "not_image_folder": "no images found under train/<class>/",
                 "missing": "no such archive or directory"}


def _run(args, workdir):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    assert "--xla_force_host_platform_device_count=8" in env["XLA_FLAGS"]  # conftest
    proc = subprocess.run([sys.executable, "-m", "mpt_jax.main", "--config=configs/smoke.py",
                           f"--workdir={workdir}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bad"))
    data = make_data(os.path.join(root, "data"))
    jobs = {name: args for name, (args, _) in CONFIG_CASES.items()}
    for name in DATA_CASES:
        jobs[f"data_{name}"] = ["--config.dataset=image_folder",
                                f"--config.data_dir={data[name][0]}", "--config.cache_dir=",
                                "--config.holdout_per_class=1"]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = {name: pool.submit(_run, args, os.path.join(root, "work", name))
                   for name, args in jobs.items()}
        out = {name: f.result() for name, f in futures.items()}
    return out, data, root


def check_one_line(rc, out, err):
    assert rc == 2, (rc, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "epoch 1" not in out  # failed before training
    return errors[0]


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_is_one_line(results, case):
    line = check_one_line(*results[0][case])
    for part in CONFIG_CASES[case][1]:
        assert part in line, line


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_names_the_file(results, case):
    out, data, _ = results
    line = check_one_line(*out[f"data_{case}"])
    assert data[case][1] in line, line
    assert DATA_MESSAGES[case] in line, line


def test_bad_config_fails_before_the_workdir_is_created(results):
    _, _, root = results
    for case in CONFIG_CASES:
        assert not os.path.exists(os.path.join(root, "work", case, "checkpoints")), case
