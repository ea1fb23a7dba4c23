"""A user's journey with their own task, objective and configs: the defects it found.

Each test reproduces one thing a user ran into (README, docs/architecture.md and
/work/shared/USERS.md followed as written) and fails on the code before its fix.
"""

from __future__ import annotations

import os

import pytest

import metaopt
from metaopt.configs import quickstart


def _config(tmp_path, **fields):
  cfg = quickstart.get_config()
  cfg.store = f"sqlite:///{tmp_path}/runs/q.db"
  for k, v in fields.items():
    setattr(cfg, k, v)
  return cfg


@pytest.mark.parametrize("task_name", ["user_tasks_missing_module:task", "user_tasks_ok:nosuch"])
def test_task_import_error_creates_no_store(tmp_path, monkeypatch, task_name):
  """`run --config.task_name=my_tasks:typo` failed with one clear error but left an empty
  database where the store was named (a later `report` then found an empty store)."""
  (tmp_path / "user_tasks_ok.py").write_text("task = None\n")
  monkeypatch.chdir(tmp_path)
  cfg = _config(tmp_path, task_name=task_name)
  with pytest.raises(ValueError, match="cannot import"):
    metaopt.run_config(cfg, progress=False)
  assert not os.path.exists(tmp_path / "runs" / "q.db")
  assert not os.path.exists(tmp_path / "runs")


def test_bad_store_url_fails_before_the_task_is_built(tmp_path, monkeypatch):
  """With the store opened after the task is built, a store that is not SQLite must still
  fail first: one error naming the store, the user's task module never imported."""
  (tmp_path / "notsqlite.db").write_text("hello")
  (tmp_path / "user_tasks_boom.py").write_text("raise RuntimeError('imported')\n")
  monkeypatch.chdir(tmp_path)
  cfg = _config(tmp_path, task_name="user_tasks_boom:task")
  cfg.store = f"sqlite:///{tmp_path}/notsqlite.db"
  with pytest.raises(ValueError, match="is not a SQLite database"):
    metaopt.run_config(cfg, progress=False)
  with pytest.raises(ValueError, match="unknown database dialect 'foo'"):
    metaopt.run_config(cfg, "foo://x", progress=False)


@pytest.mark.parametrize("spec, match", [
    ({"activation": {"type": "choice", "choices": "relu"}}, "choices must be a list"),
    ({"lr": {"type": "float", "lo": 1e-4, "hi": 1.0, "log": "no"}}, "log='no' must be True"),
    ({"width": {"type": "int", "lo": 8, "hi": 64, "structural": "yes"}},
     "structural='yes' must be True"),
])
def test_space_spec_flags_and_choices_are_checked(spec, match):
  """A config's space `choices: "relu"` became the four choices r, e, l, u, and `log: "no"`
  searched on a log scale (a non-empty string is truthy): both were accepted silently."""
  from metaopt.spaces import from_spec
  with pytest.raises(ValueError, match=match):
    from_spec(spec)


def test_space_flags_typed_in_code():
  from metaopt.spaces import Choice, Float, Int, Space
  for p in (Float(1e-3, 1.0, log="no"), Int(1, 4, structural="no"), Choice([1, 2], structural=1)):
    with pytest.raises(ValueError, match="must be True or False"):
      Space({"a": p})
  assert Space({"a": Float(1e-3, 1.0, log=True)}).params["a"].log is True


def _public_api_gaps() -> list[str]:
  import inspect

  from metaopt import hypergrad, spaces, tasks

  gaps = []

  def check(name, fn):
    sig = inspect.signature(fn)
    if not (fn.__doc__ or "").strip():
      gaps.append(f"{name}: no docstring")
    bare = [p for p, v in sig.parameters.items()
            if v.annotation is inspect.Parameter.empty and p not in ("self", "cls")]
    if bare:
      gaps.append(f"{name}: parameters without type hints {bare}")
    if sig.return_annotation is inspect.Signature.empty:
      gaps.append(f"{name}: no return type")

  for mod_name, mod in {"metaopt": metaopt, "metaopt.tasks": tasks, "metaopt.spaces": spaces,
                        "metaopt.hypergrad": hypergrad, "metaopt.nas": metaopt.nas,
                        "metaopt.lopt": metaopt.lopt, "metaopt.repair": metaopt.repair}.items():
    for n in getattr(mod, "__all__", dir(mod)):
      obj = getattr(mod, n, None)
      if not n.startswith("_") and inspect.isfunction(obj):
        check(f"{mod_name}.{n}", obj)
  for cls in (metaopt.Study, metaopt.Store, metaopt.Result, metaopt.Checkpointer):
    for n, fn in vars(cls).items():
      if not n.startswith("_") and inspect.isfunction(fn):
        check(f"metaopt.{cls.__name__}.{n}", fn)
  return gaps


def test_public_functions_have_docstrings_and_type_hints():
  """A user reading help() on metaopt.nas.load_table, Store.events or Study.to_pandas found
  no docstring or no types (the developers' guide asks for both on public functions)."""
  assert _public_api_gaps() == []


def test_from_flax_refuses_a_classifier_with_too_few_logits():
  """Labels 0..7 with a model of 3 outputs was accepted, and every trial then failed as
  "non-finite loss at epoch 0" with no word on why; now one ValueError before compiling."""
  import flax.linen as nn
  import numpy as np

  from metaopt import tasks
  from metaopt.spaces import Float, Space

  class Net(nn.Module):
    outputs: int

    @nn.compact
    def __call__(self, x):
      return nn.Dense(self.outputs)(x)

  x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
  y = np.arange(60) % 8
  space = Space({"learning_rate": Float(1e-3, 1e-1, log=True)})
  with pytest.raises(ValueError, match=r"outputs 3 logits.*\(8 classes\).*nn.Dense\(8\)"):
    tasks.from_flax(Net(3), (x, y), space, optimizer="adam")
  assert tasks.from_flax(Net(8), (x, y), space, optimizer="adam").data.num_classes == 8


def test_from_flax_traces_the_model_init_once():
  """from_flax traced the model's init twice (abstractly): once to check one trial, once
  more for the logits check; a model slow to trace (a big network) paid it twice."""
  import flax.linen as nn
  import numpy as np

  from metaopt import tasks
  from metaopt.spaces import Float, Space

  inits = []

  class Net(nn.Module):
    outputs: int

    @nn.compact
    def __call__(self, x):
      if self.is_initializing():
        inits.append(x.shape)
      return nn.Dense(self.outputs)(nn.relu(nn.Dense(16)(x)))

  x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
  y = np.arange(60) % 8
  space = Space({"learning_rate": Float(1e-3, 1e-1, log=True)})
  assert tasks.from_flax(Net(8), (x, y), space, optimizer="adam").data.num_classes == 8
  assert len(inits) == 1
  inits.clear()
  with pytest.raises(ValueError, match=r"outputs 3 logits.*\(8 classes\)"):
    tasks.from_flax(Net(3), (x, y), space, optimizer="adam")
  assert len(inits) == 1


def test_from_flax_says_how_to_search_a_schedule_s_peak_or_warmup():
  """A user's optax.warmup_cosine_decay_schedule(0.0, h["learning_rate"], h["warmup"], ...)
  was refused as "one trial does not trace with the space's default values
  (TracerBoolConversionError: Attempted boolean conversion of traced array with shape
  bool[].)": no word of which hyperparameter, why, or what to write instead."""
  import flax.linen as nn
  import numpy as np
  import optax

  from metaopt import tasks
  from metaopt.spaces import Float, Int, Space

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(x)

  x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
  data = (x, np.arange(60) % 3)

  def peak(h):
    return optax.adamw(optax.warmup_cosine_decay_schedule(0.0, h["learning_rate"], 5, 100))

  def scaled(h):
    base = optax.warmup_cosine_decay_schedule(0.0, 1.0, h["warmup"], 100)
    return optax.adamw(lambda t: h["learning_rate"] * base(t))

  lr = {"learning_rate": Float(1e-4, 1e-1, log=True)}
  with pytest.raises(ValueError, match=r"uses hyperparameter 'learning_rate' as a Python "
                     r"value \(TracerBoolConversionError\).*scale a fixed schedule.*"
                     r"structural=True"):
    tasks.from_flax(Net(), data, Space(lr), optimizer=peak)
  with pytest.raises(ValueError, match=r"uses hyperparameter 'warmup' as a Python value"):
    tasks.from_flax(Net(), data, Space({**lr, "warmup": Int(1, 20)}), optimizer=scaled)
  task = tasks.from_flax(Net(), data, Space({**lr, "warmup": Int(1, 20, structural=True)}),
                         optimizer=scaled)  # the two remedies the message names
  assert task.space.names == ["learning_rate", "warmup"]


def test_from_flax_named_optimizer_checks_the_space():
  """optimizer="adam" over a space naming the rate `lr` failed as "one trial does not trace
  ... missing a required argument: 'learning_rate'"; a space with `momentum` for Adam was
  searched although no trial reads it (identical models)."""
  import flax.linen as nn
  import numpy as np

  from metaopt import tasks
  from metaopt.spaces import Choice, Float, Space

  class Net(nn.Module):
    width: int = 4

    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(nn.Dense(self.width)(x))

  x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
  y = np.arange(60) % 3
  with pytest.raises(ValueError, match=r"optimizer='adam' needs \['learning_rate'\].*\['lr'\]"):
    tasks.from_flax(Net(), (x, y), Space({"lr": Float(1e-3, 1.0)}), optimizer="adam")
  with pytest.raises(ValueError, match=r"\['momentum'\] are not read"):
    tasks.from_flax(Net(), (x, y), Space({"learning_rate": Float(1e-3, 1.0),
                                          "momentum": Float(0.0, 0.9)}), optimizer="adam")
  ok = tasks.from_flax(lambda s: Net(s["width"]), (x, y), Space(
      {"b1": Float(0.5, 0.99), "width": Choice([4, 8], structural=True)}), optimizer="adam",
      defaults={"learning_rate": 1e-2})
  assert {"b1", "width", "learning_rate"} <= ok.reads


def _python_search_study(tmp_path) -> str:
  """A study run in Python by metaopt.search over a Python objective, stopped after its
  first round (as a killed script would leave it)."""
  from metaopt.spaces import Float, Space

  url = f"sqlite:///{tmp_path}/mine.db"
  ev = metaopt.CallableEvaluator(lambda p: (p["x"] - 0.3) ** 2)

  def stop(rnd, epoch, metrics):
    if rnd == 1:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    metaopt.search(metaopt.random_search(1), ev, space=Space({"x": Float(0.0, 1.0)}),
                   n_trials=4, population=2, store=url, study="mine", progress=False,
                   on_epoch=stop)
  return url


def test_cli_resume_and_evaluate_of_a_python_search_say_why(tmp_path):
  """`metaopt evaluate` / `resume` on the store of a study run by metaopt.search in Python
  said "config: missing field(s) ['name', 'pruner', ...]": a config error for a store."""
  import subprocess
  import sys

  url = _python_search_study(tmp_path)
  with pytest.raises(ValueError, match=r"run in Python by metaopt.search.*evaluate_top"):
    metaopt.evaluate_study(metaopt.Store(url, create=False), "mine")
  out = subprocess.run([sys.executable, "-m", "metaopt.cli", "resume", "--store", url],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
  assert out.returncode == 2, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "run in Python by metaopt.search" in lines[0], out.stderr
  assert "study='mine'" in lines[0]


def test_load_study_of_a_missing_file_creates_nothing(tmp_path):
  """metaopt.load_study("nope", "sqlite:///runs/nofile.db") said "study 'nope' not found"
  and left an empty database file behind (USERS.md: a typo that creates an empty database)."""
  url = f"sqlite:///{tmp_path}/nofile.db"
  with pytest.raises(ValueError, match="no such file"):
    metaopt.load_study("nope", url)
  assert not os.path.exists(tmp_path / "nofile.db")


def test_a_dict_where_a_space_belongs_is_one_clear_error():
  """search(..., space={"x": Float(0, 1)}) raised AttributeError: 'dict' object has no
  attribute 'dim'; create_study with a dict gave no hint what to do."""
  from metaopt.spaces import Float, Space

  ev = metaopt.CallableEvaluator(lambda p: p["x"])
  for call in (lambda: metaopt.search(metaopt.tpe(1), ev, space={"x": Float(0.0, 1.0)},
                                      n_trials=2, population=2),
               lambda: metaopt.create_study({"x": Float(0.0, 1.0)})):
    with pytest.raises(ValueError, match=r"expected a metaopt.spaces.Space, got dict; wrap"):
      call()
  study = metaopt.create_study(Space({"x": Float(0.0, 1.0)}))
  with pytest.raises(ValueError, match=r"trial 3 is unknown .*\(no trials asked yet\)"):
    study.tell(3, 1.0)


def test_from_flax_arrays_are_checked_per_split():
  """from_flax's own arrays missed checks that `dataset=` arrays have: a valid split with 3
  features against train's 4 was accepted, and a label column y[:, None] failed with
  "indices and arr must have the same number of dimensions; 3 vs. 2"."""
  import numpy as np

  from metaopt.tasks._src.custom import as_dataset

  x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
  y = np.arange(60) % 3
  bad = {
      "same shape per example in every split": {"train": (x, y), "valid": (x[:, :3], y)},
      "integer class labels in every split": {"train": (x, y.astype(np.float32)),
                                              "valid": (x, y)},
      r"data.train: integer class labels must be a 1-D array, got shape \(36, 1\)":
          (x, y[:, None]),
      "data.valid: class labels must be >= 0": {"train": (x, y), "valid": (x, y - 1)},
      "data.train: x has non-finite values": {"train": (np.where(x > 2, np.nan, x), y),
                                              "valid": (x, y)},
  }
  for match, data in bad.items():
    with pytest.raises(ValueError, match=match):
      as_dataset(data)
  assert as_dataset((x, y)).num_classes == 3
  assert as_dataset({"train": (x, x[:, :2]), "valid": (x, x[:, :2])}).num_classes is None


def test_a_refused_mesh_creates_no_store(tmp_path):
  """`run --config.mesh="(2,4)"` on one device: its one-line error came after the SQLite
  store had been created, leaving an empty runs/*.db."""
  import jax

  cfg = _config(tmp_path, mesh=(2 * jax.device_count(), 4))
  with pytest.raises(ValueError, match=r"mesh=.*must divide the number of devices"):
    metaopt.run_config(cfg, progress=False)
  assert not os.path.exists(tmp_path / "runs")
