"""A tensorflow-datasets dataset that is not on disk, on a machine without network: a
one-line error with the fix within seconds, where tensorflow-datasets' own download retried
for ~200 s before failing. The network is made unreachable (every connection fails), so
nothing here leaves the machine."""
import socket
import time

import ml_collections
import pytest

tfds = pytest.importorskip(
    "tensorflow_datasets", reason="tensorflow-datasets is not installed; pip install -e "
    "'.[test,tf]' to run the tfds tests")

from mpt_jax import data  # noqa: E402
from mpt_jax.errors import DataNotFoundError  # noqa: E402


def config(dataset, data_dir):
    return ml_collections.ConfigDict(dict(
        dataset=dataset, data_dir=data_dir, input_pipeline="tfds", holdout_per_class=500,
        cache_dir="", augment=True, batch_size=16, eval_batch_size=16, seed=0))


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_without_network_a_missing_dataset_fails_in_seconds(tmp_path, mesh8, monkeypatch,
                                                              dataset):
    """No prepared copy in the data dir and no network: a one-line error with the fix within
    10 s."""
    def unreachable(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    def retries_for_minutes(self, *args, **kwargs):
        time.sleep(60)  # what tfds' download does offline (measured: ~200 s)
        raise AssertionError("download_and_prepare ran although the network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(socket.socket, "connect", unreachable)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", retries_for_minutes)
    start = time.monotonic()
    with pytest.raises(DataNotFoundError) as err:
        data.get_dataset(config(dataset, str(tmp_path)), mesh8)
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{dataset}: tensorflow-datasets found no prepared "
                                              f"copy in {tmp_path}")
    assert "no network?" in msg and "--config.data_dir" in msg
