"""A search on a (pop, data) device mesh: 8 simulated CPU devices, trials over 2 of them and
each minibatch over 4, give the same trials as one device (the same driver, asked for through
``search(mesh=...)`` or a config's ``mesh``), in memory and streamed; bad mesh settings fail
before anything compiles."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json
import os
import jax
import metaopt
from metaopt._src.evaluators import as_evaluator
from metaopt import spaces
from metaopt._src import config as config_lib
from metaopt._src import population as pop
from metaopt.configs import quickstart

assert jax.device_count() == 8, jax.devices()
cfg = quickstart.get_config()
cfg.update(dict(name="m", task_name="digits_mlp", searcher_name="sobol", pruner_name="asha",
                n_trials=4, population=4, epochs=3, batch_size=64, seed=3,
                store="sqlite://", checkpoint_every_s=0.0))
cfg.pruner = {"min_epochs": 1, "eta": 2}
# moderate learning rates: at 0.1-0.3 float rounding differences grow chaotically
cfg.space = {"learning_rate": {"type": "float", "lo": 1e-3, "hi": 2e-2, "log": True},
             "width": {"type": "int", "lo": 16, "hi": 64}}
program, task, space, kw = config_lib.build(cfg)
rows = lambda res: [[t.number, t.status, t.objective, [m["train_loss"] for m in t.metrics]]
                    for t in res.trials]
out = {"one": rows(metaopt.search(program, task, space=space, devices=jax.devices()[:1],
                                  progress=False, **kw))}
cfg.mesh = (2, 4)  # the same search through the config path of `run.py run`
res = config_lib.run_config(cfg, metaopt.Store("sqlite://"), progress=False)
out["mesh"] = rows(res)
# over the memory budget, the same search streams its minibatches onto the mesh
os.environ["METAOPT_DATA_MEMORY_BYTES"] = "1000"
ev = as_evaluator(task, batch_size=64, mesh=(2, 4), space=space)
out["stream_kernel"] = type(ev.kernel({})).__name__
out["streamed"] = rows(metaopt.search(program, ev, space=space, progress=False, **kw))
del os.environ["METAOPT_DATA_MEMORY_BYTES"]
bs_space = spaces.Space({"learning_rate": spaces.Float(1e-3, 2e-2, log=True),
                         "batch_size": spaces.Choice([32, 50], structural=True)})
errors = []
for mesh, bs, sp in (((3, 2), 64, space), ((16, 1), 64, space), ((2, 4), 30, space),
                     ((2, 4), 64, bs_space), ((2, 4, 1), 64, space)):
  st = metaopt.Store("sqlite://")
  c0 = pop.compile_seconds()
  try:
    metaopt.search(program, task, space=sp, store=st, progress=False,
                   **dict(kw, batch_size=bs, mesh=mesh))
    errors.append([str(mesh), "no error", 0.0, []])
  except ValueError as e:
    errors.append([str(mesh), str(e), pop.compile_seconds() - c0, st.study_names()])
out["errors"] = errors
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def mesh_run():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("run", ["mesh", "streamed"])
def test_pop2_data4_search_matches_one_device(mesh_run, run):
  one, mesh = mesh_run["one"], mesh_run[run]
  assert mesh_run["stream_kernel"] == "StreamingKernel"
  assert [t[:2] for t in one] == [t[:2] for t in mesh]
  assert {t[1] for t in one} == {"complete", "pruned"}  # ASHA pruned on the mesh too
  for a, b in zip(one, mesh, strict=True):
    assert abs(a[2] - b[2]) <= 1.5 / 359  # valid accuracy: at most one of 359 flips
    assert len(a[3]) == len(b[3])  # the same epochs before pruning
    for la, lb in zip(a[3], b[3], strict=True):
      assert abs(la - lb) <= 1e-4 * max(1.0, abs(la))


def test_bad_mesh_settings_fail_before_compiling(mesh_run):
  errs = {m: (msg, compiled, studies) for m, msg, compiled, studies in mesh_run["errors"]}
  assert errs["(3, 2)"][0].startswith("mesh=(3, 2): pop * data = 6 must divide the number "
                                      "of devices (8")
  assert errs["(16, 1)"][0].startswith("mesh=(16, 1): pop * data = 16 must divide")
  assert errs["(2, 4)"][0].startswith("space batch_size=50: must be a multiple of the mesh's "
                                      "data axis (4)")
  assert errs["(2, 4, 1)"][0].startswith("mesh=(2, 4, 1): must be a (pop, data) pair")
  assert len(errs) == 4  # (the batch_size=30 case is checked below)
  for _msg, compiled, studies in errs.values():
    assert compiled == 0.0 and studies == []  # nothing compiled, nothing stored


def test_batch_size_must_split_over_the_data_axis(mesh_run):
  row = [e for e in mesh_run["errors"] if e[1].startswith("batch_size=")]
  assert len(row) == 1 and row[0][0] == "(2, 4)"
  assert row[0][1].startswith("batch_size=30: must be a multiple of the mesh's data axis (4)")
  assert row[0][2] == 0.0 and row[0][3] == []


def test_mesh_and_compute_dtype_checked_before_anything_runs():
  import metaopt
  from metaopt._src import config as config_lib
  from metaopt.configs import quickstart
  from metaopt.spaces import Float, Space

  ev = metaopt.CallableEvaluator(lambda p: p["x"] ** 2, space=Space({"x": Float(-1, 1)}))
  with pytest.raises(ValueError, match=r"mesh=\(1, 1\): only for tasks"):
    metaopt.search(metaopt.sobol(1), ev, n_trials=2, population=2, progress=False, mesh=(1, 1))
  task = metaopt.tasks.get_task("digits_mlp")
  with pytest.raises(ValueError, match="compute_dtype='float16': must be one of float32, "
                                       "bfloat16"):
    metaopt.search(metaopt.sobol(task.space.dim), task, n_trials=2, population=2,
                   progress=False, compute_dtype="float16")
  cfg = quickstart.get_config()
  assert "mesh" not in config_lib.validate(cfg)  # the default is not recorded
  cfg.mesh = (2, 4)
  assert config_lib.build(cfg)[3]["mesh"] == (2, 4)
  for bad in ((0, 4), (2,)):
    cfg.mesh = bad
    with pytest.raises(ValueError, match=r"mesh=.*: must be \[pop, data\], two integers"):
      config_lib.validate(cfg)
  cfg.mesh, cfg.compute_dtype = (), "float16"
  with pytest.raises(ValueError, match="compute_dtype='float16': must be 'float32' or"):
    config_lib.validate(cfg)


@pytest.mark.slow
def test_a_bfloat16_search_tracks_the_float32_one():
  import metaopt
  from metaopt.spaces import Float, Space

  task = metaopt.tasks.get_task("digits_mlp", max_width=32)
  space = Space({"learning_rate": Float(3e-3, 1e-2, log=True)})
  res = {dt: metaopt.search(metaopt.sobol(1), task, space=space, n_trials=4, population=4,
                            epochs=3, batch_size=64, seed=1, progress=False,
                            compute_dtype=dt)
         for dt in ("float32", "bfloat16")}
  a, b = ([t.objective for t in res[dt].trials] for dt in ("float32", "bfloat16"))
  assert min(a) > 0.7 and min(b) > 0.7, (a, b)  # both learn digits
  for x, y in zip(a, b, strict=True):
    assert abs(x - y) <= 0.05, (a, b)  # bfloat16 rounding moves accuracy a little
