"""The population engine and the search driver, on real Flax models and TFDS data."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metaopt
from metaopt import Store
from metaopt._src import population as pop
from metaopt.spaces import Choice, Fixed, Float, Int, Space
from metaopt.tasks import get_task


@pytest.fixture(scope="module")
def task():
  return get_task("digits_mlp")


# slow (~16 s in CI's default run: kernels of 4 and of 1 trial compiled). By default a
# population's trials compute what each computes alone in tests/test_engine_compiles.py's
# test_loop_kernel_equals_vmap_kernel (the "loop" kernel runs every live trial by itself, equal
# to the vmapped population's) and tests/test_kernel_threads.py (split loop = one loop).
@pytest.mark.slow
def test_population_kernel_equals_trials_run_one_by_one(task):
  """vmap(train)(hs) == stack([train(h) for h in hs]) for one epoch."""
  fns = task.build({})
  k = pop.make_kernel(fns, len(task.data.train), 64)
  data = pop.data_arrays(task.data)
  u = jax.random.uniform(jax.random.key(0), (4, task.space.dim))
  h = task.space.decode(u)
  keys = jax.random.split(jax.random.key(1), 4)
  states = k.init(keys, h)
  states, m = k.chunk(states, h, jnp.ones(4, bool), jax.random.key(2), data)
  for i in range(4):
    hi = {n: v[i:i + 1] for n, v in h.items()}
    s1 = k.init(keys[i:i + 1], hi)
    s1, m1 = k.chunk(s1, hi, jnp.ones(1, bool), jax.random.key(2), data)
    for name in ("train_loss", "valid_accuracy", "valid_loss", "grad_norm_first"):
      np.testing.assert_allclose(m[name][i], m1[name][0], rtol=2e-4, atol=1e-6)


def test_dead_trials_are_frozen(task):
  fns = task.build({})
  k = pop.make_kernel(fns, len(task.data.train), 64)
  data = pop.data_arrays(task.data)
  h = task.space.decode(jnp.full((2, task.space.dim), 0.5))
  states = k.init(jax.random.split(jax.random.key(0), 2), h)
  before = jax.tree_util.tree_map(np.asarray, states)
  states, _ = k.chunk(states, h, jnp.asarray([True, False]), jax.random.key(1), data)
  w0 = before["params"]["params"]["Dense_0"]["kernel"]
  w1 = np.asarray(states["params"]["params"]["Dense_0"]["kernel"])
  assert not np.allclose(w0[0], w1[0]) and np.array_equal(w0[1], w1[1])


def test_search_records_everything(task, tmp_path):
  url = f"sqlite:///{tmp_path}/s.db"
  res = metaopt.search(metaopt.random_search(task.space.dim), task, n_trials=12, population=8,
                       epochs=3, batch_size=64, seed=1, store=url, study="t", progress=False)
  assert len(res.trials) == 12 and res.count("complete") == 12
  assert sorted(t.number for t in res.trials) == list(range(12))
  assert [t.round for t in res.trials] == [0] * 8 + [1] * 4
  for t in res.trials:
    assert [m["epoch"] for m in t.metrics] == [0, 1, 2]
    assert t.objective == pytest.approx(t.metrics[-1]["valid_accuracy"])
    assert set(t.params) == {"learning_rate", "weight_decay", "width", "activation"}
    assert t.params["activation"] in ("relu", "tanh", "gelu", "silu")
    assert t.checkpoint_path and t.duration_s > 0
  assert res.best.objective == max(t.objective for t in res.trials)
  assert res.best.objective > 0.5
  rec = Store(url).load_study("t")
  assert rec.data_version["name"] == "digits" and len(rec.data_version["checksum"]) == 64
  assert rec.hardware["platform"] == "cpu" and rec.code_version
  assert rec.config["n_trials"] == 12 and rec.seed == 1
  s = res.summary()
  assert (s["n_trials"], s["n_complete"], s["n_failed"]) == (12, 12, 0)


def test_non_finite_trials_fail_with_reason_others_go_on(tmp_path):
  task = get_task("synthetic_regression")
  space = Space({"learning_rate": Float(1e-3, 1e5, log=True),
                 "optimizer": Choice(["sgd"], structural=True),
                 "width": Fixed(32)})
  res = metaopt.search(metaopt.sobol(space.dim), task, space=space, n_trials=8, population=8,
                       epochs=4, batch_size=64, store=f"sqlite:///{tmp_path}/s.db",
                       progress=False)
  failed = [t for t in res.trials if t.status == "failed"]
  done = [t for t in res.trials if t.status == "complete"]
  assert failed and done
  for t in failed:
    assert re.fullmatch(r"non-finite (loss|weights|gradients|valid_mse) at epoch \d",
                        t.failure_reason), t.failure_reason
    assert t.params["learning_rate"] > 1.0 and t.objective is None
    epoch = int(t.failure_reason[-1])
    assert len(t.metrics) == epoch + 1  # its history up to the failure is kept
  for t in done:
    assert len(t.metrics) == 4 and np.isfinite(t.objective)
  assert res.best.status == "complete"


def test_structural_parameters_are_grouped(tmp_path):
  task = get_task("digits_mlp")
  space = Space({"learning_rate": Float(1e-3, 1e-2, log=True),
                 "depth": Int(1, 3, structural=True),
                 "width": Fixed(32)})
  res = metaopt.search(metaopt.sobol(space.dim), task, space=space, n_trials=8, population=8,
                       epochs=2, batch_size=64, store=f"sqlite:///{tmp_path}/s.db",
                       progress=False)
  assert {t.params["depth"] for t in res.trials} == {1, 2, 3}
  assert res.count("complete") == 8
  grads = {t.params["depth"]: len(t.metrics[0]["layer_grad_norms"]) for t in res.trials}
  assert grads == {1: 2, 2: 3, 3: 4}  # each group really has its own depth


def test_learning_rate_schedules_span_the_trials_training():
  """The engine sets the schedule horizon to epochs x steps per epoch: the same as fixing
  ``schedule_steps`` to that number in the space, unlike the 500-step default."""
  task = get_task("wine_mlp")
  epochs, bs = 3, 32
  horizon = epochs * (len(task.data.train) // bs)
  base = {"learning_rate": Float(0.01, 0.1, log=True), "width": Fixed(32),
          "lr_end": Fixed(0.001), "lr_schedule": Fixed(1)}  # cosine

  def losses(**extra):
    space = Space({**base, **extra})
    res = metaopt.search(metaopt.points(np.full((1, 1), 0.5)), task, space=space,
                         n_trials=1, population=1, epochs=epochs, batch_size=bs, seed=0,
                         store=None, progress=False)
    return np.asarray([m["valid_loss"] for m in res.trials[0].metrics])

  auto = losses()
  np.testing.assert_allclose(auto, losses(schedule_steps=Fixed(float(horizon))), rtol=1e-5)
  assert np.abs(auto - losses(schedule_steps=Fixed(500.0))).max() > 1e-3


def test_median_pruning_marks_trials_pruned(tmp_path):
  task = get_task("digits_mlp")
  prog = metaopt.with_pruning(metaopt.random_search(task.space.dim),
                              metaopt.median_pruner(n_epochs=4, warmup_epochs=1))
  res = metaopt.search(prog, task, n_trials=16, population=16, epochs=4, batch_size=64,
                       store=f"sqlite:///{tmp_path}/s.db", progress=False)
  pruned = [t for t in res.trials if t.status == "pruned"]
  assert len(pruned) >= 4
  for t in pruned:
    assert len(t.metrics) < 4 and t.failure_reason.startswith("pruned after epoch")
    assert t.objective == pytest.approx(t.metrics[-1]["valid_accuracy"])
  best_pruned = max(t.objective for t in pruned)
  assert res.best.objective >= best_pruned


class _Kill(Exception):
  pass


def test_interrupted_search_resumes_to_identical_result(tmp_path):
  task = get_task("digits_mlp")
  kw = dict(n_trials=12, population=4, epochs=3, batch_size=64, seed=5, progress=False,
            study="r", checkpoint_every_s=0)
  prog = metaopt.with_pruning(metaopt.sobol(task.space.dim),
                              metaopt.median_pruner(n_epochs=3, warmup_epochs=0, min_trials=2))
  ref = metaopt.search(prog, task, store=f"sqlite:///{tmp_path}/ref.db", **kw)

  url = f"sqlite:///{tmp_path}/cut.db"

  def cut(rnd, epoch, metrics):
    if (rnd, epoch) == (1, 1):
      raise _Kill

  with pytest.raises(_Kill):
    metaopt.search(prog, task, store=url, on_epoch=cut, **kw)
  part = Store(url).trials(Store(url).load_study("r").id)
  assert [t.status for t in part[:4]] != ["running"] * 4
  assert any(t.status == "running" for t in part[4:8]) and len(part) == 8
  res = metaopt.search(prog, task, store=url, **kw)
  assert len(res.trials) == 12
  for a, b in zip(ref.trials, res.trials, strict=True):
    assert (a.number, a.params, a.status) == (b.number, b.params, b.status)
    assert a.objective == pytest.approx(b.objective, abs=1e-6)
  events = Store(url).events(Store(url).load_study("r").id)
  assert [e["kind"] for e in events] == ["resume", "restore"]
  # cut after epoch 1 of round 1, whose checkpoint (step 2) was written: epochs 0-1 kept
  assert events[1]["message"] == "round 1: restored epoch 2 of 3 from checkpoint step 2"


def test_bad_arguments_fail_before_compiling(task):
  prog = metaopt.random_search(task.space.dim)
  for field, kw in (("n_trials", {"n_trials": 0}), ("population", {"population": -2}),
                    ("epochs", {"epochs": 0})):
    args = dict(n_trials=4, population=4, epochs=1, **{})
    args.update(kw)
    with pytest.raises(ValueError, match=f"{field}="):
      metaopt.search(prog, task, progress=False, **args)
  with pytest.raises(ValueError, match="batch_size=100000: must be <= "):
    metaopt.search(prog, task, n_trials=4, population=4, epochs=1, batch_size=100000,
                   progress=False)
  wrong = metaopt.random_search(task.space.dim + 1)
  with pytest.raises(ValueError, match=r"program: the searcher was built for dim=5; this "
                     r"space needs dim=4 \("):
    metaopt.search(wrong, task, n_trials=4, population=4, epochs=1, progress=False)


def test_a_searcher_of_another_dimension_is_refused_before_anything_compiles(tmp_path):
  """A searcher built for 3 dimensions over a 2-dimensional space was refused only after its
  init and first ask had compiled (1-2 XLA compiles), as 'program.ask returned points of shape
  (4, 3)'; search, worker and create_study now refuse it first, naming dim."""
  space = Space({"x": Float(0.0, 1.0), "y": Float(-1.0, 1.0)})
  ev = metaopt.CallableEvaluator(lambda p: p["x"] + p["y"])
  url = f"sqlite:///{tmp_path}/w.db"
  runs = (lambda p: metaopt.search(p, ev, space=space, n_trials=4, population=4,
                                   progress=False),
          lambda p: metaopt.worker(p, ev, space=space, store=url, n_trials=4, population=4),
          lambda p: metaopt.create_study(space, p))
  compiles = []

  def listen(event, duration, **_):
    if event.endswith("backend_compile_duration"):
      compiles.append(event)

  programs = [metaopt.tpe(3), metaopt.open_es(3),  # a startup ask; a plain ask
              metaopt.with_pruning(metaopt.random_search(3), metaopt.median_pruner(1))]
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    for program in programs:
      for run, field in zip(runs, ("program", "program", "searcher"), strict=True):
        with pytest.raises(ValueError, match=rf"^{field}: the searcher was built for dim=3; "
                           r"this space needs dim=2 \(x, y\)$"):
          run(program)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert compiles == []
  assert not (tmp_path / "w.db").exists()


def test_monitor_records_conditions_and_stops_trials(tmp_path):
  task = get_task("digits_mlp")
  space = Space({"learning_rate": Float(1e-8, 1e-7, log=True), "width": Fixed(32)})
  prog = metaopt.with_monitor(metaopt.random_search(space.dim), stop_on=["slow_convergence"])
  res = metaopt.search(prog, task, space=space, n_trials=4, population=4, epochs=4,
                       batch_size=64, store=f"sqlite:///{tmp_path}/m.db", progress=False)
  for t in res.trials:  # lr 1e-7 cannot move validation accuracy by 0.01 in an epoch
    assert t.status == "pruned"
    assert t.failure_reason == "stopped after epoch 1: slow_convergence"
    assert t.metrics[0]["conditions"] == []  # no previous epoch to compare with
    assert "slow_convergence" in t.metrics[1]["conditions"]
  # composed with a pruner that never fires (min_trials too high): all complete, none slow
  prog = metaopt.with_monitor(
      metaopt.with_pruning(metaopt.random_search(1), metaopt.median_pruner(3, min_trials=99)))
  space2 = Space({"learning_rate": Fixed(3e-3), "width": Fixed(64),
                  "weight_decay": Float(1e-6, 1e-5, log=True)})
  res = metaopt.search(prog, task, space=space2, n_trials=4, population=4, epochs=3,
                       batch_size=64, store=f"sqlite:///{tmp_path}/h.db", progress=False)
  assert res.count("complete") == 4
  for t in res.trials:
    assert "slow_convergence" not in t.metrics[1]["conditions"]
    assert "exploding_gradients" not in t.metrics[1]["conditions"]


def test_detect_conditions_thresholds():
  m = {"grad_norm_first": jnp.asarray([1e-6, 1.0, 100.0, 1.0, 1.0]),
       "grad_norm_last": jnp.asarray([1.0, 1.0, 1.0, 1.0, 1.0]),
       "objective_delta": jnp.asarray([0.5, 0.001, 0.5, jnp.nan, 0.5]),
       "zero_grad_frac": jnp.asarray([0.0, 0.0, 0.0, 0.8, 0.0]),
       "nonfinite_grads": jnp.asarray([False, False, False, False, True]),
       "nonfinite_params": jnp.asarray([False, False, False, False, True]),
       "nonfinite_loss": jnp.asarray([False] * 5)}
  c = {k: np.asarray(v).tolist() for k, v in metaopt.detect_conditions(m).items()}
  assert c["vanishing_gradients"] == [True, False, False, False, False]
  assert c["slow_convergence"] == [False, True, False, False, False]
  assert c["exploding_gradients"] == [False, False, True, False, True]
  assert c["dying_relu"] == [False, False, False, True, False]
  assert c["nonfinite_weights"] == [False, False, False, False, True]
  with pytest.raises(ValueError, match="thresholds: unknown key"):
    metaopt.detect_conditions(m, {"explode": 1.0})
  with pytest.raises(ValueError, match="stop_on=.*unknown condition"):
    metaopt.with_monitor(metaopt.random_search(1), stop_on=["exploding"])


def test_resume_restores_a_compacted_population(tmp_path):
  """Killed after successive halving shrank the kernel, the resumed round restores the
  compacted layout from the checkpoint and ends exactly as an uninterrupted run."""
  task = get_task("digits_mlp")
  prog = metaopt.with_pruning(metaopt.random_search(task.space.dim),
                              metaopt.successive_halving(n_epochs=4, min_epochs=1, eta=2))
  # batch_size 64: the kernels of 8 and 4 trials are those other tests here compile
  kw = dict(n_trials=8, population=8, epochs=4, batch_size=64, seed=2, progress=False,
            study="c", checkpoint_every_s=0, compaction="always")
  ref = metaopt.search(prog, task, store=f"sqlite:///{tmp_path}/ref.db", **kw)

  def cut(rnd, epoch, metrics):
    if epoch == 2:
      raise _Kill

  url = f"sqlite:///{tmp_path}/cut.db"
  with pytest.raises(_Kill):
    metaopt.search(prog, task, store=url, on_epoch=cut, **kw)
  res = metaopt.search(prog, task, store=url, **kw)
  for a, b in zip(ref.trials, res.trials, strict=True):
    assert (a.number, a.status, len(a.metrics)) == (b.number, b.status, len(b.metrics))
    assert a.objective == pytest.approx(b.objective, abs=1e-6)
  assert res.count("complete") == 2  # rungs after epochs 0 and 1: 8 -> 4 -> 2


def test_infeasible_trials_are_recorded_and_not_trained(tmp_path):
  task = get_task("digits_mlp")
  count = metaopt.param_counter(task)
  # a width-w MLP on 64 inputs with two hidden layers and 10 outputs
  assert count({"width": 10, "learning_rate": 1e-3, "weight_decay": 1e-4,
                "activation": "relu"}) == 64 * 10 + 10 + 10 * 10 + 10 + 10 * 10 + 10
  budget = 3000
  res = metaopt.search(metaopt.random_search(task.space.dim), task, n_trials=8, population=8,
                       epochs=2, batch_size=64, progress=False,
                       constraint=metaopt.max_params(task, budget),
                       store=f"sqlite:///{tmp_path}/c.db")
  bad = [t for t in res.trials if t.status == "infeasible"]
  good = [t for t in res.trials if t.status == "complete"]
  assert bad and good
  for t in bad:
    assert count(t.params) > budget and t.metrics == [] and t.objective is None
    assert t.failure_reason.startswith("constraint violated by ")
  for t in good:
    assert count(t.params) <= budget and len(t.metrics) == 2
  with pytest.raises(ValueError, match="budget=0"):
    metaopt.max_params(task, 0)


@pytest.mark.parametrize("name", ["tpe", "gp", "evolution", "cma_es", "grid", "open_es"])
def test_every_registered_searcher_drives_the_engine(name, tmp_path):
  """Each searcher runs rounds of the population engine; its state is saved to the store
  every round (serialised) and a second call resumes the finished study without re-running."""
  task = get_task("digits_mlp")
  # small settings (the GP's as in tests/test_blackbox.py, one local model): this is about
  # the engine driving the searcher, not the searcher's quality at its defaults
  kw = {"cma_es": {"popsize": 4}, "open_es": {"popsize": 4}, "tpe": {"n_startup": 4},
        "gp": {"n_startup": 4, "capacity": 64, "fit_steps": 50, "n_candidates": 256,
               "n_local": 64, "grad_steps": 10, "n_exploit": 16},
        "evolution": {"population_size": 4, "tournament_size": 2}}
  prog = metaopt.make_searcher(name, task.space.dim, **kw.get(name, {}))
  url = f"sqlite:///{tmp_path}/s.db"
  args = dict(n_trials=12, population=4, epochs=1, batch_size=256, progress=False, store=url)
  res = metaopt.search(prog, task, **args)
  assert res.count("complete") == 12
  assert len({tuple(t.u) for t in res.trials}) >= 9  # proposals are not stuck
  again = metaopt.search(prog, task, **args)
  assert [t.objective for t in again.trials] == [t.objective for t in res.trials]


def _buggy(task, broken_depths):
  """``task`` whose train step, for the depths in ``broken_depths``, has a bug that raises
  while tracing (adding arrays of shapes (3,) and (4,)); depth is structural."""
  import dataclasses

  from metaopt.tasks import TrialFns

  def build(structure):
    fns = task.build(structure)
    if int(structure.get("depth", 2)) not in broken_depths:
      return fns

    def train_step(state, batch, h):
      state, tel = fns.train_step(state, batch, h)
      return state, {**tel, "loss": tel["loss"] + jnp.sum(jnp.ones(3) + jnp.ones(4))}

    return TrialFns(fns.init, train_step, fns.evaluate)

  space = Space({**task.space.params, "depth": Choice([2, 3], structural=True)})
  return dataclasses.replace(task, build=build, space=space)


def test_a_group_that_raises_fails_its_trials_and_the_others_go_on(task, tmp_path):
  """Depth 3 raises while its kernel traces, depth 2 trains: the depth-3 trials fail with the
  error as their reason, the others complete, and the search goes on."""
  t = _buggy(task, {3})
  res = metaopt.search(metaopt.random_search(t.space.dim), t, n_trials=6, population=6,
                       epochs=1, batch_size=128, seed=1, progress=False)
  depth = {tr.number: tr.params["depth"] for tr in res.trials}
  assert set(depth.values()) == {2, 3}
  for tr in res.trials:
    if depth[tr.number] == 3:
      assert tr.status == "failed" and tr.failure_reason.startswith("TypeError at epoch 0")
    else:
      assert tr.status == "complete" and 0 < tr.objective <= 1


def test_an_error_in_every_group_stops_the_search(task, tmp_path):
  """A bug that fails every group stops the search with the error and a ``failed`` study
  event; its trials stay ``running`` (a resume after the fix trains them), not failed."""
  t = _buggy(task, {2, 3})
  url = f"sqlite:///{tmp_path}/s.db"
  with pytest.raises(TypeError, match="add got incompatible shapes"):
    metaopt.search(metaopt.random_search(t.space.dim), t, n_trials=12, population=6,
                   epochs=2, batch_size=128, seed=1, progress=False, store=url, study="s")
  st = Store(url)
  rec = st.load_study("s")
  events = [e for e in st.events(rec.id) if e["kind"] == "failed"]
  assert len(events) == 1, st.events(rec.id)
  assert events[0]["message"].startswith("round 0 epoch 0: every group raised; search stopped: "
                                         "TypeError: add got incompatible shapes")
  assert [x.status for x in st.trials(rec.id)] == ["running"] * 6  # round 1 never started
