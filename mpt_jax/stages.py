"""What a run says while it starts, and where its wall time goes.

    echo(...)                        print on process 0 only, flushed
    with stage("decoding 50,000 images of x.tar"): ...   "... done in 13.1 s"
    clock = Clock()                  wall time in start-up, data, compile, training,
                                     evaluation and checkpoint writes
    step = FirstCallTimed(p_train, "train step", clock)   its first call is the compilation

A fresh CIFAR run spends tens of seconds decoding images and compiling before its first
step; each of those stages prints a line when it starts and how long it took, so that a
silent terminal never means a hung run. At the end of a run ``Clock.breakdown`` says where
the time went (``report.finished`` prints it and stores it in result.json).
"""
from __future__ import annotations

import contextlib
import functools
import time
from typing import Callable

import jax

# The parts of a run's wall time, in the order they are printed, with their printed names.
BUCKETS = {"startup": "start-up", "data": "data", "compile": "compile",
           "training": "training", "evaluation": "evaluation",
           "checkpoint": "checkpoint writes"}


def echo(*args, **kwargs) -> None:
    """``print`` on process 0 only, flushed (the log of a long run is read while it runs)."""
    if jax.process_index() == 0:
        print(*args, **kwargs, flush=True)


@contextlib.contextmanager
def stage(what: str):
    """Prints ``what ...`` now and ``done in X s`` when the block ends (on the same line;
    ``failed`` ends the line when the block raises, so an error message starts a line)."""
    echo(f"{what} ...", end=" ")
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        echo("failed")
        raise
    echo(f"done in {time.perf_counter() - start:.1f} s")


class Clock:
    """Splits the wall time since its creation into ``BUCKETS``.

    Time inside ``section(bucket)`` goes to that bucket (a nested section takes its own
    time out of the outer one: the eval step's compilation inside an evaluation is
    compile time); time outside every section is start-up until ``begin_training`` and
    training after it. Main thread only.
    """

    def __init__(self, now: Callable[[], float] = time.perf_counter):
        self._now = now
        self.start = self._since = now()
        self.seconds = dict.fromkeys(BUCKETS, 0.0)
        self._stack = ["startup"]  # [0]: where time outside every section goes

    def _charge(self) -> None:
        now = self._now()
        self.seconds[self._stack[-1]] += now - self._since
        self._since = now

    @contextlib.contextmanager
    def section(self, bucket: str):
        if bucket not in BUCKETS:
            raise ValueError(f"unknown bucket {bucket!r}; valid: {', '.join(BUCKETS)}")
        self._charge()
        self._stack.append(bucket)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()

    def begin_training(self) -> None:
        """From now on, time outside every section is training time."""
        self._charge()
        self._stack[0] = "training"

    def timed(self, fn: Callable, bucket: str) -> Callable:
        """``fn`` with every call timed into ``bucket``."""
        @functools.wraps(fn)
        def timed_fn(*args, **kwargs):
            with self.section(bucket):
                return fn(*args, **kwargs)
        return timed_fn

    def elapsed(self) -> float:
        """Seconds since the clock was created."""
        return self._now() - self.start

    def breakdown(self) -> dict:
        """Seconds per bucket and ``total`` (their sum), rounded to 0.01 s."""
        self._charge()
        out = {name: round(seconds, 2) for name, seconds in self.seconds.items()}
        out["total"] = round(self._since - self.start, 2)
        return out


def breakdown_line(breakdown: dict) -> str:
    """One line, e.g. "wall time 62.3 s: start-up 3.1 s, data 13.0 s, compile 35.2 s, ..."."""
    parts = ", ".join(f"{label} {breakdown.get(name, 0.0):.1f} s"
                      for name, label in BUCKETS.items())
    return f"wall time {breakdown['total']:.1f} s: {parts}"


class FirstCallTimed:
    """A step function (jitted, or ``compilation.CompiledAhead``) whose first call compiles
    it (or waits for its compilation in a background thread): that call says so, with how
    long it took, and counts as compile time; with ``starts_training`` it also ends the
    start-up. Later calls go straight through."""

    def __init__(self, fn: Callable, what: str, clock: Clock, starts_training: bool = False):
        self._fn = fn
        self._what = what
        self._clock = clock
        self._starts_training = starts_training
        self._first = True
        self._ahead = hasattr(fn, "ready")
        if self._ahead:
            echo(f"compiling the {what} in the background")

    def __getattr__(self, name):  # e.g. CompiledAhead.uses_compiled
        return getattr(self._fn, name)

    def __call__(self, *args):
        if not self._first:
            return self._fn(*args)
        self._first = False
        if self._starts_training:
            self._clock.begin_training()
        with self._clock.section("compile"):
            if self._ahead and self._fn.ready:
                out = self._fn(*args)
                jax.block_until_ready(out)
                echo(f"the {self._what} is compiled ({self._fn.compile_seconds:.1f} s, in the "
                     f"background)")
                return out
            what = (f"waiting for the {self._what} to compile" if self._ahead else
                    f"compiling the {self._what}")
            with stage(what):
                out = self._fn(*args)
                jax.block_until_ready(out)
        return out
