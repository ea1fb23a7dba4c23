"""Bad stores at the command line: every probe gives one line on stderr naming the problem
and exit code 2, and leaves the file system and the store exactly as they were (directory
listings and file hashes compared). Real run.py processes (forked from one that imported
everything once, see cli_batch.py), real SQLite files, a real listening socket that never
answers as an unreachable PostgreSQL server."""

import os
import shutil
import socket
import subprocess

import pytest
from cli_batch import ROOT, run_batch, snapshot

import metaopt
from configs import quickstart
from metaopt._src import config as config_lib


def _study_store(path: str, n_trials: int = 4) -> None:
  """A metaopt store holding one unfinished study (no training)."""
  cfg = config_lib.validate({**quickstart.get_config().to_dict(), "name": "s",
                             "n_trials": n_trials, "store": f"sqlite:///{path}"})
  st = metaopt.Store(cfg["store"])
  st.create_study("s", direction="maximize", config=cfg, seed=0)
  st.close()


def _make_read_only(path: str) -> str | None:
  """Makes ``path`` unwritable, for root too (``chattr +i``); None, or why it could not."""
  if os.geteuid() != 0:
    os.chmod(path, 0o444)
    return None
  if shutil.which("chattr") is None:
    return "chattr not found (root ignores file modes)"
  r = subprocess.run(["chattr", "+i", path], capture_output=True, text=True)
  return None if r.returncode == 0 else f"chattr +i failed: {r.stderr.strip()}"


def _undo_read_only(path: str) -> None:
  if os.geteuid() == 0 and shutil.which("chattr"):
    subprocess.run(["chattr", "-i", path], capture_output=True)
  else:
    os.chmod(path, 0o644)


def _one_line_error(r: dict, *words: str) -> None:
  lines = r["stderr"].strip().splitlines()
  assert r["rc"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), r
  assert "Traceback" not in r["stderr"] and r["stdout"] == "", r
  for w in words:
    assert w in lines[0], (w, r)


def test_bad_stores_give_one_line_and_write_nothing(tmp_path):
  box = tmp_path / "box"  # the runs' working directory: relative paths land here
  box.mkdir()
  (box / "junk.db").write_bytes(b"this is not a database\n" * 40)
  _study_store(str(box / "ro.db"))
  (box / "keep").mkdir()
  silent = socket.socket()  # accepts connections (backlog) but never answers
  silent.bind(("127.0.0.1", 0))
  silent.listen(1)
  refused = socket.socket()
  refused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
  pg_silent = f"postgresql+psycopg://u:pw@127.0.0.1:{silent.getsockname()[1]}/db"
  pg_refused = f"postgresql+psycopg://u:pw@127.0.0.1:{refused.getsockname()[1]}/db"
  why = _make_read_only(str(box / "ro.db"))
  try:
    bad = {"foo://x/y.db": "unknown database dialect 'foo'",
           "sqlite://tmp/a/x.db": "a SQLite URL has no host",
           pg_refused: "cannot open",
           "sqlite:///junk.db": "is not a SQLite database",
           "sqlite:///keep": "is a directory",
           "sqlite:///missing/x.db": "no such file",
           "sqlite:///x.db": "no such file",
           "sqlite:///keep/x.db": "no such file"}
    runs = [[cmd, "--store", url] for url in bad for cmd in ("report", "resume", "evaluate")]
    cfg = os.path.join(ROOT, "configs", "quickstart.py")
    runs += [["run", f"--config={cfg}", f"--config.store={url}"]
             for url in list(bad)[:5]]  # a search creates its store file, not these
    runs += [["report", "--store", pg_silent]]
    if why is None:
      runs += [["resume", "--store", "sqlite:///ro.db"], ["evaluate", "--store",
                                                          "sqlite:///ro.db"],
               ["run", f"--config={cfg}", "--config.store=sqlite:///ro.db"],
               ["report", "--store", "sqlite:///ro.db", "--study=s", "--format=json",
                f"--out={tmp_path / 'report'}"]]
    before = snapshot(str(box))
    results = run_batch(str(box), runs)
    assert snapshot(str(box)) == before  # no directory, empty database, -wal or event
  finally:
    _undo_read_only(str(box / "ro.db"))
    silent.close()
    refused.close()
  out = {tuple(r["args"]): r for r in results}
  for url, words in bad.items():
    for cmd in ("report", "resume", "evaluate"):
      _one_line_error(out[(cmd, "--store", url)], words)
  for url in list(bad)[:5]:
    _one_line_error(out[("run", f"--config={cfg}", f"--config.store={url}")], bad[url])
  slow = out[("report", "--store", pg_silent)]
  _one_line_error(slow, "cannot open", "timeout")
  assert "pw" not in slow["stderr"]  # the password is not printed
  assert slow["s"] < 10
  if why is not None:
    pytest.skip(f"read-only store not tested: {why}")
  _one_line_error(out[("resume", "--store", "sqlite:///ro.db")], "read-only")
  _one_line_error(out[("evaluate", "--store", "sqlite:///ro.db")], "read-only")
  _one_line_error(out[("run", f"--config={cfg}", "--config.store=sqlite:///ro.db")],
                  "read-only")
  rep = out[("report", "--store", "sqlite:///ro.db", "--study=s", "--format=json",
             f"--out={tmp_path / 'report'}")]
  assert rep["rc"] == 0, rep  # reading a read-only store works
