"""mpt_jax.models.probe: prunable layers in call order, and the layer interceptor."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax import layers
from mpt_jax.models import get_model, probe


class _Unsorted(nn.Module):
    """Layers called in an order that neither their names nor their creation order give."""

    @nn.compact
    def __call__(self, x, train=False):
        x = x.reshape(x.shape[0], -1)
        late = layers.BipropDense(features=4, name="a2")  # created first, called second
        x = layers.BipropDense(features=6, name="b")(x)
        x = nn.BatchNorm(use_running_average=not train, name="norm_z")(x)
        x = late(x)
        x = nn.BatchNorm(use_running_average=not train, name="norm_a")(x)
        return layers.BipropDense(features=3, name="a10")(x)


def test_prunable_layers_in_call_order():
    model = _Unsorted()
    assert probe.prunable_layers(model, (2, 2, 1)) == [("b",), ("a2",), ("a10",)]
    assert probe.prunable_layers(model, (2, 2, 1), kinds=(nn.BatchNorm,)) == [
        ("norm_z",), ("norm_a",)]
    # The zoo: conv2's layers as the model calls them (a params tree sorts its keys).
    conv2 = get_model("conv2", width_mult=0.125, num_classes=10)
    assert probe.prunable_layers(conv2, (8, 8, 3)) == [
        ("conv1",), ("conv2",), ("fc1",), ("fc2",), ("classifier",)]


def test_abstract_variables_compute_nothing():
    shapes = probe.abstract_variables(_Unsorted(), (2, 2, 1))
    leaf = shapes["params"]["b"]["scores"]
    assert isinstance(leaf, jax.ShapeDtypeStruct) and leaf.shape == (4, 6)
    assert shapes["frozen"]["a10"]["weight"].shape == (4, 3)


def test_intercept_layers_records_and_replaces():
    # Every apply is jitted with the interceptor inside the traced function, as the package
    # uses it (mpt_jax/ticket): the layers are intercepted while tracing, and each program
    # compiles once instead of once per eager op.
    model = _Unsorted()
    x = jax.random.normal(jax.random.key(1), (2, 2, 2, 1))
    variables = jax.jit(model.init)({"params": jax.random.key(0)}, x)
    plain = jax.jit(model.apply)(variables, x)
    assert not np.array_equal(np.asarray(plain[0]), np.asarray(plain[1]))
    seen = []

    def zero_b(module, call, args, kwargs):
        seen.append((module.name, args[0].shape, probe.is_prunable(module)))
        out = call(*args, **kwargs)
        return jnp.zeros_like(out) if module.name == "b" else out

    @jax.jit
    def intercepted(v, x_):
        with probe.intercept_layers(zero_b):
            return model.apply(v, x_)

    out = intercepted(variables, x)
    assert seen == [("b", (2, 4), True), ("a2", (2, 6), True), ("a10", (2, 4), True)]
    # "b" outputs zeros, so everything after it sees the same input for both examples.
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(out[1]))
    # A fresh trace after the block: the interceptor is gone.
    after = jax.jit(lambda v, x_: model.apply(v, x_))(variables, x)
    np.testing.assert_array_equal(np.asarray(after), np.asarray(plain))
    assert len(seen) == 3
    kernels = []

    @jax.jit
    def record_kernels(v, x_):
        with probe.intercept_layers(lambda m, call, a, k: kernels.append(m.name) or call(*a, **k),
                                    method="effective_kernel"):
            return model.apply(v, x_)

    record_kernels(variables, x)
    assert kernels == ["b", "a2", "a10"]
