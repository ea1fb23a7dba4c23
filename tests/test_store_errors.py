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
from metaopt._src import config as config_lib
from metaopt.configs import quickstart


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


CFG = os.path.join(ROOT, "configs", "quickstart.py")
REPAIR_CFG = os.path.join(ROOT, "configs", "repair_digits.py")
BAD = {"foo://x/y.db": "unknown database dialect 'foo'",
       "sqlite://tmp/a/x.db": "a SQLite URL has no host",
       "postgresql+psycopg://u:pw@127.0.0.1:{refused}/db": "cannot open",
       "sqlite:///junk.db": "is not a SQLite database",
       "sqlite:///keep": "is a directory",
       "sqlite:///missing/x.db": "no such file",
       "sqlite:///x.db": "no such file",
       "sqlite:///keep/x.db": "no such file"}
MESSAGES = {  # argument list -> what its one line says
    ("run", f"--config={CFG}", "--config.bogus=1"): "unknown field bogus in --config; allowed "
                                                   "fields: batch_size, checkpoint_dir",
    ("run", f"--config={CFG}", "--config.epochs=x"): "bad value for config field epochs",
    ("run", "--config=nothere.py"): "config file nothere.py: no such file",
    ("run", "--config=syntax.py"): "config file syntax.py: invalid Python",
    ("run", "--config=raises.py"): "config file raises.py: ValueError: boom",
    ("report", "--store", "sqlite:///empty.db"): "holds no study",
    ("resume", "--store", "sqlite:///ro.db", "--study=t"): "study 't' not found",
    ("report", "--bogus"): "bad flag: Unknown command line flag 'bogus'",
    ("run", f"--config={REPAIR_CFG}", "--config.searcher=grid_search"):
        "'searcher' must be one of random, tpe, sobol",
}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
  """Every probe run once in one box directory: ``(results by args, box listing before,
  after, why the read-only probes could not run or None)``."""
  tmp = tmp_path_factory.mktemp("probes")
  box = tmp / "box"  # the runs' working directory: relative paths land here
  box.mkdir()
  (box / "junk.db").write_bytes(b"this is not a database\n" * 40)
  (box / "syntax.py").write_text("def get_config(:\n")
  (box / "raises.py").write_text("def get_config():\n  raise ValueError('boom')\n")
  _study_store(str(box / "ro.db"))
  metaopt.Store(f"sqlite:///{box / 'empty.db'}").close()
  (box / "keep").mkdir()
  silent = socket.socket()  # accepts connections (backlog) but never answers
  silent.bind(("127.0.0.1", 0))
  silent.listen(1)
  refused = socket.socket()
  refused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
  bad = {u.format(refused=refused.getsockname()[1]): w for u, w in BAD.items()}
  runs = [[cmd, "--store", url] for url in bad for cmd in ("report", "resume", "evaluate")]
  runs += [["run", f"--config={CFG}", f"--config.store={url}"] for url in list(bad)[:5]]
  runs += [["report", "--store", f"postgresql+psycopg://u:pw@127.0.0.1:"
                                 f"{silent.getsockname()[1]}/db"]]
  runs += [list(a) for a in MESSAGES]
  why = _make_read_only(str(box / "ro.db"))
  if why is None:
    runs += [["resume", "--store", "sqlite:///ro.db"], ["evaluate", "--store",
                                                        "sqlite:///ro.db"],
             ["run", f"--config={CFG}", "--config.store=sqlite:///ro.db"],
             ["report", "--store", "sqlite:///ro.db", "--study=s", "--format=json",
              f"--out={tmp / 'report'}"]]
  try:
    before = snapshot(str(box))
    results = run_batch(str(box), runs)
    after = snapshot(str(box))
  finally:
    _undo_read_only(str(box / "ro.db"))
    silent.close()
    refused.close()
  return {tuple(r["args"]): r for r in results}, bad, before, after, why


def test_bad_stores_give_one_line_and_write_nothing(batch):
  out, bad, before, after, _ = batch
  assert after == before  # no directory, empty database, -wal file or event written
  for url, words in bad.items():
    for cmd in ("report", "resume", "evaluate"):
      _one_line_error(out[(cmd, "--store", url)], words)
  for url in list(bad)[:5]:  # a search would create its store, but not on these
    _one_line_error(out[("run", f"--config={CFG}", f"--config.store={url}")], bad[url])


def test_unreachable_postgres_fails_within_10_s(batch):
  out = batch[0]
  (r,) = [r for a, r in out.items() if a[0] == "report" and "@127.0.0.1:" in a[-1]
          and r["stderr"].count("timeout")]
  _one_line_error(r, "cannot open", "timeout expired", "u:***@")
  assert "pw" not in r["stderr"]  # the password is not printed
  assert r["s"] < 10


def test_cli_messages_name_the_field_or_file(batch):
  out = batch[0]
  for args, words in MESSAGES.items():
    _one_line_error(out[args], words)
    assert "None" not in out[args]["stderr"] and "\"" not in out[args]["stderr"]


def test_read_only_store(batch):
  out, _, before, after, why = batch
  if why is not None:
    pytest.skip(f"read-only store not tested: {why}")
  assert after == before
  _one_line_error(out[("resume", "--store", "sqlite:///ro.db")], "read-only")
  _one_line_error(out[("evaluate", "--store", "sqlite:///ro.db")], "read-only")
  _one_line_error(out[("run", f"--config={CFG}", "--config.store=sqlite:///ro.db")],
                  "read-only")
  (rep,) = [r for a, r in out.items() if a[:3] == ("report", "--store", "sqlite:///ro.db")]
  assert rep["rc"] == 0, rep  # reading a read-only store works
  assert '"n_trials": 0' in rep["stdout"]
