"""Helpers for tests that run real processes side by side (multi-host searches joined by
``jax.distributed``, processes opening one store): a free port, starting them, and waiting
for all of them without hanging when one fails."""

import os
import socket
import sqlite3
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> str:
  """A TCP port on 127.0.0.1 that nothing listens on now (for a jax.distributed coordinator)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return str(s.getsockname()[1])


def start_scripts(script, argvs, log_dir):
  """One ``python -c script *argv`` per argv, from the repository root; their stdout and
  stderr go to files in ``log_dir``."""
  procs = []
  for i, argv in enumerate(argvs):
    out = open(os.path.join(log_dir, f"out{i}.txt"), "w+")
    err = open(os.path.join(log_dir, f"err{i}.txt"), "w+")
    p = subprocess.Popen([sys.executable, "-c", script, *map(str, argv)], cwd=ROOT, stdout=out,
                         stderr=err, text=True, env=os.environ.copy())
    p.logs = (out, err)
    procs.append(p)
  return procs


def wait_all(procs, timeout=600):
  """``(returncode, stdout, stderr)`` of every process of :func:`start_scripts`. Once one has
  failed (exited non-zero, or printed a Python traceback) or ``timeout`` s have passed, the
  others are killed: processes joined by jax.distributed would otherwise wait minutes at
  their shutdown barrier for one that is gone or stuck."""
  deadline = time.monotonic() + timeout
  try:
    while any(p.poll() is None for p in procs):
      if (time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs)
          or any("Traceback (most recent" in _read(p.logs[1]) for p in procs)):
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  res = [(p.returncode, _read(p.logs[0]), _read(p.logs[1])) for p in procs]
  for p in procs:
    for f in p.logs:
      f.close()
  return res


def _read(f) -> str:
  f.flush()
  with open(f.name) as g:
    return g.read()


def failure(err: str) -> str:
  """What a failed process printed, from its first Python traceback on (at most 3000
  characters)."""
  at = err.find("Traceback (most recent")
  return err[at:at + 3000] if at >= 0 else err[-3000:]


def hold_new_store(db):
  """A write transaction on a new, empty SQLite file ``db``, as the first of several
  processes opening a new store holds while it switches the file to WAL."""
  holder = sqlite3.connect(db, isolation_level=None)
  holder.execute("BEGIN IMMEDIATE")
  return holder


def release_when_opened(holder, db, procs, settle_s=1.0):
  """Commits ``holder`` once every process in ``procs`` has had ``db`` open for
  ``settle_s`` (so each has met the lock), or as soon as one of them has exited."""
  since = {}
  try:
    while len(since) < len(procs) or time.monotonic() - max(since.values()) < settle_s:
      if any(p.poll() is not None for p in procs):
        break
      for p in procs:
        try:
          has = any(os.path.realpath(f"/proc/{p.pid}/fd/{f}") == os.path.realpath(db)
                    for f in os.listdir(f"/proc/{p.pid}/fd"))
        except OSError:
          has = False
        if has:
          since.setdefault(p.pid, time.monotonic())
        else:
          since.pop(p.pid, None)
      time.sleep(0.05)
  finally:
    holder.execute("COMMIT")
    holder.close()
