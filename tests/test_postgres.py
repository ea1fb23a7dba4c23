"""The trial store on a real PostgreSQL server, started by the suite on 127.0.0.1.

Needs the server binaries (Debian: ``apt-get install -y postgresql``) and the psycopg
driver (``pip install -e '.[test]'``); skipped with the reason otherwise."""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import sqlalchemy as sa

import metaopt
from metaopt import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bin(name):
  found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
  return found if isinstance(found, str) else (found[-1] if found else None)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
  """A throwaway PostgreSQL cluster on 127.0.0.1 (as user ``postgres`` when run as root)."""
  try:
    import psycopg  # noqa: F401
  except ImportError:
    pytest.skip("psycopg is not installed: pip install -e '.[test]'")
  initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
  if not initdb or not pg_ctl:
    pytest.skip("PostgreSQL server binaries not found: apt-get install -y postgresql")
  prefix = []
  tmp = tempfile.mkdtemp(prefix="metaopt-pg-")
  if os.geteuid() == 0:  # the server refuses to run as root
    try:
      pw = pwd.getpwnam("postgres")
    except KeyError:
      pytest.skip("running as root and there is no 'postgres' user to run the server")
    os.chown(tmp, pw.pw_uid, pw.pw_gid)
    prefix = ["runuser", "-u", "postgres", "--"]
  data, port = os.path.join(tmp, "data"), _free_port()
  r = subprocess.run([*prefix, initdb, "-D", data, "-A", "trust", "-U", "postgres",
                      "--no-sync"], capture_output=True, text=True, timeout=120)
  if r.returncode != 0:
    pytest.skip(f"initdb failed: {r.stderr[-500:]}")
  opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off"
  r = subprocess.run([*prefix, pg_ctl, "-D", data, "-o", opts, "-l",
                      os.path.join(tmp, "log"), "-w", "-t", "60", "start"],
                     capture_output=True, text=True, timeout=120)
  if r.returncode != 0:
    pytest.skip(f"PostgreSQL did not start: {r.stderr[-500:]}")
  try:
    yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
  finally:
    subprocess.run([*prefix, pg_ctl, "-D", data, "-m", "immediate", "stop"],
                   capture_output=True, timeout=60)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def url(server, request):
  """A fresh database per test."""
  name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
  eng = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
  with eng.connect() as c:
    c.execute(sa.text(f"DROP DATABASE IF EXISTS {name}"))
    c.execute(sa.text(f"CREATE DATABASE {name}"))
  eng.dispose()
  return f"{server}/{name}"


def _study(st, name="s"):
  return st.create_study(name, direction="maximize", config={"a": 1, "x": float("nan")},
                         seed=3, code_version="abc", data_version={"checksum": "f0"},
                         hardware={"platform": "cpu"})


def test_round_protocol_and_reload(url):
  st = metaopt.Store(url)
  rec = _study(st)
  assert rec.config == {"a": 1, "x": None}
  ids = st.start_round(rec.id, 0, [
      {"number": i, "params": {"lr": 0.1 * i}, "u": [0.5], "seed": 10 + i} for i in range(3)],
      b"state-after-ask\x00\xff", checkpoint_path="/ck/r0")
  st.record_epoch(ids, 0, [{"valid_accuracy": 0.5}] * 3)
  st.record_epoch(ids, 0, [{"valid_accuracy": 0.6}] * 3)  # re-run epoch: upsert
  st.record_epoch(ids[:2], 1, [{"valid_accuracy": 0.7}] * 2,
                  stopped=[(ids[2], "failed", "non-finite loss at epoch 1", None)])
  st.end_round(rec.id, 0, [(ids[0], "complete", 0.7, None), (ids[1], "pruned", 0.6, "p"),
                           (ids[2], "failed", None, "non-finite loss at epoch 1")],
               b"state-after-tell", duration_s=1.5)
  st.close()
  st2 = metaopt.Store(url)
  rec2 = st2.load_study("s")
  assert (rec2.state_round, rec2.state_phase, rec2.searcher_state) == (0, "told",
                                                                       b"state-after-tell")
  ts = st2.trials(rec2.id)
  assert [t.status for t in ts] == ["complete", "pruned", "failed"]
  assert [m["valid_accuracy"] for m in ts[0].metrics] == [0.6, 0.7]
  assert ts[0].seed == 10 and ts[0].checkpoint_path == "/ck/r0" and ts[0].duration_s == 1.5
  with sa.create_engine(url).connect() as c:
    assert c.execute(sa.text("select version()")).scalar().startswith("PostgreSQL")


def test_duplicate_trial_number_rolls_back_whole_round(url):
  st = metaopt.Store(url)
  rec = _study(st)
  with pytest.raises(ValueError, match="study 's' already exists"):
    _study(st)
  st.start_round(rec.id, 0, [{"number": 0, "params": {}, "seed": 0}], b"a")
  with pytest.raises(sa.exc.IntegrityError):
    st.start_round(rec.id, 1, [{"number": 1, "params": {}, "seed": 0},
                               {"number": 0, "params": {}, "seed": 0}], b"b")
  assert [t.number for t in st.trials(rec.id)] == [0]
  assert st.load_study("s").searcher_state == b"a"


WORKER = """
import sys, metaopt
from metaopt import tasks
task = tasks.get_task("digits_mlp")
metaopt.worker(metaopt.random_search(task.space.dim), task, store=sys.argv[1], study="pg",
               n_trials=16, population=4, epochs=2, batch_size=128, seed=2,
               checkpoint_dir=sys.argv[2], worker_id=sys.argv[3])
"""


def _plain(url, tmp_path):
  task = tasks.get_task("digits_mlp")
  args = dict(n_trials=16, population=4, epochs=2, batch_size=128, seed=2, progress=False)
  return metaopt.search(metaopt.random_search(task.space.dim), task, store=url, study="plain",
                        checkpoint_dir=str(tmp_path / "plain"), **args)


def test_search_on_postgres(url, tmp_path):
  ref = _plain(url, tmp_path)
  assert ref.count("complete") == 16
  st = metaopt.Store(url)
  again = st.trials(st.load_study("plain").id)
  assert [(t.number, t.objective, len(t.metrics)) for t in again] == [
      (t.number, t.objective, 2) for t in ref.trials]
  assert all(m["flops"] > 0 for t in again for m in t.metrics)


@pytest.mark.slow
def test_two_workers_on_postgres(url, tmp_path):
  ref = _plain(url, tmp_path)
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(tmp_path / "ck"), f"w{i}"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True) for i in range(2)]
  t0 = time.time()
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  st = metaopt.Store(url)
  rec = st.load_study("pg")
  got = st.trials(rec.id)
  assert [t.number for t in got] == list(range(16))  # none lost, none duplicated
  assert [(t.params, t.status) for t in got] == [(t.params, t.status) for t in ref.trials]
  for a, b in zip(got, ref.trials, strict=True):
    assert abs(a.objective - b.objective) <= 1e-6
  rounds = st.rounds(rec.id)
  assert [r["status"] for r in rounds] == ["done"] * 4
  assert {r["worker"] for r in rounds} <= {"w0", "w1"}
  assert time.time() - t0 < 600
