"""Test setup: 8 simulated CPU devices for the sharding tests (set before JAX starts), and a
throw-away $XDG_CACHE_HOME for the session and its subprocesses, so that the runs of
``python -m mpt_jax.main`` under test cache their data and compiled steps there, never in
the user's ~/.cache/mpt_jax."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
_cache_home = tempfile.mkdtemp(prefix="mpt_jax_tests_cache_")
os.environ["XDG_CACHE_HOME"] = _cache_home
atexit.register(shutil.rmtree, _cache_home, ignore_errors=True)
# Compiled programs are kept on disk however short their compilation: the tests compile the
# same small programs again and again (each train_and_evaluate call, each run of
# ``python -m mpt_jax.main`` builds new jitted functions), and a cache hit loads in
# milliseconds. The runs started as subprocesses cache in their cache_dir (under the
# throw-away $XDG_CACHE_HOME above); this process in a cache of its own.
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


import jax  # noqa: E402  (after the XLA flags above)
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.path.join(_cache_home, "xla_in_process"))


@pytest.fixture
def x64():
    """float64 for the NumPy-reference comparisons, restored afterwards."""
    import jax  # noqa: PLC0415

    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    """A persistent XLA cache for the module that asks for it: its runs compile the same
    small steps again and again (each train_and_evaluate call builds new jitted functions)."""
    import jax  # noqa: PLC0415

    cache = str(tmp_path_factory.mktemp("xla_cache"))
    old = (jax.config.jax_compilation_cache_dir,
           jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield cache
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


@pytest.fixture(scope="module")
def mesh8():
    """A 1-D "data" mesh over the 8 simulated CPU devices (the data pipeline tests)."""
    import jax  # noqa: PLC0415

    assert jax.device_count() == 8, "the XLA flag above should provide 8 CPU devices"
    return jax.make_mesh((8,), ("data",))


@pytest.fixture
def run_into_closed_pipe():
    """Runs ``python <args>`` with stdout a pipe whose reader is already gone (``... | head``
    after head exited), so every write fails with EPIPE, deterministically. Returns the
    CompletedProcess (stderr as text)."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def run(*args):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            return subprocess.run([sys.executable, *args], cwd=root, stdout=write_end,
                                  stderr=subprocess.PIPE, text=True, timeout=120)
        finally:
            os.close(write_end)

    return run


# What makes a test slow, as its marker says; each of them puts the test in the slow tier
# (``-m "not slow"`` leaves it out; CI runs every tier).
SLOW_KINDS = {
    "multiprocess": "starts other processes: runs of python -m mpt_jax.main, real signals, "
                    "several JAX processes",
    "end_to_end": "a whole run in this process, a script or a notebook, from its input to its "
                  "result files",
    "compile_cache": "the persistent XLA compilation cache across runs",
    "full_size": "a model or data set at the paper's full size",
}


def pytest_configure(config):
    for kind, what in SLOW_KINDS.items():
        config.addinivalue_line("markers", f"{kind}: {what} (slow tier)")


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection reads the markers
def pytest_collection_modifyitems(items):
    """Marks every test of a slow kind ``slow``, and puts the slow tests first: with one
    worker per core (pytest-xdist) the long ones start at once and the many short ones fill
    the gaps around them, instead of a long test that began last ending the run alone."""
    for item in items:
        if any(item.get_closest_marker(kind) for kind in SLOW_KINDS):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
