"""A user's journey through the white-box, NAS, PBT and learned-optimizer APIs: its defects.

Each test reproduces one thing a user of the installed wheel ran into (README,
docs/architecture.md and the docstrings followed as written, with their own Flax model, optax
optimizer and data) and fails on the code before its fix.
"""

from __future__ import annotations

import ast
import doctest
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# source folders that install under metaopt.* (setup.py's package_dir): a docstring example
# importing them by their folder name runs in a checkout and fails from the wheel
_INSTALLED_AS = ("hypergrad", "tasks", "spaces", "configs")


def _package_sources():
  for top in ("metaopt",) + _INSTALLED_AS:
    for base, _, files in os.walk(os.path.join(ROOT, top)):
      for f in files:
        if f.endswith(".py"):
          yield os.path.join(base, f)


def test_docstring_examples_import_what_the_wheel_installs():
  """`help(metaopt.hypergrad.unrolled)`'s example began `from hypergrad.inner import ...`:
  from the installed wheel (no top-level `hypergrad`) it raised ModuleNotFoundError, and
  `doctest.testmod(metaopt.hypergrad.unrolled)` failed 4 of 6 examples there."""
  parser = doctest.DocTestParser()
  bad = []
  for path in _package_sources():
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef,
                               ast.AsyncFunctionDef)):
        continue
      doc = ast.get_docstring(node, clean=False)
      if not doc or ">>>" not in doc:
        continue
      for ex in parser.get_examples(doc):
        m = re.match(r"\s*(?:from|import)\s+(\w+)", ex.source)
        if m and m.group(1) in _INSTALLED_AS:
          bad.append(f"{os.path.relpath(path, ROOT)}: {ex.source.strip()}")
  assert not bad, "\n".join(bad)


@pytest.mark.parametrize("backward", ["hvp", "autodiff"])
def test_an_adam_unroll_is_not_flagged_chaotic(backward):
  """A 20-step unroll of `optax.adam` on a smooth convex loss (its hypergradient matching
  finite differences) was flagged *chaotic* and not trustworthy: the amplification measured
  the validation loss's sensitivity to the whole start state, including Adam's second moment
  `nu = 0`, where `1 / (sqrt(nu) + eps)` makes it ~1e6. It is now the sensitivity to the start
  parameters (the optimizer's zero-initialised statistics are not a trajectory to perturb)."""
  import jax
  import jax.numpy as jnp
  import optax

  from metaopt import hypergrad

  a = jnp.asarray([0.5, 1.0, 2.0, 1e-3])  # one weight the training loss barely moves
  loss = lambda w, h, b: 0.5 * jnp.sum(a * (w - b) ** 2) + 0.5 * h["l2"] * jnp.sum(w ** 2)
  val = lambda w, h: 0.5 * jnp.sum((w - 1.0) ** 2)
  opt = lambda h: optax.inject_hyperparams(optax.adam)(learning_rate=h["learning_rate"])
  inner = hypergrad.optax_inner_loop(loss, opt)
  h = {"learning_rate": jnp.asarray(0.05), "l2": jnp.asarray(0.1)}
  xs = jnp.ones((20, 4)) + 0.1 * jax.random.normal(jax.random.key(0), (20, 4))
  w0 = jnp.zeros(4)
  r = jax.jit(hypergrad.unrolled(inner, val, backward=backward))(h, w0, xs)

  def value(hh):
    state, _ = hypergrad.run_inner(inner, hh, w0, xs)
    return val(inner.params(state), hh)

  for k in h:  # float32, as a user runs it: central differences at 1e-2 relative steps
    e = 1e-2 * float(h[k])
    fd = (value({**h, k: h[k] + e}) - value({**h, k: h[k] - e})) / (2 * e)
    assert abs(float(r.grad[k]) - float(fd)) < 1e-2 * abs(float(fd)), (k, r.grad[k], fd)
  assert 0 < float(r.diagnostics.amplification) < 10
  assert bool(r.diagnostics.trustworthy)
  assert not bool(hypergrad.check(r.diagnostics).fallback)


def _user_problem():
  import jax
  import jax.numpy as jnp
  import optax

  from metaopt import hypergrad

  x = jax.random.normal(jax.random.key(0), (32, 3))
  y = x @ jnp.arange(3.0)
  return hypergrad.BilevelProblem(
      init_params=lambda k: jnp.zeros(3),
      train_loss=lambda w, h, i: jnp.mean((x[i] @ w - y[i]) ** 2) + h["l2"] * jnp.sum(w ** 2),
      val_loss=lambda w, h: jnp.mean((x @ w - y) ** 2),
      optimizer=lambda h: optax.inject_hyperparams(optax.sgd)(learning_rate=h["learning_rate"]),
      sample=lambda k, t: jax.random.randint(k, (t, 8), 0, 32), full_batch=jnp.arange(32),
      hparams={"learning_rate": jnp.asarray(0.1), "l2": jnp.asarray(1e-3)},
      spec={"learning_rate": "log", "l2": "log"})


def test_hypergrad_bad_inputs_name_the_field():
  """A user's own BilevelProblem: a spec missing a hyperparameter raised jax's "pytree
  structure error: different numbers of pytree children", `make_estimator(..., 0)` an
  IndexError at the first call, and `online_hpo`'s init with `{"lr": ...}` a KeyError."""
  import jax
  import jax.numpy as jnp

  from metaopt import hypergrad

  prob = _user_problem()
  with pytest.raises(ValueError, match=r"spec has no bijector for \['l2'\]"):
    hypergrad.to_theta(prob.hparams, {"learning_rate": "log"})
  with pytest.raises(ValueError, match=r"spec names \['momentum'\], not in theta"):
    hypergrad.to_hparams({"learning_rate": 0.0},
                         {"learning_rate": "log", "momentum": "logit"})
  with pytest.raises(ValueError, match="spec: must be a pytree prefix of hparams"):
    hypergrad.to_theta({"a": (1.0, 2.0)}, {"a": ("log", "log", "log")})
  with pytest.raises(ValueError, match="bijector 'logg' is unknown"):
    hypergrad.to_theta(prob.hparams, {"learning_rate": "logg", "l2": "log"})
  for bad in (0, -3, 2.5):
    with pytest.raises(ValueError, match=rf"inner_steps={bad!r}: must be an int >= 1"):
      hypergrad.make_estimator(prob, "unrolled", bad)
  with pytest.raises(ValueError, match="method='unroled' is unknown; allowed: unrolled"):
    hypergrad.make_estimator(prob, "unroled", 0)
  online = hypergrad.online_hpo(prob, 2, 1e-3)
  with pytest.raises(ValueError, match=r"theta0 must be \{'learning_rate'.*got \['lr'\]"):
    online.init(jax.random.key(0), {"lr": jnp.zeros(2)})
  # the spec still works on a prefix of a nested hparams tree
  h = hypergrad.to_hparams({"a": {"b": jnp.log(2.0), "c": 0.0}}, {"a": "log"})
  assert abs(float(h["a"]["b"]) - 2.0) < 1e-6 and float(h["a"]["c"]) == 1.0


def test_meta_trainer_names_a_problem_that_is_not_one():
  """`meta_trainer(lopt, problem, "pes")` (one problem, not a list) raised `AttributeError:
  'function' object has no attribute 'name'`, and a TaskFamily in the list was accepted,
  to fail later inside the trace."""
  import metaopt
  from metaopt import tasks

  lopt = metaopt.lopt.mlp_lopt()
  fam = tasks.get_family("quadratic")
  problem = metaopt.lopt.make_problem(fam, lopt, 4, 2)
  with pytest.raises(ValueError, match=r"problems: a list of inner problems .*pass \[problem\]"):
    metaopt.lopt.meta_trainer(lopt, problem, "pes", num_tasks=2)
  with pytest.raises(ValueError, match=r"problems\[1\]: must be an InnerProblem .*got "
                                       r"TaskFamily \(a task family: wrap it"):
    metaopt.lopt.meta_trainer(lopt, [problem, fam], "pes", num_tasks=2)
  assert metaopt.lopt.meta_trainer(lopt, [problem], "pes", num_tasks=2).names == ("quadratic",)


def test_nas_python_api_on_a_user_s_arrays_names_the_field():
  """DARTS from Python on a user's own arrays: `build_model(space, {"features": 8}, 3)`
  raised `KeyError: 'n_cells'` (the config fills defaults, the function did not), and flat
  `(n, 10)` inputs reached `make_program` as "operands could not be broadcast together"."""
  import numpy as np

  from metaopt import nas, tasks

  rng = np.random.default_rng(0)
  split = lambda n, shape: (rng.normal(size=(n, *shape)).astype(np.float32),
                            rng.integers(0, 3, n).astype(np.int32))
  space = nas.SPACES["nb201_mini"]()
  model = nas.build_model(space, {"features": 4}, 3)
  assert (model.features, model.n_cells, model.stages, model.num_classes) == (4, 1, 2, 3)
  with pytest.raises(ValueError, match=r"model: unknown key\(s\) \['width'\]; allowed"):
    nas.build_model(space, {"width": 4}, 3)
  flat = tasks.from_arrays(split(32, (10,)), split(16, (10,)), split(16, (10,)))
  with pytest.raises(ValueError, match=r"data: the cell networks read images .*\(32, 10\); "
                                       r"1-D signals: reshape to \(n, 10, 1, 1\)"):
    nas.make_program(space, model, nas.SearchSettings(), flat, 16)
  regression = tasks.from_arrays(*[(x, y.astype(np.float32)) for x, y in
                                   (split(32, (8, 8, 1)), split(16, (8, 8, 1)),
                                    split(16, (8, 8, 1)))])
  with pytest.raises(ValueError, match="integer class labels"):
    nas.make_program(space, model, nas.SearchSettings(), regression, 16)


def test_pbt_over_a_structural_parameter_says_which_and_what_to_do():
  """PBT on the README's `from_flax` task (a structural `width`) stopped with "exploit: trial
  1 cannot copy trial 3 from another structural group; population-based training needs one
  group": no word of which parameter, or of the fix."""
  import flax.linen as nn
  import numpy as np
  import optax

  import metaopt
  from metaopt import tasks
  from metaopt.spaces import Choice, Float, Space

  class Net(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(nn.relu(nn.Dense(self.width)(x)))

  rng = np.random.default_rng(0)
  x = rng.normal(size=(96, 4)).astype(np.float32)
  space = Space({"learning_rate": Float(1e-3, 1e-1, log=True),
                 "width": Choice([4, 8], structural=True)})
  task = tasks.from_flax(lambda s: Net(s["width"]), (x, (x[:, 0] > 0).astype(np.int32) +
                                                     (x[:, 1] > 0)),
                         space, optimizer=lambda h: optax.sgd(h["learning_rate"]), name="uj2")
  with pytest.raises(ValueError, match=r"cannot copy the weights of trial \d+ \(width=\d vs "
                                       r"\d\).*fix the structural parameter\(s\) \['width'\]"):
    metaopt.search(metaopt.pbt(space.dim, interval=1, quantile=0.5), task, n_trials=8,
                   population=8, epochs=2, batch_size=16, progress=False)


def test_resume_and_evaluate_of_a_white_box_study(tmp_path, capsys):
  """`metaopt resume` of a finished `metaopt:hypergrad_unrolled` run said "study
  'hypergrad_unrolled' already exists ...; use `resume` or a new study name" (the user had
  typed `resume`): a white-box study has no `n_trials`, so it never counted as finished and
  was run again. `evaluate` said "program='whitebox': this is the black-box search's config"."""
  import json

  import metaopt
  from metaopt import cli
  from metaopt.configs import hypergrad_unrolled

  cfg = hypergrad_unrolled.get_config()
  cfg.outer_steps, cfg.inner_steps, cfg.population, cfg.fallback = 1, 2, 2, "none"
  url = f"sqlite:///{tmp_path}/hg.db"
  metaopt.run_config(cfg, url, progress=False)
  store = metaopt.Store(url, create=False)
  rec = store.load_study("hypergrad_unrolled")
  assert metaopt.study_finished(store, rec)
  # each member's own start (the config's init spread by init_spread), not the config's
  # init repeated for every member
  starts = [t.params["init"] for t in store.trials(rec.id)]
  assert starts[0] == pytest.approx(dict(cfg.init), rel=1e-5) and starts[1] != starts[0]
  assert sorted(starts[1]) == ["l2", "learning_rate", "momentum"]
  before = os.path.getmtime(tmp_path / "hg.db"), len(store.trials(rec.id))
  capsys.readouterr()
  cli._resume(url, None)  # prints the summary, writes nothing
  summary = json.loads(capsys.readouterr().out)
  assert summary["n_trials"] == 2 and summary["n_complete"] == 2, summary
  assert (os.path.getmtime(tmp_path / "hg.db"), len(store.trials(rec.id))) == before
  with pytest.raises(ValueError, match="ran program 'whitebox': `evaluate` retrains the best "
                                       "trials of a black-box search"):
    metaopt.evaluate_study(store, "hypergrad_unrolled")


def test_a_misspelt_objective_says_what_was_recorded():
  """`objectives=[("valid_acc", "maximize"), ...]` failed every trial with "objective(s)
  ['valid_acc'] not recorded", naming neither the metric meant nor those there are."""
  import jax
  import jax.numpy as jnp

  import metaopt
  from metaopt.spaces import Float, Space

  def init(h, key):
    return jax.random.normal(key, (2,))

  def epoch(w, h):
    w = w - h["lr"] * 2 * w
    return w, {"objective": jnp.sum(w ** 2), "loss": jnp.sum(w ** 2),
               "valid_accuracy": 1.0 / (1.0 + jnp.sum(w ** 2))}

  ev = metaopt.JaxEvaluator(init=init, epoch=epoch, space=Space({"lr": Float(0.01, 0.5)}))
  res = metaopt.search(metaopt.nsga2(1, n_objectives=2), ev, n_trials=4, population=4,
                       epochs=1, progress=False,
                       objectives=[("valid_acc", "maximize"), ("loss", "minimize")])
  reasons = {t.failure_reason for t in res.trials}
  assert len(reasons) == 1, reasons
  (reason,) = reasons
  assert reason.startswith("objective(s) ['valid_acc'] not recorded (did you mean "
                           "'valid_accuracy'?); recorded metrics: "), reason
  assert "loss" in reason.split("recorded metrics: ")[1].split(", ")


@pytest.mark.slow  # ~30 s: a real (tiny) meta-training run, then its resume
def test_lopt_meta_train_summary_counts_steps_not_log_rows(tmp_path):
  """`metaopt run --config metaopt:lopt_meta_train --config.outer_steps=4
  --config.log_every=2` printed `"steps_this_run": 2`: it counted the logged rows."""
  import metaopt
  from metaopt.configs import lopt_meta_train

  cfg = lopt_meta_train.get_config()
  cfg.families, cfg.outer_steps, cfg.log_every, cfg.checkpoint_every = ("quadratic",), 4, 2, 2
  cfg.checkpoint_dir, cfg.output = str(tmp_path / "ckpt"), str(tmp_path / "mp")
  url = f"sqlite:///{tmp_path}/l.db"
  first = metaopt.run_config(cfg, url, progress=False).summary()
  assert (first["outer_steps"], first["steps_this_run"], first["logged_rows"]) == (4, 4, 2)
  cfg.outer_steps = 6
  again = metaopt.run_config(cfg, url, progress=False).summary()
  assert again["resumed"] and (again["outer_steps"], again["steps_this_run"]) == (6, 2)


def test_repair_space_of_a_task_that_does_not_say_what_it_reads():
  """`repair_space(task=my_task)` of a `from_flax` task with an optimizer *function* returned
  the whole MLP repair space (optimizer, activation, depth, residual, ...), none of which the
  user's model reads: the repair loop would train identical models for those actions."""
  import flax.linen as nn
  import numpy as np
  import optax

  from metaopt import tasks
  from metaopt.repair import repair_space
  from metaopt.spaces import Float, Space

  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 4)).astype(np.float32)
  data = (x, (x[:, 0] > 0).astype(np.int32))
  space = Space({"learning_rate": Float(1e-3, 1e-1, log=True)})
  net = lambda s: nn.Dense(2)
  fn_task = tasks.from_flax(net, data, space, optimizer=lambda h: optax.sgd(h["learning_rate"]),
                            name="uj2_fn")
  with pytest.raises(ValueError, match=r"repair_space\(task='uj2_fn'\): the task does not "
                                       r"declare which parameters it reads"):
    repair_space(task=fn_task)
  named = tasks.from_flax(net, data, space, optimizer="adamw", name="uj2_named")
  assert set(repair_space(task=named).names) == {"learning_rate", "weight_decay", "batch_size"}
  assert "depth" in repair_space().names


def test_readme_hypergradient_example_runs_and_matches_finite_differences():
  """The README had no example of a hypergradient of a user's own model; this one must run
  as written, be trusted, and agree with central differences."""
  import jax

  from metaopt import hypergrad

  with open(os.path.join(ROOT, "README.md")) as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
  (code,) = [b for b in blocks if "hypergrad.unrolled(inner, val_loss)" in b]
  scope: dict = {}
  exec(compile(code.replace("print(", "(lambda *a: None)("), "README.md", "exec"), scope)
  r, h, inner = scope["r"], scope["h"], scope["inner"]
  assert bool(r.diagnostics.trustworthy)
  p0 = scope["net"].init(jax.random.key(1), scope["x"][:1])

  def value(hh):
    state, _ = hypergrad.run_inner(inner, hh, p0, scope["batches"])
    return scope["val_loss"](inner.params(state), hh)

  for k in h:
    e = 1e-2 * float(h[k])
    fd = (value({**h, k: h[k] + e}) - value({**h, k: h[k] - e})) / (2 * e)
    assert abs(float(r.grad[k]) - float(fd)) < 0.02 * abs(float(fd)) + 1e-4, (k, r.grad[k], fd)


@pytest.mark.parametrize("field, value, match", [
    ("method", "unroled", r"method='unroled' is unknown; allowed: unrolled"),
    ("tune", ("learning_rate", "lr"), r"tune: 'lr' is not a hyperparameter of the problem"),
    ("estimator", {"remat": "sqr"}, r"remat='sqr' is unknown; allowed: none, step, sqrt"),
    ("estimator", {"trunc": 5}, r"config field 'estimator' \(or 'online'\):.*trunc"),
    ("population", 0, r"config field 'population'=0: must be an int >= 1"),
])
def test_a_bad_white_box_config_creates_no_study(tmp_path, field, value, match):
  """`metaopt run --config metaopt:hypergrad_unrolled --config.method=unroled` printed the
  method error only after creating the study, so the corrected rerun said "study
  'hypergrad_unrolled' already exists ...; use `resume`"."""
  import metaopt
  from metaopt.configs import hypergrad_unrolled

  cfg = hypergrad_unrolled.get_config()
  setattr(cfg, field, value) if not isinstance(value, dict) else cfg[field].update(value)
  url = f"sqlite:///{tmp_path}/hg.db"
  with pytest.raises(ValueError, match=match):
    metaopt.run_config(cfg, url, progress=False)
  if os.path.exists(tmp_path / "hg.db"):
    assert metaopt.Store(url, create=False).study_names() == []


def test_pareto_pruner_without_objectives_says_so():
  """`with_pruning(random_search(d), pareto_pruner(...))` in a single-objective search raised
  `KeyError: 'objectives'` from inside the first epoch's trace."""
  import jax
  import jax.numpy as jnp

  import metaopt
  from metaopt.spaces import Float, Space

  def init(h, key):
    return jax.random.normal(key, (2,))

  def epoch(w, h):
    w = w - h["lr"] * 2 * w
    return w, jnp.sum(w ** 2)

  ev = metaopt.JaxEvaluator(init=init, epoch=epoch, space=Space({"lr": Float(0.01, 0.5)}))
  program = metaopt.with_pruning(metaopt.random_search(1), metaopt.pareto_pruner(n_epochs=2))
  with pytest.raises(ValueError, match=r"pruner: it ranks trials by several objectives: pass "
                                       r"search\(\.\.\., objectives="):
    metaopt.search(program, ev, n_trials=4, population=4, epochs=2, progress=False)
