"""Trial store: a real SQLite file, transactions, upserts, resumable searcher state."""

import os
import sqlite3
import subprocess
import sys

import pytest
import sqlalchemy as sa
from _processes import hold_new_store, release_when_opened

from metaopt import Store


def _study(st, name="s"):
  return st.create_study(name, direction="maximize", config={"a": 1, "x": float("nan")}, seed=3,
                         code_version="abc", data_version={"name": "digits", "checksum": "f0"},
                         hardware={"platform": "cpu"})


def test_round_protocol_and_reload(tmp_path):
  url = f"sqlite:///{tmp_path}/s.db"
  st = Store(url)
  rec = _study(st)
  assert rec.state_phase == "init" and rec.config == {"a": 1, "x": None}
  ids = st.start_round(rec.id, 0, [
      {"number": i, "params": {"lr": 0.1 * i}, "u": [0.5], "seed": 10 + i} for i in range(3)],
      b"state-after-ask", checkpoint_path="/ck/r0")
  st.record_epoch(ids, 0, [{"valid_accuracy": 0.5}] * 3)
  st.record_epoch(ids, 0, [{"valid_accuracy": 0.6}] * 3)  # re-run epoch: upsert
  st.record_epoch(ids[:2], 1, [{"valid_accuracy": 0.7}] * 2,
                  stopped=[(ids[2], "failed", "non-finite loss at epoch 1", None)])
  st.end_round(rec.id, 0, [(ids[0], "complete", 0.7, None), (ids[1], "pruned", 0.6, "p"),
                           (ids[2], "failed", None, "non-finite loss at epoch 1")],
               b"state-after-tell", duration_s=1.5)
  st.close()

  st2 = Store(url)  # a new process would see the same
  rec2 = st2.load_study("s")
  assert (rec2.state_round, rec2.state_phase, rec2.searcher_state) == (0, "told",
                                                                       b"state-after-tell")
  assert rec2.data_version["checksum"] == "f0" and rec2.code_version == "abc"
  ts = st2.trials(rec2.id)
  assert [t.status for t in ts] == ["complete", "pruned", "failed"]
  assert [m["valid_accuracy"] for m in ts[0].metrics] == [0.6, 0.7]
  assert ts[2].failure_reason == "non-finite loss at epoch 1" and ts[2].objective is None
  assert ts[0].seed == 10 and ts[0].checkpoint_path == "/ck/r0" and ts[0].duration_s == 1.5
  # it is a real SQLite file in WAL mode
  con = sqlite3.connect(f"{tmp_path}/s.db")
  assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
  assert con.execute("select count(*) from trials").fetchone()[0] == 3


def test_duplicate_study_and_unknown_study(tmp_path):
  st = Store(f"sqlite:///{tmp_path}/s.db")
  _study(st)
  with pytest.raises(ValueError, match="study 's' already exists"):
    _study(st)
  with pytest.raises(ValueError, match="study 'nope' not found"):
    st.load_study("nope")
  _study(st, "t")
  with pytest.raises(ValueError, match="holds several studies"):
    st.load_study(None)


def test_duplicate_trial_number_rolls_back_whole_round(tmp_path):
  st = Store(f"sqlite:///{tmp_path}/s.db")
  rec = _study(st)
  st.start_round(rec.id, 0, [{"number": 0, "params": {}, "seed": 0}], b"a")
  with pytest.raises(sa.exc.IntegrityError):
    st.start_round(rec.id, 1, [{"number": 1, "params": {}, "seed": 0},
                               {"number": 0, "params": {}, "seed": 0}], b"b")
  assert [t.number for t in st.trials(rec.id)] == [0]  # trial 1 was not half-inserted
  assert st.load_study("s").searcher_state == b"a"


def test_bad_url_and_direction(tmp_path):
  with pytest.raises(ValueError, match="store='runs/x.db': must be an SQLAlchemy URL"):
    Store("runs/x.db")
  st = Store("sqlite://")
  with pytest.raises(ValueError, match="direction='up': allowed values are 'maximize'"):
    st.create_study("x", direction="up", config={}, seed=0)


def test_opening_to_read_checks_before_it_writes(tmp_path):
  """``Store(url, create=False)`` (report, resume, evaluate) raises one ValueError for a
  missing file, a SQLite file of another program or a URL with a password, and writes
  nothing; the store it opens is the one a search wrote."""
  with pytest.raises(ValueError, match="no such file"):
    Store(f"sqlite:///{tmp_path}/sub/s.db", create=False)
  assert os.listdir(tmp_path) == []
  other = tmp_path / "other.db"
  con = sqlite3.connect(other)
  con.execute("create table t (x)")
  con.commit()
  con.close()
  before = other.read_bytes()
  with pytest.raises(ValueError, match="not a metaopt store"):
    Store(f"sqlite:///{other}", create=False)
  assert other.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["other.db"]
  with pytest.raises(ValueError, match=r"u:\*\*\*@") as e:
    Store("postgresql+psycopg://u:secret@127.0.0.1:1/db", create=False)
  assert "secret" not in str(e.value)
  st = Store(f"sqlite:///{tmp_path}/s.db")
  _study(st)
  st.close()
  assert Store(f"sqlite:///{tmp_path}/s.db", create=False).load_study("s").name == "s"



OPEN_NEW = """
import sys
from metaopt import Store
st = Store(sys.argv[1])
st.create_study(sys.argv[2], direction="minimize", config={}, seed=0)
"""


def test_processes_opening_a_new_store_at_once_wait_for_each_other(tmp_path):
  """SQLite does not wait (no busy timeout) when a new file is switched to WAL while another
  connection writes it, so processes opening a new store together used to fail at once with
  "database is locked". Here two real processes open a new store while its write lock is
  held; both wait, then record their study; the file ends in WAL mode with both studies."""
  db = str(tmp_path / "new.db")
  holder = hold_new_store(db)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  procs = [subprocess.Popen([sys.executable, "-c", OPEN_NEW, f"sqlite:///{db}", f"s{i}"],
                            cwd=root, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
           for i in range(2)]
  release_when_opened(holder, db, procs)
  for p in procs:
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
  with sqlite3.connect(db) as c:
    assert c.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert c.execute("SELECT name FROM studies ORDER BY name").fetchall() == [("s0",), ("s1",)]
