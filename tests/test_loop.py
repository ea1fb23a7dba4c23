"""The one search loop over evaluators.

* bundled tasks (``TaskEvaluator``): the trials, objectives and statuses of three searches
  equal, bit for bit, those the pre-loop engine produced. The numbers in
  ``tests/data/engine_pin_8e022cd.json`` were made by running ``tests/data/engine_pin.py``
  on commit 8e022cd (the driver before the loop existed, PYTHONPATH=/work/main);
* a pure JAX function (``JaxEvaluator``): one-shot ``train(h, key)`` trials equal direct
  calls; epoch-wise ``init``/``epoch`` with ASHA pruning and with PBT;
* a Python callable (``CallableEvaluator``, no JAX inside): one trial at a time and batched
  give the same trials, which equal direct calls; TPE finds the known optimum; a raising
  objective fails only its trial;
* NAS retraining (``RetrainEvaluator``): the NAS fallback's trials equal 8e022cd's, checked
  by ``tests/test_nas.py::test_collapsed_search_falls_back_to_black_box_search``.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metaopt
from metaopt.spaces import Choice, Float, Space
from metaopt.tasks import get_task

HERE = os.path.dirname(__file__)
with open(os.path.join(HERE, "data", "engine_pin_8e022cd.json")) as f:
  PIN = json.load(f)


def _f32(params):
  """Float parameters as float32 values: the pin stored them as float64 decimals, the store now
  prints a float32 as its shortest decimal; the float32 values themselves must be equal."""
  return {k: np.float32(v) if isinstance(v, float) else v for k, v in params.items()}


def _rows(res):
  return [{"number": t.number, "status": t.status, "objective": t.objective,
           "params": _f32(t.params), "epochs": len(t.metrics)} for t in res.trials]


def _pinned(name, prog, **kw):
  task = get_task("digits_mlp")
  res = metaopt.search(prog(task.space.dim), task, progress=False, batch_size=64, seed=3, **kw)
  pin = [{**r, "params": _f32(r["params"])} for r in PIN[name]]
  assert _rows(res) == pin  # exact floats: bit-identical to the old engine


def test_task_search_with_median_pruning_is_bit_identical_to_the_old_engine():
  _pinned("random_median", lambda d: metaopt.with_pruning(
      metaopt.random_search(d), metaopt.median_pruner(3, min_trials=2)),
      n_trials=6, population=6, epochs=2)


@pytest.mark.slow
def test_task_search_with_tpe_asha_and_pbt_is_bit_identical_to_the_old_engine():
  _pinned("tpe_asha", lambda d: metaopt.with_pruning(metaopt.tpe(d, n_startup=4),
                                                     metaopt.asha(3)),
          n_trials=8, population=4, epochs=3)
  _pinned("pbt", lambda d: metaopt.pbt(d, interval=1), n_trials=4, population=4, epochs=3)


# --------------------------------------------------------------------------- pure JAX

TARGET = jnp.asarray([1.0, -2.0])
LR = Space({"lr": Float(1e-3, 0.4, log=True)})


def quad_train(h, key):
  """20 gradient steps on ``|w - target|^2`` from a random start."""
  w = jax.random.normal(key, (2,))
  w, _ = jax.lax.scan(lambda w, _: (w - h["lr"] * 2 * (w - TARGET), None), w, None, 20)
  return {"objective": jnp.sum((w - TARGET) ** 2), "w0": w[0]}


def quad_init(h, key):
  del h
  return jax.random.normal(key, (2,))


def quad_epoch(w, h):
  """5 gradient steps; the loss after them."""
  w, _ = jax.lax.scan(lambda w, _: (w - h["lr"] * 2 * (w - TARGET), None), w, None, 5)
  return w, jnp.sum((w - TARGET) ** 2)


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_jax_function_trials_equal_direct_calls(mode):
  ev = metaopt.JaxEvaluator(quad_train, space=LR, mode=mode)
  res = metaopt.search(metaopt.random_search(1), ev, n_trials=6, population=4, seed=1,
                       progress=False)
  assert [t.status for t in res.trials] == ["complete"] * 6
  for t in res.trials:
    want = quad_train({"lr": jnp.float32(t.params["lr"])}, jax.random.key(t.seed))
    np.testing.assert_allclose(t.objective, float(want["objective"]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(t.metrics[0]["w0"], float(want["w0"]), rtol=1e-5)
  assert res.best.objective == min(t.objective for t in res.trials)
  assert res.best.params["lr"] == max(t.params["lr"] for t in res.trials)  # fastest descent


def test_jax_epoch_function_prunes_with_asha():
  ev = metaopt.JaxEvaluator(init=quad_init, epoch=quad_epoch, space=LR)
  prog = metaopt.with_pruning(metaopt.random_search(1), metaopt.asha(3, eta=3.0))
  res = metaopt.search(prog, ev, n_trials=9, population=9, epochs=3, seed=2, progress=False)
  pruned = [t for t in res.trials if t.status == "pruned"]
  done = [t for t in res.trials if t.status == "complete"]
  assert pruned and done
  for t in done:  # three epochs of 5 steps each, as a plain loop computes them
    w = quad_init(None, jax.random.key(t.seed))
    for _ in range(3):
      w, loss = quad_epoch(w, {"lr": jnp.float32(t.params["lr"])})
    assert len(t.metrics) == 3
    np.testing.assert_allclose(t.objective, float(loss), rtol=1e-5, atol=1e-7)
  # a trial stopped at the first rung was worse there than every trial promoted past it
  first = [t for t in pruned if len(t.metrics) == 1]
  assert first and max(t.metrics[0]["objective"] for t in done) <= \
      min(t.metrics[0]["objective"] for t in first)


def test_jax_epoch_function_runs_pbt():
  ev = metaopt.JaxEvaluator(init=quad_init, epoch=quad_epoch, space=LR)
  prog = metaopt.pbt(1, interval=1, quantile=0.25, perturb=0.0, resample_prob=0.0)
  res = metaopt.search(prog, ev, n_trials=4, population=4, epochs=3, seed=0, progress=False)
  by = {t.number: t for t in res.trials}
  copied = [(t, e, m["parent"]) for t in res.trials for e, m in enumerate(t.metrics)
            if "parent" in m]
  assert copied
  for t, e, parent in copied:  # no perturbation: a copy continues exactly as its parent
    assert by[parent].metrics[e]["objective"] <= t.metrics[e]["objective"]
    np.testing.assert_allclose(t.metrics[e + 1]["objective"],
                               by[parent].metrics[e + 1]["objective"], rtol=1e-6)


def test_jax_evaluator_bad_input():
  with pytest.raises(ValueError, match="train=.*init=.*epoch="):
    metaopt.JaxEvaluator(init=quad_init)
  with pytest.raises(ValueError, match="epochs=2"):
    metaopt.search(metaopt.random_search(1), metaopt.JaxEvaluator(quad_train, space=LR),
                   n_trials=2, population=2, epochs=2, progress=False)


# --------------------------------------------------------------------------- callables

MIXED = Space({"x": Float(0.0, 1.0), "kind": Choice(["a", "b"])})


def objective(p):
  """No JAX: a plain Python function of a dict."""
  return (p["x"] - 0.3) ** 2 + (0.0 if p["kind"] == "a" else 0.5)


def test_callable_one_at_a_time_and_batched_give_the_same_trials(tmp_path):
  calls = []

  def batched(ps):
    calls.append(len(ps))
    return [objective(p) for p in ps]

  kw = dict(space=MIXED, n_trials=24, population=4, seed=5, progress=False)
  one = metaopt.search(metaopt.tpe(MIXED.dim, n_startup=8),
                       metaopt.CallableEvaluator(objective), store=f"sqlite:///{tmp_path}/a.db",
                       **kw)
  many = metaopt.search(metaopt.tpe(MIXED.dim, n_startup=8),
                        metaopt.CallableEvaluator(batched, batched=True), **kw)
  assert calls == [4] * 6
  assert _rows(one) == _rows(many)
  for t in one.trials:
    assert t.objective == pytest.approx(objective(t.params), rel=1e-6, abs=1e-9)
  best = one.best  # TPE finds the known optimum (x = 0.3, kind a)
  assert best.params["kind"] == "a" and abs(best.params["x"] - 0.3) < 0.1
  again = metaopt.Store(f"sqlite:///{tmp_path}/a.db").trials(1)  # stored, readable
  assert [t.objective for t in again] == [t.objective for t in one.trials]


def test_callable_failures_are_recorded_and_the_rest_go_on():
  def flaky(p):
    if p["x"] > 0.5:
      raise RuntimeError("simulator diverged")
    return {"objective": p["x"], "loss": 2 * p["x"]}

  res = metaopt.search(metaopt.sobol(MIXED.dim), metaopt.CallableEvaluator(flaky),
                       space=MIXED, n_trials=8, population=8, progress=False)
  failed = [t for t in res.trials if t.status == "failed"]
  done = [t for t in res.trials if t.status == "complete"]
  assert failed and done
  assert all(t.failure_reason == "RuntimeError: simulator diverged" for t in failed)
  assert all(t.params["x"] <= 0.5 and t.metrics[0]["loss"] == pytest.approx(2 * t.objective)
             for t in done)
  wrong = metaopt.CallableEvaluator(lambda p: {"acc": 1.0})
  res = metaopt.search(metaopt.sobol(MIXED.dim), wrong, space=MIXED, n_trials=2,
                       population=2, progress=False)
  assert all(t.status == "failed" and "no 'objective'" in t.failure_reason
             for t in res.trials)


def test_callable_evaluator_bad_input():
  with pytest.raises(ValueError, match="space"):
    metaopt.search(metaopt.sobol(1), metaopt.CallableEvaluator(objective), n_trials=2,
                   population=2, progress=False)
  with pytest.raises(ValueError, match="direction"):
    metaopt.CallableEvaluator(objective, direction="up")
  with pytest.raises(ValueError, match="evaluator"):
    metaopt.search(metaopt.sobol(1), objective, space=MIXED, n_trials=2, population=2)
  res = metaopt.search(metaopt.sobol(MIXED.dim), metaopt.CallableEvaluator(
      lambda p: -objective(p), direction="maximize"), space=MIXED, n_trials=4, population=4,
      progress=False)
  assert res.best.objective == max(t.objective for t in res.trials) and not math.isnan(
      res.best.objective)


def test_readme_evaluator_example_runs():
  with open(os.path.join(HERE, "..", "README.md")) as f:
    (code,) = [b.split("```")[0] for b in f.read().split("```python\n")[1:]
               if "CallableEvaluator" in b.split("```")[0]]
  code = code.replace("n_trials=24", "n_trials=8").replace(
      "epochs=3)", "epochs=3, progress=False)").replace("population=4)",
                                                       "population=4, progress=False)")
  scope: dict = {}
  exec(compile(code, "README.md", "exec"), scope)
  res = scope["res"]
  assert len(res.trials) == 9 and res.count("pruned") > 0 and res.best.objective < 1.0


# NAS retraining as an evaluator against 8e022cd's pin (tests/data/nas_fallback_pin_8e022cd.json):
# tests/test_nas.py::test_collapsed_search_falls_back_to_black_box_search runs the same command
# and checks every trial against the pin.
