"""mpt_jax.checkpoint.Checkpointer.restore: a checkpoint whose arrays do not fit the model
(another structure, or the same names with other shapes) is refused with one line that says
what differs and how to start over; a fitting one comes back with the template's dtypes."""
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax import checkpoint
from mpt_jax.errors import CheckpointError, CheckpointWriteError

META = dict(epoch=1, step_in_epoch=0, global_step=7)


def saved(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path))
    ckpt.save({"scores": np.arange(3, dtype=np.float32), "step": np.int32(7)}, META)
    return ckpt


def test_restore_of_a_fitting_checkpoint(tmp_path):
    template = {"scores": jnp.zeros(3, jnp.float32), "step": jnp.int32(0)}
    state, meta = saved(tmp_path).restore(template)
    np.testing.assert_array_equal(np.asarray(state["scores"]), [0.0, 1.0, 2.0])
    assert int(state["step"]) == 7 and state["scores"].dtype == jnp.float32
    assert meta["global_step"] == 7


def test_restore_refuses_other_shapes(tmp_path):
    template = {"scores": jnp.zeros(4, jnp.float32), "step": jnp.int32(0)}
    with pytest.raises(CheckpointError, match=r"does not match this model \(e\.g\. "
                       r"\['scores'\]: saved \(3,\) vs model \(4,\)\); use "
                       r"--config.restart=True or a new --workdir"):
        saved(tmp_path).restore(template)


def test_restore_refuses_another_structure(tmp_path):
    template = {"scores": jnp.zeros(3, jnp.float32), "step": jnp.int32(0),
                "batch_stats": jnp.zeros(2, jnp.float32)}
    with pytest.raises(CheckpointError) as e:
        saved(tmp_path).restore(template)
    message = str(e.value)
    assert "does not match this model (" in message and "\n" not in message
    assert message.endswith("use --config.restart=True or a new --workdir")


def test_during_save_hook_runs_inside_the_save_and_a_failure_keeps_the_previous(tmp_path):
    """``during_save`` (the tests' fault hook) runs while the save is still in orbax's
    temporary directory; an OSError there (a full disk) leaves the previous save intact."""
    calls = []

    def during_save(meta, directory):
        calls.append((meta["global_step"], directory))
        if meta["global_step"] == 8:
            raise OSError(28, "No space left on device", directory)

    ckpt = checkpoint.Checkpointer(str(tmp_path), during_save=during_save)
    tree = {"scores": np.arange(3, dtype=np.float32), "step": np.int32(7)}
    ckpt.save(tree, META)
    assert [step for step, _ in calls] == [7] and ".orbax-checkpoint-tmp" in calls[0][1]
    with pytest.raises(CheckpointWriteError, match=r"could not write checkpoint step 8 .*No "
                       r"space left on device.*previous checkpoint is intact: .*global step 7"):
        ckpt.save(tree, dict(META, global_step=8))
    assert ckpt.latest_step() == 7
    ckpt.close()
