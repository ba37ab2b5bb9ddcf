"""Test-only driver: ``python -m mpt_jax.main``'s command line with injected faults.

    python tests/fault_driver.py [--FAULT=N ...] -- <mpt_jax.main arguments>

FAULT (each at most once; at most one of the two save faults):
  pause_after_step=N   after global step N was dispatched (before its metrics are checked or
                       a checkpoint is written), print "test-hook: paused after step N" and
                       wait until a SIGTERM / SIGINT arrives (at most 300 s), so that a test
                       can send a real signal at a known point
  pause_in_save=N      inside the save of global step N, after part of it was written into
                       orbax's temporary directory: print a marker and sleep (for a SIGKILL)
  fail_save_at_epoch=E the save at the end of epoch E raises OSError(ENOSPC) (a full disk)
                       after part of it was written
  nan_at_step=N        global step N trains on NaN images
  fill_disk_after_step=N  after global step N, fill the workdir's file system with a file
                       <workdir>.filler (next to the workdir) until a write fails with ENOSPC,
                       so that the run's next writes really find the disk full

The faults are ``mpt_jax.loop.Hooks`` passed to ``mpt_jax.main.run``: exit codes, messages
and the printed resume command are those of ``python -m mpt_jax.main``.
"""
import errno
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's mpt_jax, as `python -m mpt_jax.main` from ROOT

import jax.numpy as jnp  # noqa: E402

from mpt_jax import loop, main  # noqa: E402


def pause_after_step(n):
    def on_step(step, stop):
        if step != n:
            return
        print(f"test-hook: paused after step {step}", flush=True)
        for _ in range(3000):
            if stop.received:  # the run then stops as it would after any step
                break
            time.sleep(0.1)
    return on_step


def pause_in_save(n):
    def during_save(meta, directory):
        if int(meta.get("global_step", -1)) == n:
            print(f"test-hook: pausing inside the save of step {n} ({directory})", flush=True)
            time.sleep(600)
    return during_save


def fail_save_at_epoch(epoch):
    def during_save(meta, directory):
        if int(meta.get("epoch", -1)) == epoch and not meta.get("step_in_epoch"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), directory)
    return during_save


def nan_at_step(n):
    def before_step(step, batch):
        return dict(batch, image=batch["image"] * jnp.nan) if step == n else batch
    return before_step


def fill_disk_after_step(n, workdir):
    def on_step(step, stop):
        if step != n:
            return
        with open(workdir.rstrip("/") + ".filler", "wb", buffering=0) as f:  # no buffer to
            for chunk in (1 << 20, 1 << 12, 1):                               # flush at close
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
        print(f"test-hook: filled the disk after step {step}", flush=True)
    return on_step


FAULTS = dict(pause_after_step=("on_step", pause_after_step),
              pause_in_save=("during_checkpoint_save", pause_in_save),
              fail_save_at_epoch=("during_checkpoint_save", fail_save_at_epoch),
              nan_at_step=("before_step", nan_at_step),
              fill_disk_after_step=("on_step", fill_disk_after_step))


def parse(argv):
    """(Hooks, mpt_jax.main argv) from this driver's argv."""
    split = argv.index("--")
    workdir = next((a.split("=", 1)[1] for a in argv[split:] if a.startswith("--workdir=")), "")
    hooks = {}
    for arg in argv[1:split]:
        name, value = arg.removeprefix("--").split("=")
        field, make = FAULTS[name]
        if field in hooks:
            raise SystemExit(f"fault_driver: two faults for {field}")
        hooks[field] = (make(int(value), workdir) if name == "fill_disk_after_step"
                        else make(int(value)))
    return loop.Hooks(**hooks), [argv[0], *argv[split + 1:]]


if __name__ == "__main__":
    hooks, argv = parse(sys.argv)
    sys.exit(main.run(argv, hooks=hooks))
