"""The Study API: ask / tell / optimize / enqueue, the store, warm start, Optuna both ways."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import metaopt
from metaopt.spaces import Choice, Float, Int, Space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPACE = Space({"x": Float(-5.0, 5.0), "lr": Float(1e-4, 1.0, log=True), "n": Int(1, 8),
               "act": Choice(["relu", "tanh"])})


def _f(p):
  return (p["x"] - 1.0) ** 2 + (math.log10(p["lr"]) + 2.0) ** 2 + 0.1 * p["n"] + \
      (p["act"] == "tanh")


def _no_float32_noise(v):
  return str(v) == str(np.float32(v))


def test_ask_returns_plain_values_and_enqueued_points_first():
  study = metaopt.create_study(SPACE, "random", seed=0)
  study.enqueue({"x": 0.9, "lr": 0.01})
  study.enqueue({"x": -2.5, "lr": 0.1, "n": 3, "act": "tanh"})
  t0, t1, t2 = study.ask(3)
  assert t0.params["x"] == 0.9 and t0.params["lr"] == 0.01 and set(t0.params) == set(SPACE.params)
  assert t1.params == {"x": -2.5, "lr": 0.1, "n": 3, "act": "tanh"}
  for t in (t0, t1, t2):
    assert t.status == "running" and [t.number for t in (t0, t1, t2)] == [0, 1, 2]
    assert type(t.params["x"]) is float and type(t.params["n"]) is int
    assert type(t.params["act"]) is str
    assert _no_float32_noise(t.params["x"]) and _no_float32_noise(t.params["lr"])
  for t in (t0, t1, t2):
    study.tell(t, _f(t.params))
  assert study.best_value == min(_f(t.params) for t in (t0, t1, t2))
  assert [r["params_x"] for r in study.table()] == [t.params["x"] for t in (t0, t1, t2)]
  if importlib.util.find_spec("pandas"):
    assert list(study.to_pandas()["value"]) == [t.value for t in study.trials]
  csv_text = study.to_csv()
  assert csv_text.splitlines()[0].startswith("number,status,value") and "0.9" in csv_text


def test_tell_states_and_bad_input_change_nothing(tmp_path):
  url = f"sqlite:///{tmp_path}/s.db"
  study = metaopt.create_study(SPACE, "random", store=url, study_name="s", seed=1)
  a, b, c, d = study.ask(4)
  study.tell(a, 1.5)
  study.tell(b, None, "failed", reason="simulator crashed")
  study.tell(c, 2.5, "pruned")
  before = [(t.number, t.status, t.objective) for t in study.trials]
  bad = [(lambda: study.tell(a, 3.0), "already told"),
         (lambda: study.tell(17, 3.0), "unknown"),
         (lambda: study.tell(d, 3.0, "done"), "allowed: complete, failed, pruned"),
         (lambda: study.tell(d, "3"), "must be a number"),
         (lambda: study.tell(d), "no value"),
         (lambda: study.tell(d, {"loss": 1.0}), "metric=<key>"),
         (lambda: study.enqueue({"x": 7.0}), "x=7.0 is outside the space"),
         (lambda: study.enqueue({"n": 2.5}), "integer in [1, 8]"),
         (lambda: study.enqueue({"act": "gelu"}), "one of ['relu', 'tanh']"),
         (lambda: study.enqueue({"y": 1.0}), "unknown parameter(s) ['y']")]
  for call, msg in bad:
    with pytest.raises(ValueError) as e:
      call()
    assert msg in str(e.value), (msg, str(e.value))
  assert [(t.number, t.status, t.objective) for t in study.trials] == before
  study.tell(d, float("nan"))
  stored = metaopt.load_study("s", url).trials
  assert [t.status for t in stored] == ["complete", "failed", "pruned", "failed"]
  assert stored[1].failure_reason == "simulator crashed" and stored[2].objective == 2.5
  assert "nan" in stored[3].failure_reason


def test_bad_study_settings_fail_before_anything_is_stored(tmp_path):
  url = f"sqlite:///{tmp_path}/bad.db"
  for kwargs, msg in [({"searcher": "tpee"}, "searcher='tpee' is unknown; allowed"),
                      ({"direction": "max"}, "allowed values are 'minimize', 'maximize'"),
                      ({"warm_start": 3}, "warm_start: 3 is not a source")]:
    with pytest.raises(ValueError) as e:
      metaopt.create_study(SPACE, **{"searcher": "random", **kwargs}, store=url)
    assert msg in str(e.value)
  assert not os.path.exists(f"{tmp_path}/bad.db")


def test_optimize_tpe_finds_the_optimum_and_records_failures():
  space = Space({"x": Float(-5.0, 5.0), "y": Float(-5.0, 5.0)})
  study = metaopt.create_study(space, "tpe", seed=0)

  def objective(p):
    if p["x"] < -4.0:
      raise RuntimeError("diverged")
    if p["y"] > 4.5:
      raise metaopt.TrialPruned("too slow")
    return (p["x"] - 1.0) ** 2 + (p["y"] + 0.5) ** 2

  study.optimize(objective, n_trials=60, batch_size=2)
  assert len(study.trials) == 60 and study.best_value < 0.1
  assert abs(study.best_params["x"] - 1.0) < 0.3 and abs(study.best_params["y"] + 0.5) < 0.3
  for t in study.trials:
    if t.params["x"] < -4.0:
      assert t.status == "failed" and t.failure_reason == "RuntimeError: diverged"
    elif t.params["y"] > 4.5:
      assert t.status == "pruned" and t.failure_reason == "too slow"
    else:
      assert t.status == "complete" and t.value == pytest.approx(objective(t.params))


def test_metric_dicts_and_a_wrong_metric_name(tmp_path):
  url = f"sqlite:///{tmp_path}/m.db"
  study = metaopt.create_study(SPACE, "random", store=url, study_name="m", metric="loss")
  study.optimize(lambda p: {"loss": _f(p), "acc": 0.5}, n_trials=3, batch_size=3,
                 vectorized=False)
  assert study.trials[0].metrics == [{"epoch": 0, "loss": _f(study.trials[0].params),
                                      "acc": 0.5}]
  with pytest.raises(ValueError, match=r"metric 'loss' is not among the told metrics \['acc'\]"):
    study.optimize(lambda p: {"acc": 0.5}, n_trials=2)
  stored = metaopt.load_study("m", url).trials
  assert [t.status for t in stored] == ["complete"] * 3 + ["failed"]
  assert "metric 'loss'" in stored[3].failure_reason


def test_store_round_trip_continues_exactly(tmp_path):
  url = f"sqlite:///{tmp_path}/r.db"
  opts = {"n_startup": 4}
  a = metaopt.create_study(SPACE, "tpe", store=url, study_name="r", seed=3,
                           searcher_options=opts)
  a.optimize(_f, n_trials=8, batch_size=2)
  b = metaopt.create_study(SPACE, "tpe", seed=3, searcher_options=opts)
  assert b._program is a._program  # built once per settings, its ask / tell compiled once
  compiles = []

  def listen(e, d, **_):
    if e.endswith("backend_compile_duration"):
      compiles.append(e)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    b.optimize(_f, n_trials=8, batch_size=2)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert compiles == []
  loaded = metaopt.load_study("r", url)
  assert [(t.params, t.value) for t in loaded.trials] == [(t.params, t.value) for t in a.trials]
  assert loaded.best_trial.number == a.best_trial.number
  assert [t.params for t in loaded.ask(2)] == [t.params for t in b.ask(2)]
  with pytest.raises(ValueError, match=r"different settings \(fields \['direction'\]\)"):
    metaopt.create_study(SPACE, "tpe", store=url, study_name="r", seed=3,
                         searcher_options=opts, direction="maximize")


def test_warm_start_tells_priors_evaluates_best_first_and_records_sources(tmp_path):
  url = f"sqlite:///{tmp_path}/w.db"
  src = metaopt.create_study(SPACE, "random", store=url, study_name="src", seed=0)
  src.optimize(_f, n_trials=150, batch_size=50)
  best3 = sorted((t for t in src.trials), key=lambda t: t.value)[:3]
  new = metaopt.create_study(SPACE, "tpe", store=url, study_name="new", seed=1,
                             warm_start=(url, "src"))
  assert int(new._state["count"]) == 150 and new._state["y"].shape[0] == 256  # grown history
  first = new.ask(4)
  assert [t.params for t in first[:3]] == [t.params for t in best3]
  assert new.warm_start_sources == [{"study": "src", "store": url, "n_complete": 150,
                                     "n_used": 150}]
  st = metaopt.Store(url)
  rec = st.load_study("new")
  assert rec.config["warm_start"] == new.warm_start_sources
  (ev,) = [e for e in st.events(rec.id) if e["kind"] == "warm_start"]
  assert json.loads(ev["message"])["prior_observations"] == 150
  # a narrower space keeps only the source trials that fit it
  narrow = Space({"x": Float(0.0, 5.0), "lr": Float(1e-4, 1.0, log=True)})
  part = metaopt.create_study(narrow, "random", warm_start=src)
  assert part.warm_start_sources[0]["n_used"] == sum(t.params["x"] >= 0 for t in src.trials)


def test_tpe_weighs_warm_start_priors_by_how_well_they_rank_own_rows(tmp_path):
  from metaopt._src.tpe import prior_rows, source_weight, tpe

  # each function jitted (one compile each, not one per op; as the searcher runs them)
  x = np.asarray(jax.random.uniform(jax.random.key(0), (40, 2)))
  f = x[:, 0] + 2.0 * x[:, 1]
  src, valid = np.arange(40) < 30, np.ones(40, bool)
  pairs = 10 * 9 / 2  # own rows 30..39, all values distinct
  weight = jax.jit(source_weight)
  same = float(weight(x, f, valid, src))
  flipped = float(weight(x, np.where(src, f, -f), valid, src))
  assert same > 0.8  # the sources rank a task like theirs well
  assert flipped == pytest.approx(10.0 / (10.0 + pairs))  # reversed order: only the pseudo-pairs
  assert float(weight(x, f, np.arange(40) < 30, src)) == 1.0  # no own rows yet
  # the first n_prior rows told are the priors, until the ring buffer overwrites them
  s = tpe(2, capacity=8)
  tell = jax.jit(s.tell)
  st = tell(jax.jit(s.init)(None), x[:6], f[:6], np.zeros(6, np.int32))
  st = tell({**st, "n_prior": st["count"]}, x[6:10], f[6:10], np.zeros(4, np.int32))
  assert np.asarray(jax.jit(prior_rows)(st)).tolist() == [False, False, True, True, True, True,
                                                          False, False]
  study = metaopt.create_study(SPACE, "tpe", seed=0)
  study.optimize(_f, n_trials=12)
  url = f"sqlite:///{tmp_path}/p.db"
  warm = metaopt.create_study(SPACE, "tpe", seed=1, warm_start=study, store=url,
                              study_name="warm")
  assert int(warm._state["n_prior"]) == 12 and int(np.sum(prior_rows(warm._state))) == 12
  warm.optimize(_f, n_trials=2)
  again = metaopt.create_study(SPACE, "tpe", seed=1, store=url, study_name="warm")  # resumed
  assert int(again._state["n_prior"]) == 12 and int(again._state["count"]) == 14
  assert "n_prior" not in study._state  # a study without priors runs plain TPE
  with pytest.raises(ValueError, match="prior_weighting='x': must be 'ranking'"):
    tpe(2, prior_weighting="x")


def test_optuna_export_and_import_round_trip(tmp_path):
  optuna = pytest.importorskip("optuna")
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = metaopt.create_study(SPACE, "random", study_name="ours", seed=0)
  study.optimize(_f, n_trials=6)
  t = study.ask()[0]
  study.tell(t, None, "failed", reason="boom")
  storage = f"sqlite:///{tmp_path}/optuna.db"
  ost = study.to_optuna(storage)
  with pytest.raises(ValueError, match="already has an Optuna study 'ours'; pass study_name"):
    study.to_optuna(storage)
  assert len(study.to_optuna(storage, replace=True).trials) == 7
  back = optuna.load_study(study_name="ours", storage=storage)
  done = back.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
  assert [(o.params, o.value) for o in done] == [(t.params, t.value) for t in study.trials[:6]]
  assert back.best_value == study.best_value and len(ost.trials) == 7
  assert back.trials[6].state == optuna.trial.TrialState.FAIL
  # a native Optuna study warm-starts a metaopt study over the same space
  native = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
  for _ in range(5):
    tr = native.ask()
    native.tell(tr, tr.suggest_float("x", -5, 5) ** 2 + tr.suggest_int("n", 1, 8))
  ours = metaopt.from_optuna(native, "tpe", seed=0)
  assert set(ours.space.params) == {"x", "n"} and int(ours._state["count"]) == 5
  assert ours.ask()[0].params == native.best_params
  again = metaopt.from_optuna(back, "random")
  assert again.warm_start_sources[0]["n_used"] == 6


def test_run_py_report_reads_a_python_study(tmp_path):
  url = f"sqlite:///{tmp_path}/py.db"
  study = metaopt.create_study(SPACE, "random", store=url, study_name="py", seed=0,
                               direction="minimize")
  study.optimize(_f, n_trials=5)
  r = subprocess.run([sys.executable, "run.py", "report", "--store", url, "--format", "json",
                      "--out", str(tmp_path / "rep"), "--quiet"], cwd=ROOT, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout)
  assert out["n_trials"] == 5 and out["best"]["number"] == study.best_trial.number
  assert out["best"]["params"] == study.best_params


@pytest.mark.slow
def test_run_py_resume_points_a_python_study_to_load_study(tmp_path):
  url = f"sqlite:///{tmp_path}/py.db"
  metaopt.create_study(SPACE, "random", store=url, study_name="py").optimize(_f, n_trials=2)
  r = subprocess.run([sys.executable, "run.py", "resume", "--store", url, "--quiet"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and "metaopt.load_study" in r.stderr
  r = subprocess.run([sys.executable, "run.py", "evaluate", "--store", url, "--quiet"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and "no task to retrain" in r.stderr


def test_optimize_takes_optuna_s_timeout_callbacks_and_stop():
  """An Optuna user's study.optimize(objective, n_trials=100, timeout=600, callbacks=[cb])
  raised TypeError: unexpected keyword argument 'timeout'; study.stop() did not exist."""
  import time

  study = metaopt.create_study(SPACE, "random", seed=0)
  seen = []

  def stop_at_five(st, trial):
    seen.append((trial.number, trial.status, trial.value))
    if len(seen) == 5:
      st.stop()

  study.optimize(_f, n_trials=50, batch_size=2, callbacks=[stop_at_five])
  assert [(n, s) for n, s, _ in seen] == [(i, "complete") for i in range(6)]  # its batch ends
  assert [v for _, _, v in seen] == [t.value for t in study.trials]
  study.optimize(_f, timeout=0)  # no batch starts once the time is up
  assert len(study.trials) == 6

  def slow(p):
    time.sleep(0.02)
    return _f(p)

  study.optimize(slow, timeout=0.2)  # n_trials=None: until the timeout
  assert len(study.trials) > 6 and all(t.status == "complete" for t in study.trials)
  for kwargs, match in (({}, r"n_trials=None: give n_trials, timeout"),
                        ({"timeout": -1}, r"timeout=-1: must be a number of seconds >= 0"),
                        ({"n_trials": 2, "callbacks": [1]}, r"callbacks: expected a list")):
    with pytest.raises(ValueError, match=match):
      study.optimize(_f, **kwargs)


def test_load_study_opens_its_store_once(tmp_path):
  """load_study opened the store to read the study, closed it and opened it again to write
  (two engines, two connections: on PostgreSQL two handshakes); it opens it once, to write."""
  import sqlalchemy as sa

  url = f"sqlite:///{tmp_path}/once.db"
  metaopt.create_study(SPACE, "random", store=url, study_name="s", seed=0).optimize(
      _f, n_trials=4, batch_size=2)
  opened = []

  def first_connect(dbapi_connection, record):
    opened.append(dbapi_connection)

  sa.event.listen(sa.pool.Pool, "first_connect", first_connect)
  try:
    study = metaopt.load_study("s", url)
    assert len(opened) == 1
    study.optimize(_f, n_trials=2, batch_size=2)  # it writes through that store
    assert len(opened) == 1
  finally:
    sa.event.remove(sa.pool.Pool, "first_connect", first_connect)
  assert [t.number for t in metaopt.load_study("s", url).trials] == list(range(6))


def test_optimize_runs_rounds_through_the_search_loop(tmp_path):
  """``optimize`` runs each batch as one round of the loop (``CallableEvaluator`` and
  ``metaopt.search`` share its handling of pruned trials and broken batched objectives);
  what the study holds in memory is what the store holds."""
  url = f"sqlite:///{tmp_path}/o.db"
  study = metaopt.create_study(SPACE, "random", store=url, study_name="o", seed=2)

  def objective(ps):
    if len(ps) == 2:
      return [1.0]  # a broken batched objective: one value for two trials
    return [metaopt.TrialPruned("slow") if p["x"] > 2.5 else _f(p) for p in ps]

  def vectorized(ps):
    out = objective(ps)
    for v in out:
      if isinstance(v, Exception):
        raise v
    return out

  study.optimize(vectorized, n_trials=6, batch_size=3, vectorized=True)
  with pytest.raises(ValueError, match="returned 1 values for 2 trials"):
    study.optimize(vectorized, n_trials=2, batch_size=2, vectorized=True)
  st = metaopt.Store(url)
  rec = st.load_study("o")
  stored = st.trials(rec.id)
  assert [(t.number, t.status, t.objective) for t in stored] == \
      [(t.number, t.status, t.objective) for t in study.trials]
  assert [t.status for t in stored[6:]] == ["running", "running"]  # the stopped round
  assert [e["kind"] for e in st.events(rec.id)][-1] == "failed"
  for t in stored[:6]:
    rnd = [u for u in stored[:6] if u.round == t.round]
    if any(u.params["x"] > 2.5 for u in rnd):
      assert t.status == "pruned" and t.failure_reason == "slow"
    else:
      assert t.status == "complete" and t.metrics == [{"epoch": 0, "objective": t.value}]
  # one trial at a time, metaopt.search prunes what the objective prunes
  res = metaopt.search(metaopt.sobol(SPACE.dim), metaopt.CallableEvaluator(
      lambda p: vectorized([p])[0]), space=SPACE, n_trials=8, population=4, progress=False)
  assert {t.status for t in res.trials} == {"pruned", "complete"}
  assert all(t.failure_reason == "slow" for t in res.trials if t.status == "pruned")


def test_a_pruned_aware_tpe_learns_from_pruned_trials_told_to_a_study():
  """``tpe(pruned="rank")`` in a Study, by name (its history grown as rows arrive) and as a
  searcher object: pruned trials with a value join the history (0 epochs each: a Study has
  no epochs), and the grown history keeps their steps."""
  from metaopt._src import tpe as tpe_mod
  from metaopt._src.study import _TPE_CAPACITY

  space = Space({"x": Float(0.0, 1.0)})
  n = _TPE_CAPACITY + 6  # past the first capacity: the named TPE's history grows once
  for searcher, opts in (("tpe", {"pruned": "rank", "n_startup": 4}),
                         (metaopt.tpe(1, pruned="rank", n_startup=4), None)):
    study = metaopt.create_study(space, searcher, seed=0, searcher_options=opts)
    for i in range(n):
      (t,) = study.ask()
      v = (t.params["x"] - 0.3) ** 2
      study.tell(t, v + 1.0 if i % 2 else v, state="pruned" if i % 2 else "complete")
    st = study._state
    assert int(st["count"]) == n  # pruned rows counted too ("ignore" would hold n // 2)
    valid = np.asarray(st["valid"])
    steps = np.asarray(st["step"])[valid]
    assert np.sum(steps == tpe_mod.COMPLETE_STEP) == n - n // 2  # even i: complete
    assert np.sum(steps == 0) == n // 2  # odd i: pruned
