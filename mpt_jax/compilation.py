"""Less time spent compiling the steps: JAX's persistent compilation cache, and compiling a
jitted step in a background thread while the host does other start-up work.

``mpt_jax.loop`` compiles both steps in the background when the data is in memory (the
batch shapes are known before the first batch exists): the compilation overlaps the state's
initialisation (or restoration) and, for the eval step, the first epoch, instead of
following it (the eval step alone was ~5 s of a 3-minute CIFAR run on a GPU).
"""
from __future__ import annotations

import concurrent.futures
import os
import time

import jax


def enable_compilation_cache(config) -> str | None:
    """Points JAX's persistent compilation cache at ``<config.cache_dir>/xla`` (unless
    ``config.compilation_cache`` is False, ``cache_dir`` is empty, or a cache directory is
    already set, e.g. by $JAX_COMPILATION_CACHE_DIR), so that a rerun, a resume or another
    seed of the same config loads the compiled train / eval steps (on a GPU including
    cuDNN's autotuning) instead of compiling them again. Returns the directory in use.
    ``python -m mpt_jax.main`` calls it; a notebook calls it before ``train_and_evaluate``
    (it sets a process-wide JAX option, which a library call should not do on its own).
    Only compilations of >= 1 s are stored (JAX's default,
    $JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS). JAX opens the cache at the first
    compilation after a directory is set and keeps that one for the process."""
    current = jax.config.jax_compilation_cache_dir
    if current or not config.get("compilation_cache", True) or not config.get("cache_dir"):
        return current or None
    path = os.path.join(os.path.expanduser(config.cache_dir), "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    return path


class CompiledAhead:
    """A jitted function compiled in a background thread for the abstract arguments
    ``shapes`` (ShapeDtypeStructs with shardings), called like the jitted function.

    A call waits for the compilation if it is not done; if it failed, or the compiled
    executable does not accept the arguments (other shapes or shardings), the call goes
    through the jitted function, which compiles (and reports any error) as usual.
    ``compile_seconds``: how long the background compilation took (None until it ended).
    """

    def __init__(self, jitted, *shapes):
        self._jitted = jitted
        self._compiled = None
        self.compile_seconds = None
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile_ahead")
        self._future = pool.submit(self._compile, jitted, shapes)
        pool.shutdown(wait=False)

    def _compile(self, jitted, shapes):
        start = time.perf_counter()
        try:
            return jitted.lower(*shapes).compile()
        finally:
            self.compile_seconds = time.perf_counter() - start

    @property
    def ready(self) -> bool:
        """Whether the background compilation has ended and succeeded (a call will not wait)."""
        future = self._future
        if future is None:
            return self._compiled is not None
        return future.done() and future.exception() is None

    @property
    def uses_compiled(self) -> bool:
        """Whether calls (so far) went through the executable compiled ahead."""
        return self._compiled is not None

    def __call__(self, *args):
        if self._future is not None:
            try:
                self._compiled = self._future.result()
            except Exception:  # noqa: BLE001  (the jitted call below reports the real error)
                self._compiled = None
            self._future = None
        if self._compiled is not None:
            try:
                return self._compiled(*args)
            except (TypeError, ValueError):  # arguments the executable was not built for
                self._compiled = None
        return self._jitted(*args)


def abstract(tree, sharding=None):
    """ShapeDtypeStructs of a pytree of arrays (or of ShapeDtypeStructs), with ``sharding``
    or else each leaf's own, for ``jit(...).lower``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=sharding or getattr(x, "sharding", None),
        weak_type=bool(getattr(x, "weak_type", False))), tree)
