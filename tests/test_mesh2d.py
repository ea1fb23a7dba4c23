"""Data-parallel populations: a (pop=2, data=4) mesh of 8 simulated CPU devices trains the
same trials as one device, within float tolerance (the gradient is a cross-device mean)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from metaopt import tasks
from metaopt._src import population as pop
from metaopt._src import mesh2d
assert jax.device_count() == 8, jax.devices()
shared = sys.argv[1] == "shared"
task = tasks.get_task("digits_mlp")
fns = task.build({})
h = task.space.decode(jax.random.uniform(jax.random.key(0), (4, task.space.dim)))
# moderate learning rates: at 0.1-0.3 float rounding differences grow chaotically
h["learning_rate"] = jnp.asarray([1e-3, 3e-3, 1e-2, 3e-3])
keys = jax.random.split(jax.random.key(1), 4)
alive = jnp.ones(4, bool)
data = pop.data_arrays(task.data)
out = {}
one = pop.make_kernel(fns, len(task.data.train), 64, shared, mode="vmap")
mesh = mesh2d.population_data_mesh(2, 4)
two = mesh2d.make_kernel(fns, len(task.data.train), 64, mesh, shared)
for name, k in (("one", one), ("mesh", two)):
  s = k.init(keys, h)
  for e in range(2):
    s, m = k.chunk(s, h, alive, jax.random.key(5 + e), data)
  out[name] = {"w": np.asarray(s["params"]["params"]["Dense_0"]["kernel"]).ravel()[::97].tolist(),
               "loss": np.asarray(m["train_loss"]).tolist(),
               "acc": np.asarray(m["valid_accuracy"]).tolist()}
  if name == "mesh":
    out["shards"] = len(s["params"]["params"]["Dense_0"]["kernel"].sharding.device_set)
print(json.dumps(out))
"""


def _run(mode):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  r = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


# Both slow (~18 s each on CI: a subprocess with 8 simulated devices). By default the shared
# kernel on a (2, 4) mesh (mesh2d.make_kernel, shared batches, what search(mesh=...) builds)
# trains the same trials as one device in tests/test_mesh_search.py's
# test_pop2_data4_search_matches_one_device, through the search and the config path.
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["shared", "per_trial"])
def test_pop2_data4_mesh_matches_one_device(mode):
  out = _run(mode)
  one, mesh = out["one"], out["mesh"]
  np = pytest.importorskip("numpy")
  np.testing.assert_allclose(mesh["w"], one["w"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(mesh["loss"], one["loss"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(mesh["acc"], one["acc"], atol=1.5 / 359)  # at most one flip
  assert out["shards"] == 8  # the population's states live on all 8 devices


def test_bad_mesh_arguments():
  import jax

  from metaopt._src import mesh2d
  from metaopt.tasks import get_task

  with pytest.raises(ValueError, match="data_size=0: must be an integer >= 1"):
    mesh2d.population_data_mesh(1, 0)
  with pytest.raises(ValueError, match="more than the 1 devices"):
    mesh2d.population_data_mesh(2, 4, jax.devices()[:1])
  mesh = mesh2d.population_data_mesh(1, 1)
  fns = get_task("digits_mlp").build({})
  with pytest.raises(ValueError, match="compute_dtype="):
    mesh2d.make_kernel(fns, 1000, 64, mesh, compute_dtype="float16")


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32():
  import jax
  import jax.numpy as jnp
  import numpy as np

  from metaopt._src import mesh2d
  from metaopt._src.population import fast_jit
  from metaopt.tasks import get_task

  task = get_task("digits_mlp")
  fns = task.build({})
  lo = mesh2d.bfloat16_compute(fns)
  h = {"learning_rate": jnp.asarray(3e-3), "weight_decay": jnp.asarray(1e-4),
       "width": jnp.asarray(32), "activation": jnp.asarray(0)}
  init = fast_jit(fns.init)  # one-call programs: compiled without backend optimisation
  s32 = s16 = init(jax.random.key(0), h)
  x, y = jnp.asarray(task.data.train.x[:128]), jnp.asarray(task.data.train.y[:128])
  step32, step16 = jax.jit(fns.train_step), jax.jit(lo.train_step)
  for _ in range(20):
    s32, t32 = step32(s32, (x, y), h)
    s16, t16 = step16(s16, (x, y), h)
  leaves = jax.tree_util.tree_leaves(s16["params"])
  assert all(a.dtype == jnp.float32 for a in leaves)
  assert t16["loss"].dtype == jnp.float32
  assert float(t16["loss"]) < 0.8 * float(fast_jit(fns.evaluate)(init(jax.random.key(0), h), x,
                                                                  y, h)["loss"])
  np.testing.assert_allclose(float(t16["loss"]), float(t32["loss"]), rtol=0.05)
