"""The README's promises: its first two commands, and its code examples really run."""

import os
import re

import jax
import jax.numpy as jnp
import pytest

import metaopt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
  with open(os.path.join(ROOT, "README.md")) as f:
    return f.read()


def _blocks(lang):
  return re.findall(rf"```{lang}\n(.*?)```", _readme(), re.S)


def test_readme_starts_with_the_two_setup_commands():
  first = _blocks("bash")[0].strip().splitlines()
  assert [line.split("#")[0].strip() for line in first[:2]] == ["make run", "make test"]
  with open(os.path.join(ROOT, "Makefile")) as f:
    mk = f.read()
  assert "configs/quickstart.py" in mk.split("\nrun:")[1].split("\n\n")[0]
  assert "pytest" in mk.split("\ntest:")[1].split("\n\n")[0]
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    assert "make test" in f.read()


def test_readme_composition_example_runs(tmp_path):
  code = _blocks("python")[0]
  assert "metaopt.with_pruning" in code and "metaopt.sequential" in code
  small = (code.replace("n_trials=64, population=32, epochs=10", "n_trials=8, population=4, "
                        "epochs=2, batch_size=128, progress=False")
           .replace("n_first=32", "n_first=4").replace("n_epochs=10", "n_epochs=2")
           .replace("sqlite:///runs/composed.db", f"sqlite:///{tmp_path}/c.db"))
  assert small != code
  scope: dict = {}
  exec(compile(small, "README.md", "exec"), scope)
  res = scope["result"]
  assert len(res.trials) == 8 and res.best is not None


def test_readme_custom_searcher_runs():
  code = _blocks("python")[1]
  scope = {"jax": jax, "jnp": jnp, "metaopt": metaopt}
  exec(compile(code, "README.md", "exec"), scope)
  s = scope["my_search"](3)
  st = s.init(jax.random.key(0))
  st, u = jax.jit(s.ask, static_argnums=2)(st, jax.random.key(1), 5)
  assert u.shape == (5, 3) and int(st["count"]) == 5


# slow (~35 s CPU): the repair loop on wine_mlp through metaopt.search runs by default in
# tests/test_repair.py::test_repair_loop_reaches_the_target_and_stops
@pytest.mark.slow
def test_readme_repair_example_runs():
  (code,) = [b for b in _blocks("python") if "repair_space()" in b]
  small = code.replace("n_trials=16", "n_trials=4").replace("epochs=6", "epochs=1, "
                                                              "progress=False")
  assert small != code
  scope: dict = {}
  exec(compile(small, "README.md", "exec"), scope)
  res = scope["result"]
  assert len(res.trials) == 4 and res.trials[0].params["learning_rate"] == 10.0


# ~55 s on CI (the digits MLP family's meta-train step): by default, PES meta-training runs in
# tests/test_lopt.py::test_meta_training_resumes_exactly and save / load / the optax chain in
# tests/test_lopt.py::test_exported_transform_in_optax_chain; CI runs this one in make test-slow
@pytest.mark.slow
def test_readme_learned_optimizer_example_runs(tmp_path):
  (code,) = [b for b in _blocks("python") if "metaopt.lopt.mlp_lopt()" in b]
  small = (code.replace('lopt, 100, 10)', 'lopt, 8, 4)').replace("num_tasks=8", "num_tasks=2")
           .replace("PRNGKey(0), 200)", "PRNGKey(0), 2)")
           .replace("runs/my_lopt", str(tmp_path / "lopt")))
  assert small.count(str(tmp_path)) == 2
  scope: dict = {}
  exec(compile(small, "README.md", "exec"), scope)
  import optax
  params = {"w": jnp.ones(3)}
  opt = scope["opt"]
  updates, _ = opt.update({"w": jnp.ones(3)}, opt.init(params), params)
  assert bool(jnp.all(jnp.isfinite(updates["w"]))) and float(jnp.abs(updates["w"]).sum()) > 0
  assert isinstance(opt, optax.GradientTransformation)


def test_readme_study_example_runs(tmp_path):
  (code,) = [b for b in _blocks("python") if "metaopt.create_study(space, \"tpe\"" in b]
  small = (code.replace("n_trials=30", "n_trials=6").replace("range(5)", "range(2)")
           .replace("sqlite:///runs/", f"sqlite:///{tmp_path}/"))
  assert small.count(str(tmp_path)) == 2
  scope: dict = {}
  exec(compile(small, "README.md", "exec"), scope)
  study, warm = scope["study"], scope["warm"]
  assert len(study.trials) == 8 and study.trials[0].params == {"C": 0.9, "solver": "lbfgs"}
  assert study.best_value > 0.9 and len(scope["rows"]) == 8
  assert warm.warm_start_sources[0]["n_used"] == 8 and warm.ask()[0].params == study.best_params
  import optuna
  back = optuna.load_study(study_name="wine_logreg", storage=f"sqlite:///{tmp_path}/"
                           "wine_optuna.db")
  assert back.best_value == study.best_value


def test_readme_bring_your_own_model_example_runs(tmp_path):
  (code,) = [b for b in _blocks("python") if "tasks.from_flax(" in b]
  small = (code.replace("n_trials=32, population=16, epochs=8", "n_trials=4, population=4, "
                        "epochs=2, progress=False")
           .replace("n_epochs=8", "n_epochs=2").replace("[32, 64]", "[32]")
           .replace("sqlite:///runs/", f"sqlite:///{tmp_path}/"))
  assert small.count(str(tmp_path)) == 1 and "[32]" in small
  scope: dict = {}
  exec(compile(small, "README.md", "exec"), scope)
  res = scope["result"]
  assert len(res.trials) == 4 and res.best.objective > 0.5


def test_readme_pure_jax_train_example_runs():
  (code,) = [b for b in _blocks("python") if "def train(h, key)" in b]
  small = code.replace("n_trials=64, batch_size=16", "n_trials=8, batch_size=4")
  assert small != code
  scope: dict = {}
  exec(compile(small, "README.md", "exec"), scope)
  study = scope["study"]
  assert len(study.trials) == 8 and [t.round for t in study.trials] == [0] * 4 + [1] * 4
  train, p = scope["train"], study.best_params
  again = float(train({"learning_rate": jnp.float32(p["learning_rate"])}, jax.random.split(
      jax.random.key(0), 4)[study.best_trial.number % 4]))
  assert abs(again - study.best_value) <= 1e-3 * max(1.0, abs(again))
