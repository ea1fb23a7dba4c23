"""Bring your own model: tasks.from_flax with any optax optimizer, data forms, import paths."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits, load_wine

import metaopt
from metaopt import tasks
from metaopt._src.population import fast_jit
from metaopt.spaces import Float, Int, Space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Net(nn.Module):
  """A user's model: plain ``__call__(x)``, width fixed at build time."""

  width: int = 32

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(self.width)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


def _digits():
  d = load_digits()
  return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


LION_SPACE = Space({"learning_rate": Float(1e-4, 3e-2, log=True),
                    "weight_decay": Float(1e-4, 1e-1, log=True), "b1": Float(0.8, 0.95)})


def _lion(h):
  return optax.lion(h["learning_rate"], b1=h["b1"], weight_decay=h["weight_decay"])


def test_user_flax_model_with_lion_searched_by_tpe_and_asha(tmp_path):
  task = tasks.from_flax(Net(), _digits(), LION_SPACE, optimizer=_lion, name="my_net")
  state = jax.eval_shape(task.build({}).init, jax.random.key(0),
                         {k: np.float32(0.01) for k in LION_SPACE.params})
  kinds = {type(s).__name__ for s in jax.tree_util.tree_leaves(
      state["opt_state"], is_leaf=lambda s: hasattr(s, "_fields"))}
  assert "ScaleByLionState" in kinds
  program = metaopt.with_pruning(metaopt.tpe(LION_SPACE.dim, n_startup=1),
                                 metaopt.asha(n_epochs=3, min_epochs=1, eta=2))
  url = f"sqlite:///{tmp_path}/lion.db"
  res = metaopt.search(program, task, n_trials=8, population=4, epochs=3, batch_size=64,
                       store=url, study="lion", progress=False)
  assert len(res.trials) == 8 and res.count("pruned") >= 2
  assert res.best.objective > 0.8  # 10 classes: chance is 0.1
  rec = metaopt.Store(url).load_study("lion")
  assert rec.data_version["checksum"] == task.data.checksum and rec.data_version["name"] \
      == "arrays"


def test_data_forms_structure_and_bad_input():
  x, y = _digits()
  a = tasks.from_flax(Net(), (x, y), LION_SPACE, optimizer=_lion)
  assert [len(s) for s in (a.data.train, a.data.valid, a.data.test)] == [1078, 359, 360]
  assert a.data.num_classes == 10 and a.data.tfds_name == ""
  x2 = x.copy()
  x2[0, 0, 0] += 1.0
  assert tasks.from_flax(Net(), (x2, y), LION_SPACE, optimizer=_lion).data.checksum \
      != a.data.checksum

  class Source:  # random-access, as tfds.data_source / grain give
    def __init__(self, idx):
      self.idx = idx

    def __len__(self):
      return len(self.idx)

    def __getitem__(self, i):
      return {"image": x[self.idx[i]], "label": y[self.idx[i]]}

  src = tasks.from_flax(Net(), {"train": Source(range(0, 300)), "valid": Source(range(300, 400))},
                        LION_SPACE, optimizer="lion")
  np.testing.assert_array_equal(src.data.train.x, x[:300].astype(np.float32))
  assert src.data.test is src.data.valid and src.data.version == "sources, test = valid"
  wine = tasks.from_flax(lambda s: nn.Sequential([nn.Dense(s["width"]), nn.relu, nn.Dense(3)]),
                         "wine", Space({"learning_rate": Float(1e-3, 1e-1, log=True),
                                        "width": Int(4, 16, structural=True)}), optimizer="adamw")
  assert wine.data.num_classes == 3
  fns = wine.build({"width": 4})
  st = jax.eval_shape(fns.init, jax.random.key(0), {"learning_rate": np.float32(0.01)})
  assert st["params"]["params"]["layers_0"]["kernel"].shape == (13, 4)

  bad = [({"objective": "acc"}, "objective='acc' is not a metric of this task; its metrics: "
                                "['accuracy', 'loss']"),
         ({"optimizer": "lionn"}, "optimizer='lionn' is not an optax optimizer"),
         ({"data": 5}, "data: int is not a data form"),
         ({"optimizer": lambda h: optax.lion(h["lr"])}, "does not trace"),
         ({"model": Net}, "model: pass a Flax module instance")]
  for kwargs, msg in bad:
    args = {"model": Net(), "data": (x, y), "space": LION_SPACE, "optimizer": _lion, **kwargs}
    with pytest.raises(ValueError) as e:
      tasks.from_flax(**args)
    assert msg in str(e.value), (msg, str(e.value))
  with pytest.raises(ValueError, match="cannot import 'nope' from 'metaopt.tasks'"):
    tasks.get_task("metaopt.tasks:nope")


USER_MODULE = '''
import flax.linen as nn, optax
from sklearn.datasets import load_wine
from metaopt import tasks
from metaopt.spaces import Float, Space

d = load_wine()
task = tasks.from_flax(nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(3)]),
                       (d.data.astype("float32") / 1000.0, d.target),
                       Space({"learning_rate": Float(1e-3, 1e-1, log=True)}),
                       optimizer=lambda h: optax.lion(h["learning_rate"]), name="user_wine")
'''


def test_config_takes_a_task_by_import_path(tmp_path, monkeypatch):
  from metaopt._src import config as config_lib
  (tmp_path / "user_tasks.py").write_text(USER_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  cfg = {**config_lib.validate(_quickstart()), "task_name": "user_tasks:task"}
  _, task, space, _ = config_lib.build(cfg)
  assert task.name == "user_wine" and space.names == ["learning_rate"]
  with pytest.raises(ValueError, match="cannot import 'missing' from 'user_tasks'"):
    config_lib.build({**cfg, "task_name": "user_tasks:missing"})


def _quickstart():
  import importlib.util
  spec = importlib.util.spec_from_file_location("qs", os.path.join(ROOT, "configs",
                                                                   "quickstart.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


@pytest.mark.slow
def test_cli_runs_a_task_by_import_path(tmp_path):
  (tmp_path / "user_tasks.py").write_text(USER_MODULE)
  url = f"sqlite:///{tmp_path}/cli.db"
  env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
  r = subprocess.run([sys.executable, "run.py", "run", "--config", "configs/quickstart.py",
                      "--config.task_name=user_tasks:task", "--config.n_trials=2",
                      "--config.population=2", "--config.epochs=1", "--config.batch_size=16",
                      f"--config.store={url}", "--config.name=cli", "--quiet"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout)
  assert out["n_trials"] == 2 and set(out["best"]["params"]) == {"learning_rate"}
  rec = metaopt.Store(url).load_study("cli")
  assert rec.config["task_name"] == "user_tasks:task" and rec.data_version["tfds_name"] == ""
  assert load_wine().data.shape == (178, 13)


class DropNet(nn.Module):
  """Dropout and batch norm: ``__call__(x, train)``."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(32)(x.reshape(x.shape[0], -1))
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
    return nn.Dense(10)(x)


def test_dropout_and_batch_norm_models_train_and_evaluate():
  x, y = _digits()
  task = tasks.from_flax(DropNet(), (x, y), LION_SPACE, optimizer="adamw",
                         defaults={"learning_rate": 3e-3})
  fns = task.build({})
  h = {"learning_rate": np.float32(3e-3), "weight_decay": np.float32(1e-4),
       "b1": np.float32(0.9)}
  state = fast_jit(fns.init)(jax.random.key(0), h)  # one call: no backend optimisation
  step, ev = jax.jit(fns.train_step), jax.jit(fns.evaluate)
  xb, yb = task.data.train.x[:64], task.data.train.y[:64]
  first = float(ev(state, xb, yb, h)["loss"])
  s1, _ = step(state, (xb, yb), h)
  s1b, _ = step(state, (xb, yb), h)
  s2, _ = step(s1, (xb, yb), h)
  # the same step (same dropout mask) twice gives the same state; running stats move
  chex_equal = jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, s1, s1b))
  assert chex_equal and not np.allclose(s2["params"]["params"]["Dense_0"]["kernel"],
                                        s1["params"]["params"]["Dense_0"]["kernel"])
  bs0 = state["params"]["batch_stats"]["BatchNorm_0"]["mean"]
  assert not np.allclose(s1["params"]["batch_stats"]["BatchNorm_0"]["mean"], bs0)
  for _ in range(30):
    s1, _ = step(s1, (xb, yb), h)
  e1, e2 = ev(s1, xb, yb, h), ev(s1, xb, yb, h)
  assert float(e1["loss"]) == float(e2["loss"]) < first  # evaluation is deterministic
