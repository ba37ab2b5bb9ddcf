"""The persistent XLA compilation cache (compilation.enable_compilation_cache): a second run of the
same config loads every compiled step from <cache_dir>/xla instead of compiling it, and
ends with exactly the first run's result; compilation_cache=False or an empty cache_dir
leaves no cache behind. Real subprocesses of ``python -m mpt_jax.main`` (JAX reads the
setting once per process)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mpt_jax import checkpoint

# every test: real subprocess runs, end to end
pytestmark = pytest.mark.compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ("--config=configs/smoke.py", "--config.num_epochs=1", "--config.max_train_steps=6")


def run(workdir, *extra, home=None, env=None):
    """One run of main. ``home``: a fresh $HOME without $XDG_CACHE_HOME, where the default
    cache_dir (~/.cache/mpt_jax) lands; ``env``: more environment variables."""
    full = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    full.update(JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    if home:
        full["HOME"] = str(home)
        full.pop("XDG_CACHE_HOME", None)
    full.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "mpt_jax.main", *ARGS, f"--workdir={workdir}",
                           *extra], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def entries(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_second_run_loads_every_step_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    run(tmp_path / "a", f"--config.cache_dir={cache}")
    first = entries(cache / "xla")
    assert len(first) >= 2, first  # at least the train and the eval step
    run(tmp_path / "b", f"--config.cache_dir={cache}")
    assert entries(cache / "xla") == first  # nothing compiled anew: every lookup was a hit
    a, b = (checkpoint.load_for_inference(str(tmp_path / d)) for d in "ab")
    for layer in a["params"]:
        np.testing.assert_array_equal(b["params"][layer]["scores"], a["params"][layer]["scores"])
    ra, rb = (json.load(open(tmp_path / d / "result.json")) for d in "ab")
    def timeless(r):  # wall times and their breakdown differ between any two runs
        return {k: v for k, v in r.items()
                if not k.startswith("wall_seconds") and k != "time_breakdown"}
    assert timeless(ra) == timeless(rb)
    # Another program (a different model width) adds entries of its own.
    run(tmp_path / "c", f"--config.cache_dir={cache}", "--config.model_options.hidden=(16,)")
    assert set(entries(cache / "xla")) > set(first)


def test_cache_can_be_switched_off(tmp_path):
    cache = tmp_path / "cache"
    run(tmp_path / "a", f"--config.cache_dir={cache}", "--config.compilation_cache=False")
    assert not (cache / "xla").exists()
    home = tmp_path / "home"
    run(tmp_path / "b", "--config.cache_dir=", home=home)  # no cache dir: none written
    assert not (home / ".cache").exists()
    run(tmp_path / "c", home=home)  # the default cache_dir: ~/.cache/mpt_jax/xla
    assert entries(home / ".cache" / "mpt_jax" / "xla")
    # $XDG_CACHE_HOME, where set, takes the place of ~/.cache.
    run(tmp_path / "d", env={"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert entries(tmp_path / "xdg" / "mpt_jax" / "xla")


def test_an_unusable_cache_dir_does_not_stop_the_run(tmp_path):
    """A cache_dir that cannot be created (here: below a regular file) costs only a warning:
    the run trains and ends as usual."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run(tmp_path / "a", f"--config.cache_dir={blocker / 'sub'}")
    assert "final accuracy: top-1" in proc.stdout
    assert "compilation cache" in proc.stderr  # JAX says why nothing was cached
