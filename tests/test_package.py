"""Package-level guarantees: importing mpt_jax (and running a CIFAR-size job) never pulls in
TensorFlow or torch (GUIDE.md "import cost"; issue 2)."""
import subprocess
import sys

CHECK = """
import sys
import mpt_jax, mpt_jax.ops, mpt_jax.models, mpt_jax.train, mpt_jax.data, mpt_jax.ticket
import mpt_jax.bitpack, mpt_jax.masks, mpt_jax.main
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets', 'torch'))
print('HEAVY', heavy)
"""


def test_import_pulls_in_neither_tensorflow_nor_torch():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout


def test_public_op_names_exist():
    import mpt_jax.ops as ops
    for name in ("biprop_kernel", "edgepopup_kernel", "binary_activation", "global_threshold",
                 "global_keep_schedule", "kept_count", "topk_mask"):
        assert callable(getattr(ops, name)), name
