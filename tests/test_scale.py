"""Scale and trust: workers sharing a study, kill -9 at random points, damaged checkpoints,
compute accounting and ensembles. Real processes, real SQLite files, real kills."""

import datetime
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _evaluate_checks import check_ensemble
from _processes import (
    failure,
    free_port,
    hold_new_store,
    release_when_opened,
    start_scripts,
    wait_all,
)

import metaopt
from metaopt import tasks
from metaopt._src import population as pop
from metaopt._src.checkpoint import Checkpointer
from metaopt._src.evaluate import evaluate_top
from metaopt._src.report import compute_summary, write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIG = """
from metaopt.configs import quickstart

def get_config():
  c = quickstart.get_config()
  c.name = "scale"
  c.searcher_name = "random"
  c.pruner_name = "{pruner}"
  c.n_trials = {n_trials}
  c.population = {population}
  c.epochs = {epochs}
  c.batch_size = {batch_size}
  c.checkpoint_every_s = 0.0
  c.store = "sqlite:///{db}"
  return c
"""


def _config(tmp_path, name, **kw):
  kw = {"pruner": "none", "n_trials": 16, "population": 4, "epochs": 3, "batch_size": 128,
        "db": f"{tmp_path}/{name}.db", **kw}
  path = tmp_path / f"{name}.py"
  path.write_text(CONFIG.format(**kw))
  return str(path), kw["db"]


def _start(*args, err):
  return subprocess.Popen([sys.executable, "run.py", *args, "--quiet"], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=err, env=os.environ.copy())


def _cli(*args, timeout=600):
  return subprocess.run([sys.executable, "run.py", *args, "--quiet"], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def _query(db, sql):
  try:
    con = sqlite3.connect(db, timeout=30)
    try:
      return con.execute(sql).fetchall()
    finally:
      con.close()
  except sqlite3.Error:
    return []


def _trials(db):
  return _query(db, "select number, status, params, objective from trials order by number")


def _same_trials(got, ref):
  assert [(n, s, p) for n, s, p, _ in got] == [(n, s, p) for n, s, p, _ in ref]
  for (n, _, _, a), (_, _, _, b) in zip(got, ref, strict=True):
    assert (a is None) == (b is None), n
    if a is not None:
      assert abs(a - b) <= 1e-6, (n, a, b)


# ------------------------------------------------------------------------------- workers
def test_workers_share_a_study_and_take_over_a_killed_one(tmp_path):
  """A `run.py run --worker` process on a SQLite file is killed -9 mid-round, after it saved
  a checkpoint; two more workers started on the file share the study, one takes the round
  over when its heartbeat is stale and resumes it from its checkpoint. The study ends exactly
  as one uninterrupted `run.py run`. (The two start once the first has compiled: they load
  its programs from the persistent compilation cache the tests share instead of compiling
  them again.)"""
  cfg, db = _config(tmp_path, "w", n_trials=16, epochs=2)
  errs = [open(tmp_path / f"err{i}.txt", "w+") for i in range(3)]
  start = lambda e: _start("run", "--config", cfg, "--worker", "--stale_after_s=4", err=e)
  victim = start(errs[0])
  deadline = time.time() + 300
  rnd = None
  while rnd is None and time.time() < deadline and victim.poll() is None:
    rows = _query(db, "select r.worker, r.round from rounds r join trials t on t.study_id = "
                      "r.study_id and t.round = r.round where r.status = 'running' and "
                      "r.round < 3 and t.last_epoch is not null")
    for w, r in rows:
      if int(w.split(":")[1]) == victim.pid:
        rnd = r
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        # the newest checkpoint it left (the others wait 4 s before taking over)
        newest = ([0] + _steps(os.path.join(db + ".ckpt", "scale", f"round_{rnd:05d}")))[-1]
        break
    time.sleep(0.02)
  assert rnd is not None, "the first worker was not caught mid-round"
  procs = [victim] + [start(e) for e in errs[1:]]
  for p in procs:
    assert p.wait(timeout=600) in (0, -signal.SIGKILL)
  for p, e in zip(procs, errs, strict=True):
    if p is not victim:
      assert p.returncode == 0, open(e.name).read()[-3000:]
      log = open(e.name).read()
      assert "locked" not in log and "Traceback" not in log, log[-3000:]
  got = _trials(db)
  assert [n for n, *_ in got] == list(range(16))  # none lost, none duplicated
  assert all(s == "complete" for _, s, _, _ in got)
  rounds = _query(db, "select round, worker, status, attempts from rounds order by round")
  assert [r for r, *_ in rounds] == list(range(4)) and all(s == "done" for _, _, s, _ in rounds)
  assert len({w for _, w, _, _ in rounds}) >= 2  # the work really was shared
  lost = [m for (m,) in _query(db, "select message from events where kind = 'worker_lost'")]
  dead = f":{victim.pid}:"
  assert lost and all(dead in m for m in lost), lost
  assert any(a == 2 for *_, a in rounds)  # the killed worker's round was retried once
  restored = _query(db, "select message from events where kind = 'restore'")
  assert len(restored) == 1 and restored[0][0].startswith(f"round {rnd}: restored epoch "
                                                          f"{newest} of 2"), restored
  # random search asks independently of results: the same trials as one plain search
  task = tasks.get_task("digits_mlp")
  ref = metaopt.search(metaopt.random_search(task.space.dim), task, n_trials=16, population=4,
                       epochs=2, batch_size=128, seed=0, progress=False)
  _same_trials(got, [(t.number, t.status, json.dumps(t.params, sort_keys=True), t.objective)
                     for t in ref.trials])


def _steps(round_dir):
  """Checkpoint steps orbax has finished writing in ``round_dir``."""
  try:
    return sorted(int(d) for d in os.listdir(round_dir) if d.isdigit())
  except OSError:
    return []


def _small(**kw):
  task = tasks.get_task("digits_mlp")
  args = dict(n_trials=8, population=4, epochs=2, batch_size=128, seed=5, progress=False,
              checkpoint_every_s=0.0)
  args.update(kw)
  return task, args


class _Crash(Exception):
  pass


def _crash_after_first_epoch(rnd, epoch, metrics):
  del metrics
  if rnd == 0 and epoch == 0:
    raise _Crash("worker died")


@pytest.mark.parametrize("max_attempts", [1, 2])
def test_stale_round_is_retried_or_failed(tmp_path, max_attempts):
  """A worker that dies mid-round leaves a lease whose heartbeat goes stale: the next worker
  resumes it from its checkpoint (same trials as an uninterrupted search), or, once the round
  has had ``max_attempts`` leases, records its unfinished trials as failed."""
  task, args = _small()
  url = f"sqlite:///{tmp_path}/s.db"
  prog = metaopt.random_search(task.space.dim)
  with pytest.raises(_Crash):
    metaopt.worker(prog, task, store=url, study="s", on_epoch=_crash_after_first_epoch,
                   worker_id="w1", **args)
  st = metaopt.Store(url)
  rec = st.load_study("s")
  assert [(r["round"], r["status"], r["worker"]) for r in st.rounds(rec.id)] == [
      (0, "running", "w1")]
  last_beat = st.rounds(rec.id)[0]["heartbeat_at"]
  res = metaopt.worker(prog, task, store=url, study="s", worker_id="w2", stale_after_s=1.0,
                       max_attempts=max_attempts, poll_s=0.1, **args)
  # taken over only once w1's last heartbeat was stale (w1's own epoch may have used that
  # second already, so w2 need not have waited itself)
  (lost,) = [e for e in st.events(rec.id) if e["kind"] == "worker_lost"]
  at = datetime.datetime.fromisoformat(lost["at"])
  assert (at - last_beat).total_seconds() >= 1.0
  rounds = st.rounds(rec.id)
  assert [(r["round"], r["worker"], r["attempts"]) for r in rounds] == [(0, "w2", 2),
                                                                        (1, "w2", 1)]
  ref = metaopt.search(prog, task, **args)
  if max_attempts == 2:
    assert [r["status"] for r in rounds] == ["done", "done"]
    assert [(t.number, t.status, t.params) for t in res.trials] == [
        (t.number, t.status, t.params) for t in ref.trials]
    assert [t.objective for t in res.trials] == pytest.approx(
        [t.objective for t in ref.trials], abs=1e-6)
  else:
    assert [r["status"] for r in rounds] == ["failed", "done"]
    assert [t.status for t in res.trials] == ["failed"] * 4 + ["complete"] * 4
    assert all(t.failure_reason == "worker lost 1 times (round 0)" for t in res.trials[:4])
    assert [t.objective for t in res.trials[4:]] == pytest.approx(
        [t.objective for t in ref.trials[4:]], abs=1e-6)
  kinds = [e["kind"] for e in st.events(rec.id)]
  assert kinds.count("worker_lost") == 1
  if max_attempts == 2:  # w2 went on from w1's checkpoint of epoch 0, not from the start
    assert [e["message"] for e in st.events(rec.id) if e["kind"] == "restore"] == [
        "round 0: restored epoch 1 of 2 from checkpoint step 1"]


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_resume_skips_a_damaged_newest_checkpoint(tmp_path):
  """A search stopped after epoch 2 of 4 left checkpoint steps 2 and 3; with step 3's bytes
  damaged, the resumed search restores step 2 (not epoch 0) and ends identical to an
  uninterrupted search."""
  task, args = _small(n_trials=4, epochs=4)
  url = f"sqlite:///{tmp_path}/s.db"
  prog = metaopt.random_search(task.space.dim)

  def crash(rnd, epoch, metrics):
    if epoch == 2:
      raise _Crash("killed")

  with pytest.raises(_Crash):
    metaopt.search(prog, task, store=url, study="s", on_epoch=crash, **args)
  ckdir = f"{tmp_path}/s.db.ckpt/s"
  assert _steps(os.path.join(ckdir, "round_00000")) == [2, 3]
  assert _damage_newest_checkpoint(ckdir, 0).endswith("3")
  res = metaopt.search(prog, task, store=url, study="s", **args)
  st = metaopt.Store(url)
  assert [e["message"] for e in st.events(st.load_study("s").id) if e["kind"] == "restore"] == [
      "round 0: restored epoch 2 of 4 from checkpoint step 2; skipped unreadable steps [3]"]
  ref = metaopt.search(prog, task, **args)
  assert [(t.number, t.status, t.params, t.objective) for t in res.trials] == [
      (t.number, t.status, t.params, t.objective) for t in ref.trials]


def test_search_refuses_a_worker_study(tmp_path):
  task, args = _small(n_trials=4)
  url = f"sqlite:///{tmp_path}/s.db"
  prog = metaopt.random_search(task.space.dim)
  metaopt.worker(prog, task, store=url, study="s", **args)
  with pytest.raises(ValueError, match="is run by workers"):
    metaopt.search(prog, task, store=url, study="s", **args)
  with pytest.raises(ValueError, match="in-memory SQLite store cannot be shared"):
    metaopt.worker(prog, task, store="sqlite://", study="s", **args)


# -------------------------------------------------------------------- crash-proof resume
def _epochs_done(db):
  rows = _query(db, "select count(*) from trial_epochs")
  return rows[0][0] if rows else 0


def _checkpoint_in_progress(ckdir):
  for _, dirs, _ in os.walk(ckdir):
    if any("tmp" in d for d in dirs):
      return True
  return False


def _kill_during(proc, mode, db, ckdir, rng):
  """Waits for training progress, then kill -9s ``proc`` during ``mode``: a training chunk,
  a checkpoint write (orbax's temporary directory exists) or a store commit (the WAL file
  changes). Returns what was hit, or None if the run finished first."""
  base = _epochs_done(db)
  deadline = time.time() + 300
  while _epochs_done(db) <= base:
    if proc.poll() is not None or time.time() > deadline:
      return None
    time.sleep(0.005)
  hit = mode
  if mode == "train":
    time.sleep(rng.uniform(0.0, 0.2))
  elif mode == "checkpoint":
    t = time.time()
    while not _checkpoint_in_progress(ckdir) and proc.poll() is None:
      if time.time() - t > 20:
        hit = "train"
        break
  else:
    wal = db + "-wal"
    stamp = os.stat(wal).st_mtime_ns, os.stat(wal).st_size
    t = time.time()
    while (os.stat(wal).st_mtime_ns, os.stat(wal).st_size) == stamp and proc.poll() is None:
      if time.time() - t > 20:
        hit = "train"
        break
  if proc.poll() is not None:
    return None
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return hit


def _damage_newest_checkpoint(ckdir, rnd):
  """Flips bytes in every data file of round ``rnd``'s newest step; returns the step."""
  rdir = os.path.join(ckdir, f"round_{rnd:05d}")
  if not os.path.isdir(rdir):
    return None
  steps = sorted((d for d in os.listdir(rdir) if d.isdigit()), key=int)
  if not steps:
    return None
  sdir = os.path.join(rdir, steps[-1], "state")
  n = 0
  for root, _, files in os.walk(sdir):
    if os.sep + "d" in root:
      for f in files:
        with open(os.path.join(root, f), "r+b") as fh:
          data = bytearray(fh.read())
          for i in range(len(data) // 2, len(data)):
            data[i] ^= 0x5A
          fh.seek(0)
          fh.write(data)
        n += 1
  return os.path.join(rdir, steps[-1]) if n else None


# slow: tests/test_cli.py kills and resumes a search by default
@pytest.mark.slow
@pytest.mark.parametrize("kills", [3, 12])
def test_kill_9_at_random_points_then_resume(tmp_path, kills):
  """`run.py run` is killed -9 ``kills`` times, during training chunks, checkpoint writes and
  store commits, and restarted each time (once after its newest checkpoint was damaged): no
  completed trial is lost or changed, none is duplicated, and the study ends identical to an
  uninterrupted run with the same seed."""
  rng = random.Random(kills)
  n_trials = 16 if kills <= 4 else 48  # each kill needs an epoch of progress first
  kw = dict(pruner="median", n_trials=n_trials, population=8, epochs=4, batch_size=64)
  cfg, db = _config(tmp_path, "f", **kw)
  ckdir = os.path.join(db + ".ckpt", "scale")
  modes = ["train", "checkpoint", "commit"]
  hits, seen, damaged, attempt = [], {}, None, 0
  while len(hits) < kills and attempt < 3 * kills:
    attempt += 1
    err = open(tmp_path / f"err{attempt}.txt", "w+")
    proc = _start("run", "--config", cfg, err=err)
    hit = _kill_during(proc, modes[attempt % 3], db, ckdir, rng)
    if hit is None:  # finished before it could be killed
      assert proc.returncode == 0, open(err.name).read()[-3000:]
      break
    hits.append(hit)
    rows = _trials(db)
    assert len(rows) == len({n for n, *_ in rows})  # no duplicated trial
    done = {n: o for n, s, _, o in rows if s == "complete"}
    for n, o in seen.items():
      assert done.get(n) == o, (n, o, done.get(n))  # no completed trial lost or changed
    seen = done
    phase = _query(db, "select state_round, state_phase from studies")
    if len(hits) >= 2 and damaged is None and phase and phase[0][1] == "asked":
      damaged = _damage_newest_checkpoint(ckdir, phase[0][0])  # the round a resume restores
      damaged_log = tmp_path / f"err{attempt + 1}.txt"
  assert len(hits) >= kills, hits
  assert {"train", "checkpoint", "commit"} <= set(hits) or kills < 3, hits
  r = _cli("run", "--config", cfg)
  assert r.returncode == 0, r.stderr[-3000:]
  if damaged is not None:
    assert "unreadable" in damaged_log.read_text()  # the damaged step was detected and skipped
  got = _trials(db)
  assert [n for n, *_ in got] == list(range(n_trials))
  cfg_ref, db_ref = _config(tmp_path, "ref", **kw)
  _run_in_process(cfg_ref)  # what `run.py run --config` does, uninterrupted
  ref = _trials(db_ref)
  _same_trials(got, ref)
  assert sum(s == "pruned" for _, s, _, _ in ref) > 0  # the pruner's state was resumed too
  best = max((o, n) for n, s, _, o in got if s == "complete")
  assert best == max((o, n) for n, s, _, o in ref if s == "complete")  # identical best


def _run_in_process(path):
  import importlib.util

  from metaopt._src import config as config_lib
  spec = importlib.util.spec_from_file_location("cfg_module", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = config_lib.validate(module.get_config())
  program, task, space, kwargs = config_lib.build(cfg)
  return metaopt.search(program, task, space=space, store=metaopt.Store(cfg["store"]),
                        config=cfg, progress=False, **kwargs)


# A damaged step is never handed to orbax: when orbax-checkpoint 0.12.8's read of damaged
# bytes failed, tensorstore's reads still in flight called back into the asyncio loop orbax
# had already closed ("Event loop is closed", and "Future exception was never retrieved").
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path):
  ck = Checkpointer(str(tmp_path / "ck"))
  state = {"w": jnp.arange(64.0).reshape(8, 8), "alive": np.ones(8, bool),
           "hist": np.linspace(0.0, 1.0, 40)}
  ck.save(1, state, {"epoch": 0})
  ck.save(2, {**state, "w": state["w"] + 1.0}, {"epoch": 1})
  step, got, meta = ck.restore(state)
  assert step == 2 and meta == {"epoch": 1} and float(got["w"][0, 0]) == 1.0
  assert _damage_newest_checkpoint_dir(str(tmp_path / "ck" / "2"))
  step, got, meta = ck.restore(state)
  assert step == 1 and meta == {"epoch": 0} and float(got["w"][0, 0]) == 0.0
  ck.save(2, {**state, "w": state["w"] + 2.0}, {"epoch": 1})  # the damaged step, rewritten
  assert ck.restore(state)[0] == 2 and float(ck.restore(state)[1]["w"][0, 0]) == 2.0
  assert _damage_newest_checkpoint_dir(str(tmp_path / "ck" / "2"))
  assert _damage_newest_checkpoint_dir(str(tmp_path / "ck" / "1"))
  assert ck.restore(state) is None  # nothing readable: the round restarts from scratch


def _damage_newest_checkpoint_dir(step_dir):
  n = 0
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    if os.sep + "d" in root:
      for f in files:
        path = os.path.join(root, f)
        data = bytearray(open(path, "rb").read())
        data[-1] ^= 0x01  # one bit: still decodes, the digest catches it
        open(path, "wb").write(bytes(data))
        n += 1
  return n


# ---------------------------------------------------------------- compute and ensembles
# slow (~30 s on CI): by default tests/test_cli.py::test_run_then_report_json_and_png checks
# the same records, report totals and HTML table, and the CLI's evaluate --ensemble members
@pytest.mark.slow
def test_compute_is_recorded_reported_and_ensembles_evaluate(tmp_path):
  task, args = _small(n_trials=6, population=6)
  url = f"sqlite:///{tmp_path}/c.db"
  res = metaopt.search(metaopt.random_search(task.space.dim), task, store=url, study="c",
                       **args)
  for t in res.trials:
    assert len(t.metrics) == 2
    for m in t.metrics:
      assert m["flops"] > 1e6 and m["device_s"] > 0.0
  # every digits MLP trial of one kernel costs the same FLOPs per epoch (masked width)
  assert len({m["flops"] for t in res.trials for m in t.metrics}) == 1
  comp = compute_summary(res)
  assert comp["total_flops"] == pytest.approx(sum(m["flops"] for t in res.trials
                                                  for m in t.metrics))
  page = open(write_report(res, str(tmp_path / "rep"))["html"]).read()
  assert 'id="compute"' in page and f"{comp['total_flops'] / 1e9:.3f} GFLOPs" in page
  r = _cli("report", "--store", url, "--format", "json", "--out", str(tmp_path / "rep2"))
  assert r.returncode == 0, r.stderr[-2000:]
  rep = json.loads(r.stdout)
  assert rep["compute"]["total_flops"] == pytest.approx(comp["total_flops"])
  assert rep["compute"]["total_device_seconds"] == pytest.approx(comp["total_device_seconds"])
  st = metaopt.Store(url)
  out = evaluate_top(st, "c", task, task.space, k=2, seeds=2, ensemble=True)
  check_ensemble(out["ensemble"], out["configs"],
                 [(e["kind"], e["message"]) for e in st.events(st.load_study("c").id)])


def test_loop_kernel_flops_are_one_trials_own_step():
  """A ``"loop"`` kernel records one trial's own step and evaluation per trial-epoch: the
  same for any population size, at least the dense layers' products in closed form (2 FLOPs
  per multiply-add: forward 2, backward 4 per weight and example, 2 for the first layer, which
  needs no input gradient), below the vmapped population step's count per trial, and what a
  loop-kernel search records."""
  task, args = _small(n_trials=4, population=4, epochs=1)
  fns = task.build(dict(task.defaults))
  data = pop.data_arrays(task.data)
  sds = jax.ShapeDtypeStruct
  bs = args["batch_size"]

  def flops(n, per_trial):
    h = {k: sds((n,), v.dtype) for k, v in jax.eval_shape(
        task.space.decode, sds((n, task.space.dim), jnp.float32)).items()}
    h.setdefault("schedule_steps", sds((n,), jnp.float32))
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), n))
    states = jax.eval_shape(jax.vmap(fns.init), keys, h)
    return pop.trial_epoch_flops(fns, states, h, data, bs, per_trial=per_trial), states

  one4, states = flops(4, True)
  one8, _ = flops(8, True)
  vmapped = flops(4, False)[0]
  assert one4 == one8
  assert 0.7 * vmapped <= one4 < vmapped
  kernels = [a.shape[1:] for a in jax.tree_util.tree_leaves(states["params"]) if a.ndim == 3]
  macs = sum(i * o for i, o in kernels)  # dense kernels (population axis first)
  first = sum(i * o for i, o in kernels  # the input layer: no input gradient
              if i == np.prod(data["x_train"].shape[1:]))
  steps = data["x_train"].shape[0] // bs
  closed = steps * bs * (6 * macs - 2 * first) + 2 * data["x_valid"].shape[0] * macs
  assert closed <= one4 <= 1.5 * closed, (one4, closed)
  assert pop.default_mode() == "loop"  # one CPU device
  res = metaopt.search(metaopt.random_search(task.space.dim), task, store=None, **args)
  assert {m["flops"] for t in res.trials for m in t.metrics} == {one4}


# ----------------------------------------------------------------------------- multi-host
MULTIHOST = """
import json, os, sys
pid, port, db, ck, n_trials, population, lag = sys.argv[1:]
pid = int(pid)
if lag == "lag":  # both processes on one CPU, process 1 only runs when process 0 waits
  os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  if pid == 1:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
import metaopt
from metaopt import tasks
metaopt.initialize_distributed(f"127.0.0.1:{port}", 2, pid)
task = tasks.get_task("digits_mlp")
prog = metaopt.with_pruning(metaopt.random_search(task.space.dim),
                            metaopt.successive_halving(n_epochs=3, min_epochs=1, eta=2))
res = metaopt.search(prog, task, n_trials=int(n_trials), population=int(population), epochs=3,
                     batch_size=128, seed=4, store=f"sqlite:///{db}", study="mh",
                     checkpoint_dir=ck, progress=False, checkpoint_every_s=0.0)
print(json.dumps([[t.number, t.status, t.objective, len(t.metrics),
                   [m.get("process") for m in t.metrics]] for t in res.trials]))
"""


def _two_process_search(tmp_path, n_trials, population, lag=False):
  """The successive-halving search of ``MULTIHOST`` run by 2 processes joined by
  jax.distributed (gloo on 127.0.0.1); checks both exited cleanly with the same study, the
  store holds each trial once, and the study equals a one-process search. Returns it."""
  db, ck, port = str(tmp_path / "m.db"), str(tmp_path / "ck"), free_port()
  argvs = [[i, port, db, ck, n_trials, population, "lag" if lag else "-"] for i in range(2)]
  outs = []
  for rc, out, err in wait_all(start_scripts(MULTIHOST, argvs, tmp_path)):
    assert rc == 0 and "Traceback" not in err, failure(err)
    outs.append(json.loads(out.strip().splitlines()[-1]))
  assert outs[0] == outs[1]  # both processes end with the whole study
  two = outs[0]
  task = tasks.get_task("digits_mlp")
  prog = metaopt.with_pruning(metaopt.random_search(task.space.dim),
                              metaopt.successive_halving(n_epochs=3, min_epochs=1, eta=2))
  res = metaopt.search(prog, task, n_trials=n_trials, population=population, epochs=3,
                       batch_size=128, seed=4, progress=False, checkpoint_every_s=0.0)
  one = [[t.number, t.status, t.objective, len(t.metrics)] for t in res.trials]
  assert [t[:2] + t[3:4] for t in two] == [t[:2] + t[3:4] for t in one]
  for a, b in zip(two, one, strict=True):
    assert abs(a[2] - b[2]) <= 1e-5
  for number, *_, procs_of_epochs in two:  # trial i of a round was trained by process i % 2
    assert procs_of_epochs == [number % 2] * len(procs_of_epochs)
  assert _query(db, "select count(*), count(distinct number) from trials") == [
      (n_trials, n_trials)]
  return two, ck


@pytest.mark.alone
def test_two_processes_split_the_population_like_one_process(tmp_path):
  """`jax.distributed` with 2 processes on 127.0.0.1 (gloo): each process trains half of
  every round's population, the processes exchange epoch metrics so successive halving
  prunes the same trials, process 0 alone writes the store; the result equals one process."""
  two, ck = _two_process_search(tmp_path, n_trials=16, population=8)
  assert sum(t[1] == "pruned" for t in two) >= 8
  for rnd in ("round_00000", "round_00001"):  # each process checkpoints its own trials
    assert sorted(os.listdir(os.path.join(ck, rnd))) == ["process_0", "process_1"]


@pytest.mark.alone
def test_two_processes_stay_in_step_when_process_0_runs_ahead(tmp_path):
  """Process 1 of a 2-process successive-halving search is slow (SCHED_IDLE on the one CPU
  process 0 also runs on), so process 0 is often a round ahead in its store writes. Process 1
  used to read the study's phase from the store itself: after round r it found round r + 1
  already stored as asked, took it for a round to resume, skipped a collective and the
  search failed with "sync_global_devices name mismatch ('metaopt-start-round-1')" (7 of 7
  runs). Now process 0 hands every process what it reads, and all take the same steps."""
  two, _ = _two_process_search(tmp_path, n_trials=8, population=2, lag=True)
  assert sum(t[1] == "pruned" for t in two) >= 2


NEW_STORE = """
import json, sys
import metaopt
from metaopt import tasks
pid, port, db, ck = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
metaopt.initialize_distributed(f"127.0.0.1:{port}", 2, pid)
task = tasks.get_task("digits_mlp")
res = metaopt.search(metaopt.random_search(task.space.dim), task, n_trials=4, population=2,
                     epochs=1, batch_size=128, seed=4, store=f"sqlite:///{db}", study="new",
                     checkpoint_dir=ck, progress=False)
print(json.dumps([[t.number, t.status, t.objective] for t in res.trials]))
"""


@pytest.mark.alone
def test_two_processes_start_a_search_on_a_new_sqlite_store_together(tmp_path):
  """Both processes of a multi-host search open its new SQLite store (process 1 to read what
  process 0 writes). SQLite does not wait when a new file is switched to WAL while another
  connection writes it, so the loser failed with "database is locked" (the full scaling
  benchmark did). Here the store's write lock is held, as the first opener holds it, until
  both have met it: both wait, the search runs and every trial is recorded once."""
  port = free_port()
  db, ck = str(tmp_path / "new.db"), str(tmp_path / "ck")
  holder = hold_new_store(db)
  procs = [subprocess.Popen([sys.executable, "-c", NEW_STORE, str(i), port, db, ck], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy()) for i in range(2)]
  outs = []
  try:
    release_when_opened(holder, db, procs)
    for p in procs:
      out, err = p.communicate(timeout=600)
      assert p.returncode == 0, err[-3000:]
      outs.append(json.loads(out.strip().splitlines()[-1]))
  finally:  # one failed: the other would wait for it at jax.distributed's shutdown
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert outs[0] == outs[1] and [t[0] for t in outs[0]] == [0, 1, 2, 3]
  assert all(t[1] == "complete" for t in outs[0])
  assert _query(db, "select count(*), count(distinct number) from trials") == [(4, 4)]
  assert _query(db, "pragma journal_mode") == [("wal",)]
