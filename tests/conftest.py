"""Test setup: 8 simulated CPU devices for the sharding tests (set before JAX starts)."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()


import pytest  # noqa: E402  (after the XLA flags above)


@pytest.fixture
def x64():
    """float64 for the NumPy-reference comparisons, restored afterwards."""
    import jax  # noqa: PLC0415

    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


@pytest.fixture(scope="module")
def mesh8():
    """A 1-D "data" mesh over the 8 simulated CPU devices (the data pipeline tests)."""
    import jax  # noqa: PLC0415

    assert jax.device_count() == 8, "the XLA flag above should provide 8 CPU devices"
    return jax.make_mesh((8,), ("data",))
