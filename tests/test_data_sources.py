"""mpt_jax.data.sources' tensorflow-datasets preparation without TensorFlow: a prepared copy
is used as it is, and a missing one is downloaded only after its download host answered
(probed with a bounded timeout), so an offline machine fails in seconds."""
import socket
import threading
import time

import pytest

from mpt_jax.data import registry, sources
from mpt_jax.errors import DataNotFoundError


class FakeBuilder:
    """The part of a tfds builder that sources.prepare_tfds uses."""

    data_dir = "/nowhere/mnist/3.0.1"

    def __init__(self, prepared):
        self.prepared, self.downloads = prepared, 0

    def is_prepared(self):
        return self.prepared

    def download_and_prepare(self):
        self.downloads += 1


def test_prepare_tfds_downloads_only_what_is_missing_and_only_online(monkeypatch):
    probes = []
    mnist = registry.get("mnist")
    monkeypatch.setattr(sources, "can_reach", lambda host: probes.append(host) or False)
    prepared = FakeBuilder(prepared=True)
    sources.prepare_tfds(prepared, mnist)  # on disk: no probe, no download
    assert (probes, prepared.downloads) == ([], 0)
    missing = FakeBuilder(prepared=False)
    with pytest.raises(DataNotFoundError, match=r"^mnist: .* no prepared copy in "
                       r"/nowhere/mnist/3.0.1 .*cannot connect to storage.googleapis.com"):
        sources.prepare_tfds(missing, mnist)
    assert (probes, missing.downloads) == (["storage.googleapis.com"], 0)
    monkeypatch.setattr(sources, "can_reach", lambda host: True)
    sources.prepare_tfds(missing, mnist)
    assert missing.downloads == 1


def test_can_reach_is_bounded_by_its_timeout(monkeypatch):
    """A name lookup that hangs (no reachable name server) ignores socket timeouts; the
    probe still answers within its own."""
    released = threading.Event()

    def hangs(*args, **kwargs):  # until the test is over, then fails as a lookup would
        released.wait(30)
        raise socket.gaierror("name lookup gave up")

    monkeypatch.setattr(socket, "create_connection", hangs)
    start = time.monotonic()
    try:
        assert sources.can_reach("example.invalid", timeout=0.5) is False
        assert time.monotonic() - start < 5
    finally:
        released.set()  # the probe's thread ends here, not in some later test
