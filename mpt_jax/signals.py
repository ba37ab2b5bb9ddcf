"""Stopping a run from outside: SIGTERM / Ctrl-C end it cleanly after the current step.

The loop checks ``stop_requested`` after every step; a stopped run writes a checkpoint and
``main`` exits with 143 (SIGTERM) or 130 (Ctrl-C) and the command that resumes it. A second
signal stops at once (KeyboardInterrupt), without a new checkpoint.
"""
from __future__ import annotations

import signal
import threading

import jax

from mpt_jax import parallel


class StopSignal:
    """While entered (in the main thread), SIGTERM / SIGINT set ``received`` to the first
    signal's name instead of ending the process; a second signal raises KeyboardInterrupt."""

    def __init__(self):
        self.received = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # second signal: give up at once
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def spoken(name: str | None) -> str:
    """How messages name a received signal: "Ctrl-C" for SIGINT (what the user pressed),
    the signal's name otherwise; None: another process of the run received it."""
    if name is None:
        return "a signal to another process"
    return "Ctrl-C" if name == "SIGINT" else name


def stop_requested(stop: StopSignal, sync_point: bool) -> bool:
    """Single process: a signal stops the run after any step. Multi-process: the processes
    agree at sync points (a collective), so that all of them stop after the same step."""
    if jax.process_count() > 1:
        return sync_point and parallel.any_process(stop.received is not None)
    return stop.received is not None
