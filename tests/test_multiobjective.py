"""Multi-objective search: sorting and hypervolume against brute force, the searchers against
random search on ZDT1 and on a two-objective HPO task (digits MLP: error vs FLOPs), vector
``tell`` errors, and a two-objective study through the driver and the store.

The default run keeps the exact checks (sorting, hypervolume, vector ``tell`` errors, scan vs
loop, constraints, config validation) and one small study; the searcher-quality comparisons,
the pruner study and the NAS runs are ``slow``."""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _tiny_nas import tiny_nas_config

import metaopt
from metaopt._src.mosearch import _hssp_2d, _split_good
from metaopt._src.multiobjective import (
  hypervolume,
  hypervolume_2d,
  hypervolume_contributions_2d,
  nondominated_rank,
)


def _dominates(a, b):
  return np.all(a <= b) and np.any(a < b)


def _ranks_brute(y):
  n = len(y)
  rank = np.full(n, -1)
  r = 0
  while np.any(rank < 0):
    left = [i for i in range(n) if rank[i] < 0]
    front = [i for i in left if not any(_dominates(y[j], y[i]) for j in left)]
    rank[front] = r
    r += 1
  return rank


def _hv_inclusion_exclusion(y, ref):
  """Exact hypervolume as the signed sum over all subsets of their boxes' intersection."""
  y = [p for p in y if np.all(p < ref)]
  total = 0.0
  for k in range(1, len(y) + 1):
    for sub in itertools.combinations(y, k):
      corner = np.max(np.stack(sub), axis=0)
      total += (-1) ** (k + 1) * np.prod(ref - corner)
  return total


@pytest.mark.parametrize("m", [2, 3, 4])
def test_nondominated_rank_matches_brute_force(m):
  rng = np.random.default_rng(m)
  y = np.round(rng.random((25, m)), 1)  # rounding makes ties and duplicates
  got = jax.jit(nondominated_rank)(jnp.asarray(y))
  np.testing.assert_array_equal(np.asarray(got), _ranks_brute(y))


@pytest.mark.parametrize("m,n", [(2, 9), (3, 8), (4, 7)])
def test_hypervolume_matches_inclusion_exclusion(m, n):
  rng = np.random.default_rng(10 + m)
  for _ in range(5):
    y = rng.random((n, m))
    ref = np.full(m, 1.05)
    y[0] = 1.2  # outside the reference box: counts for nothing
    want = _hv_inclusion_exclusion(y, ref)
    assert hypervolume(y, ref) == pytest.approx(want, rel=1e-9)
    if m == 2:
      got = float(hypervolume_2d(jnp.asarray(y, jnp.float32), jnp.asarray(ref, jnp.float32)))
      assert got == pytest.approx(want, rel=1e-5)
  valid = np.ones(n, bool)
  valid[1] = False
  assert hypervolume(y, ref, valid) == pytest.approx(
      _hv_inclusion_exclusion(np.delete(y, 1, 0), ref), rel=1e-9)


def test_hypervolume_contributions_and_hssp_match_brute_force():
  rng = np.random.default_rng(3)
  y = rng.random((30, 2))
  got = np.asarray(jax.jit(hypervolume_contributions_2d)(jnp.asarray(y, jnp.float32)))
  rank = _ranks_brute(y)
  front = np.flatnonzero(rank == 0)
  # interior points of the first front: exclusive contribution = HV(F) - HV(F \ {i}),
  # measured with a reference point at the front's own extremes
  f = y[front]
  ref = np.asarray([f[:, 0].max(), f[:, 1].max()])
  for i in front:
    if got[i] != np.inf:
      rest = y[[j for j in front if j != i]]
      want = hypervolume(f, ref) - hypervolume(rest, ref)
      assert got[i] == pytest.approx(want, rel=1e-4, abs=1e-7)
  assert np.sum(np.isinf(got[front])) == 2
  # greedy HSSP picks, step by step, the point that adds the most hypervolume
  cand = jnp.asarray(rank == 0)
  pick = np.flatnonzero(np.asarray(jax.jit(_hssp_2d)(jnp.asarray(y, jnp.float32), cand,
                                                     jnp.asarray(3))))
  worst = f.max(axis=0)
  ref = np.maximum(1.1 * worst, 0.9 * worst)
  chosen = []
  for _ in range(3):
    best = max((i for i in front if i not in chosen),
               key=lambda i: hypervolume(y[chosen + [i]], ref))
    chosen.append(best)
  assert sorted(pick.tolist()) == sorted(chosen)
  # the good set takes whole fronts first
  good = np.asarray(jax.jit(_split_good)(jnp.asarray(y, jnp.float32), jnp.ones(30, bool),
                                         jnp.asarray(len(front) + 2)))
  assert good.sum() == len(front) + 2 and np.all(good[front])


@pytest.mark.parametrize("n", [1, 25, 26, 27, 60])
def test_motpe_bad_set_weights_are_optunas_default_weights(n):
  """The bad density of MOTPE weighs its observations as Optuna's ``default_weights``: the
  newest 25 weigh 1, older ones ramp up linearly from 1/n, in order of age (a ring buffer
  that wrapped, with some rows outside the set)."""
  from optuna.samplers._tpe.sampler import default_weights

  from metaopt._src.tpe import _ramp_logw
  cap = 80
  rng = np.random.default_rng(n)
  age = (np.arange(cap) - 37) % cap  # slot 37 holds the oldest row
  mask = np.zeros(cap, bool)
  mask[rng.choice(cap, n, replace=False)] = True
  got = np.exp(np.asarray(jax.jit(_ramp_logw)(jnp.asarray(mask), jnp.asarray(age))))
  order = np.flatnonzero(mask)[np.argsort(age[mask])]
  np.testing.assert_allclose(got[order], default_weights(n), rtol=1e-5)
  assert np.all(got[~mask] == 0)


SEARCHERS = {
    "nsga2": lambda d: metaopt.nsga2(d, pop_size=10),
    "motpe": lambda d: metaopt.motpe(d),
    "parego": lambda d: metaopt.parego(d, capacity=64, fit_steps=20, n_candidates=128,
                                       n_local=32, grad_steps=5, n_exploit=0),
}


def _run(s, f, evals, batch, seed):
  ask, tell = jax.jit(s.ask, static_argnums=2), jax.jit(s.tell)
  state = s.init(jax.random.key(seed))
  ys = []
  for i in range(evals // batch):
    state, u = ask(state, jax.random.key(1000 * seed + i), batch)
    y = jnp.asarray(f(u), jnp.float32)
    state = tell(state, u, y, jnp.zeros(batch, jnp.int32))
    ys.append(np.asarray(y))
  return np.concatenate(ys)


_ZDT1 = jax.jit(metaopt.zdt1)
_SEEDS = range(3)


@pytest.fixture(scope="module")
def random_zdt1():
  return [hypervolume(_run(metaopt.random_search(5), _ZDT1, 80, 8, s), [1.1, 11.0])
          for s in _SEEDS]


@pytest.mark.slow  # ~8 s: a quality check, not a contract
@pytest.mark.parametrize("name", ["nsga2", "motpe", "parego"])
def test_searcher_beats_random_on_zdt1(name, random_zdt1):
  s = SEARCHERS[name](5)
  hv = [hypervolume(_run(s, _ZDT1, 80, 8, seed), [1.1, 11.0]) for seed in _SEEDS]
  assert np.mean(hv) > np.mean(random_zdt1), (hv, random_zdt1)


class _MaskedMLP(nn.Module):
  @nn.compact
  def __call__(self, x, width):
    h = nn.relu(nn.Dense(64)(x)) * (jnp.arange(64) < width)  # only `width` hidden units
    return nn.Dense(10)(h)


def digits_hpo_task():
  """Two-objective HPO on digits: (validation error, forward FLOPs per example) of a flax MLP
  whose hidden width, learning rate and weight decay come from ``u[:, 0:3]``; a batch of
  points trains as one vmapped kernel (80 full-batch Adam steps). Returns ``(f, ref)``."""
  from metaopt.tasks._src.data import load_dataset
  ds = load_dataset("digits")
  xt, yt = jnp.asarray(ds.train.x.reshape(len(ds.train), -1)), jnp.asarray(ds.train.y)
  xv, yv = jnp.asarray(ds.valid.x.reshape(len(ds.valid), -1)), jnp.asarray(ds.valid.y)
  model = _MaskedMLP()

  def one(u):
    width = 1 + jnp.floor(u[1] * 63.999)
    opt = optax.adamw(10.0 ** (-3.0 + 2.5 * u[0]), weight_decay=10.0 ** (-5.0 + 4.0 * u[2]))
    params = model.init(jax.random.key(0), xt[:1], width)
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        model.apply(p, xt, width), yt).mean()

    def step(c, _):
      p, s = c
      upd, s = opt.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, upd), s), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=80)
    err = jnp.mean(jnp.argmax(model.apply(params, xv, width), -1) != yv)
    flops = 2.0 * width * (xt.shape[1] + 10)
    return jnp.stack([err, flops / 1000.0])

  f = jax.jit(jax.vmap(one))
  ref = [1.0, 2.0 * 64 * (xt.shape[1] + 10) / 1000.0 * 1.01]
  return f, ref


@pytest.fixture(scope="module")
def digits_hpo():
  f, ref = digits_hpo_task()
  rand = [hypervolume(_run(metaopt.random_search(3), f, 80, 8, s), ref) for s in _SEEDS]
  return f, ref, rand


@pytest.mark.slow  # ~45 s: trains 3 x 80 MLPs per searcher (ParEGO: one GP fit per point)
# ParEGO's stratified per-point weights were chosen on seeds 3-9 (mean hypervolume 8.93 vs
# random's 8.80); seeds 0-2 here were not used to choose (one weight draw per batch, the old
# rule, was behind random on them: 8.81 vs 8.88).
@pytest.mark.parametrize("name", ["nsga2", "motpe", "parego"])
def test_searcher_beats_random_on_digits_hpo(name, digits_hpo):
  f, ref, rand = digits_hpo
  s = {"nsga2": lambda: metaopt.nsga2(3, pop_size=8),
       "motpe": lambda: metaopt.motpe(3, n_startup=8),
       "parego": lambda: SEARCHERS["parego"](3)}[name]()
  hv = [hypervolume(_run(s, f, 80, 8, seed), ref) for seed in _SEEDS]
  assert np.mean(hv) > np.mean(rand), (hv, rand)


@pytest.mark.parametrize("name", [
    "nsga2", "motpe", pytest.param("parego", marks=pytest.mark.slow)])
def test_vector_tell_errors(name):
  s = SEARCHERS[name](3)
  state, u = s.init(jax.random.key(0)), jax.random.uniform(jax.random.key(1), (4, 3))
  ok = jnp.zeros(4, jnp.int32)
  with pytest.raises(ValueError, match=r"n_objectives=2, so y must have shape \(4, 2\)"):
    s.tell(state, u, jnp.zeros((4, 3)), ok)
  with pytest.raises(ValueError, match="must have shape"):
    jax.jit(s.tell)(state, u, jnp.zeros(4), ok)  # the shape is checked under jit too
  y = jnp.zeros((4, 2)).at[2, 1].set(jnp.nan)
  with pytest.raises(ValueError, match=r"rows \[2\] have non-finite values with status COMPLETE"):
    s.tell(state, u, y, ok)
  # a failed trial may carry NaN; it is not remembered
  failed = ok.at[2].set(metaopt.FAILED)
  assert metaopt.check_vector_tell(y, failed, 2, 4).shape == (4, 2)
  new = jax.jit(s.tell)(state, u, y, failed)
  valid = new["archive"]["valid"] if name == "nsga2" else (
      new["gp"]["valid"] if name == "parego" else new["valid"])
  assert int(jnp.sum(valid)) == 3
  with pytest.raises(ValueError, match="n_objectives=1"):
    metaopt.nsga2(3, n_objectives=1)


@pytest.mark.parametrize("name", ["nsga2", pytest.param("motpe", marks=pytest.mark.slow)])
def test_nsga2_and_motpe_run_in_scan(name):
  """ask/tell compose under ``lax.scan`` and give the same points as a Python loop."""
  for s in ([metaopt.nsga2(4, pop_size=4)] if name == "nsga2"
            else [metaopt.motpe(4, n_startup=4, capacity=16)]):
    def step(state, key, s=s):
      state, u = s.ask(state, key, 2)
      return s.tell(state, u, metaopt.zdt1(u), jnp.zeros(2, jnp.int32)), u
    keys = jax.random.split(jax.random.key(0), 6)
    _, u_scan = jax.jit(lambda st, ks, step=step: jax.lax.scan(step, st, ks))(
        s.init(jax.random.key(1)), keys)
    state, us, jstep = s.init(jax.random.key(1)), [], jax.jit(step)
    for k in keys:
      state, u = jstep(state, k)
      us.append(u)
    np.testing.assert_allclose(np.asarray(u_scan), np.stack(us), atol=1e-5)


def test_search_refuses_bad_objectives():
  """A single-objective searcher told 2 objectives, and a direction other than minimize /
  maximize, are refused by ``metaopt.search`` with one ValueError each, before anything is
  compiled (the searcher's tell is only traced, on a traced key)."""
  from metaopt._src import compile_cache
  from metaopt.tasks import get_task
  task = get_task("digits_mlp")
  objs = [("valid_accuracy", "maximize"), ("live_weights", "minimize")]
  tpe, nsga2 = metaopt.tpe(task.space.dim), metaopt.nsga2(task.space.dim)
  before = compile_cache.compiles()
  with pytest.raises(ValueError, match="cannot be told 2 objectives"):
    metaopt.search(tpe, task, n_trials=4, population=4, epochs=1, objectives=objs,
                   progress=False)
  with pytest.raises(ValueError, match="direction 'up'"):
    metaopt.search(nsga2, task, n_trials=4, population=4, epochs=1,
                   objectives=[("valid_accuracy", "up")], progress=False)
  assert compile_cache.compiles() == before, compile_cache.compiles() - before


# slow (~46 s in CI: one digits-MLP search, compile-bound). By default: the refusals above,
# the vector tell (test_vector_tell_errors), NSGA-II in a scan (test_nsga2_and_motpe_run_in_scan),
# the objectives in configs (test_config_declares_objectives_and_refuses_mismatches) and the
# store's single-objective reading (test_a_store_from_before_the_objective_tables_...)
@pytest.mark.slow
def test_search_with_two_objectives_end_to_end(tmp_path):
  """A study declaring (accuracy up, live weights down): the searcher is told both, the
  store keeps both (and gives them back after reopening), the Result gives the front and
  its hypervolume."""
  from metaopt.tasks import get_task
  task = get_task("digits_mlp")
  objs = [("valid_accuracy", "maximize"), ("live_weights", "minimize")]
  url = f"sqlite:///{tmp_path}/mo.db"
  res = metaopt.search(metaopt.nsga2(task.space.dim, pop_size=4), task, n_trials=8,
                       population=4, epochs=1, batch_size=64, store=url, study="mo",
                       objectives=objs, progress=False)
  assert res.objectives == objs and res.count("complete") == 8
  for t in res.trials:
    assert len(t.values) == 2 and t.values[0] == pytest.approx(t.objective)
    assert t.values[1] == metaopt.param_counter(task)(t.params)
  front = res.pareto_front()
  assert front and all(not any(o.values[0] >= t.values[0] and o.values[1] <= t.values[1]
                                and o.values != t.values for o in res.trials) for t in front)
  ref = res.reference_point()
  y = np.asarray([[-t.values[0], t.values[1]] for t in res.trials])
  assert res.hypervolume() == pytest.approx(hypervolume(y, [-ref[0], ref[1]]))
  summary = res.summary()
  assert summary["hypervolume"] > 0 and {p["number"] for p in summary["objectives_front"]} == {
      t.number for t in front}
  # the searcher state saw both objectives: its archive holds the best 4 by rank
  archive = res.state["archive"]
  assert np.asarray(archive["valid"]).all()
  st = metaopt.Store(url)
  assert st.objectives(st.load_study("mo").id) == objs
  assert [t.values for t in st.trials(st.load_study("mo").id)] == [t.values for t in res.trials]


def test_constraints_combine_with_several_objectives():
  """with_constraints(n_objectives=2) over NSGA-II on ZDT1 with u0 <= 0.3: infeasible points
  are told values every feasible one dominates, so the archive ends up feasible."""
  s = metaopt.with_constraints(metaopt.nsga2(4, pop_size=6), lambda u: u[:, 0] - 0.3,
                               n_objectives=2)
  ask, tell = jax.jit(s.ask, static_argnums=2), jax.jit(s.tell)
  state = s.init(jax.random.key(0))
  for i in range(8):
    state, u = ask(state, jax.random.key(i), 6)
    state = tell(state, u, metaopt.zdt1(u), jnp.zeros(6, jnp.int32))
  a = state["inner"]["archive"]
  assert bool(jnp.all(a["valid"])) and bool(jnp.all(a["x"][:, 0] <= 0.3))
  # told values: infeasible rows worse than the worst feasible on every objective
  u = jnp.asarray([[0.1, 0, 0, 0], [0.9, 0, 0, 0]], jnp.float32)
  y = metaopt.zdt1(u)
  s2 = metaopt.with_constraints(metaopt.motpe(4), lambda u: u[:, 0] - 0.3, n_objectives=2)
  st = s2.tell(s2.init(jax.random.key(0)), u, y, jnp.zeros(2, jnp.int32))
  told = st["inner"]["y"][:2]
  assert bool(jnp.all(told[1] > told[0])) and np.allclose(told[0], y[0])
  with pytest.raises(ValueError, match="must have shape"):
    s2.tell(s2.init(jax.random.key(0)), u, y[:, :1], jnp.zeros(2, jnp.int32))


@pytest.mark.slow  # ~6 s; the end-to-end study covers the vector tell through the loop
def test_pareto_pruner_keeps_trials_non_dominated_at_their_rung(tmp_path):
  from metaopt.tasks import get_task
  task = get_task("digits_mlp")
  objs = [("valid_accuracy", "maximize"), ("live_weights", "minimize")]
  prog = metaopt.with_pruning(metaopt.random_search(task.space.dim),
                              metaopt.pareto_pruner(n_epochs=3, min_epochs=1, eta=3))
  res = metaopt.search(prog, task, n_trials=6, population=6, epochs=3, batch_size=64,
                       seed=3, objectives=objs, progress=False)
  pruned = [t for t in res.trials if t.status == "pruned"]
  assert pruned and res.count("complete") >= 2
  count = metaopt.param_counter(task)
  at = {t.number: (t.metrics[0]["valid_accuracy"], count(t.params)) for t in res.trials}
  for t in res.trials:  # the rung is after the first epoch
    a, w = at[t.number]
    dominated = any(a2 >= a and w2 <= w and (a2, w2) != (a, w) for a2, w2 in at.values())
    if t.status == "pruned":
      assert dominated and len(t.metrics) == 1
    else:
      assert len(t.metrics) == 3
  assert all(t.values is None or t.status != "pruned" or t.values[0] is not None
             for t in res.trials)


# ------------------------------------------------------------------ hardware-aware NAS
@pytest.mark.slow
def test_blackbox_nas_searches_accuracy_and_flops(tmp_path):
  """configs/darts_pareto_shapes.py end to end (tiny): NSGA-II over the cell space with
  (accuracy, FLOPs); both values stored per candidate, the output's Pareto front is the
  non-dominated set of the stored values."""
  from metaopt import nas
  cfg = tiny_nas_config("configs/darts_pareto_shapes.py",
                        fallback={"trials": 8, "population": 4, "epochs": 1},
                        retrain={"seeds": 1, "epochs": 1})
  store = metaopt.Store(f"sqlite:///{tmp_path}/p.db")
  out = nas.run_config(cfg, store, progress=False)
  fb = out["fallback"]
  rec = store.load_study(None)
  assert store.objectives(rec.id) == [("valid_acc", "maximize"), ("flops", "minimize")]
  cand = [t for t in store.trials(rec.id) if t.params.get("role") == "fallback"]
  assert len(cand) == 8 and all(len(t.values) == 2 for t in cand)
  pts = {t.number: (t.values[0], t.values[1]) for t in cand if t.status == "complete"}
  front = {n for n, (a, f) in pts.items()
           if not any(a2 >= a and f2 <= f and (a2, f2) != (a, f) for a2, f2 in pts.values())}
  assert {p["trial"] for p in fb["pareto_front"]} == front
  assert fb["hypervolume"] > 0 and fb["objectives"] == ["accuracy", "flops"]
  with pytest.raises(ValueError, match="fallback.objectives"):
    nas.parse_config(tiny_nas_config("configs/darts_pareto_shapes.py",
                                     fallback={"objectives": ["flops"]}))
  with pytest.raises(ValueError, match="multi-objective searcher"):
    nas.parse_config(tiny_nas_config("configs/darts_pareto_shapes.py",
                                     fallback={"searcher": "evolution"}))


def test_config_declares_objectives_and_refuses_mismatches():
  from metaopt._src import config as config_lib
  from metaopt.configs import nsga2_mlp
  cfg = nsga2_mlp.get_config().to_dict()
  program, _, _, kwargs = config_lib.build(cfg)
  assert kwargs["objectives"] == [("valid_accuracy", "maximize"), ("live_weights", "minimize")]
  with pytest.raises(ValueError, match="searcher 'tpe'"):
    config_lib.build({**cfg, "searcher_name": "tpe", "searcher": {}})
  with pytest.raises(ValueError, match="n_objectives=2, so y must have shape"):
    config_lib.build({**cfg, "objectives": [], "searcher": {}})
  with pytest.raises(ValueError, match="declare objectives"):
    config_lib.build({**cfg, "objectives": [], "searcher_name": "random", "searcher": {}})
  with pytest.raises(ValueError, match="objectives="):
    config_lib.validate({**cfg, "objectives": [["valid_accuracy", "up"]]})
  with pytest.raises(ValueError, match="workers run single-objective studies"):
    config_lib.run_config(cfg, metaopt.Store("sqlite://"), progress=False, worker=True)


@pytest.mark.slow  # the same path as test_search_with_two_objectives_end_to_end
def test_readme_several_objectives_example_runs(tmp_path):
  import re

  from metaopt import tasks
  readme = open("README.md").read()
  (code,) = [b for b in re.findall(r"```py\n(.*?)```", readme, re.S) if "nsga2" in b]
  small = code.replace("n_trials=64, population=16, epochs=9",
                       "n_trials=4, population=4, epochs=1, progress=False")
  assert small != code
  scope = {"metaopt": metaopt, "tasks": tasks}
  exec(compile(small, "README.md", "exec"), scope)
  assert scope["result"].hypervolume() > 0


def test_a_store_from_before_the_objective_tables_is_read_as_single_objective(tmp_path):
  """Opened to read (create=False), a store without study_objectives / trial_values (written
  before they existed) is a metaopt store: no objectives, no values, nothing written."""
  import sqlite3
  path = tmp_path / "old.db"
  st = metaopt.Store(f"sqlite:///{path}")
  rec = st.create_study("old", direction="maximize", config={}, seed=0)
  st.start_round(rec.id, 0, [{"number": 0, "params": {"x": 1.0}, "u": [0.5], "seed": 0}], b"")
  st.engine.dispose()
  with sqlite3.connect(path) as c:
    c.execute("DROP TABLE study_objectives")
    c.execute("DROP TABLE trial_values")
  before = path.read_bytes()
  old = metaopt.Store(f"sqlite:///{path}", create=False)
  assert old.objectives(rec.id) == []
  assert [t.values for t in old.trials(rec.id)] == [None]
  old.engine.dispose()
  assert path.read_bytes() == before
