"""Sharded populations: 8 simulated CPU devices give the same trials as one device.

A subprocess (8 simulated devices) runs the searches of one test: the pure JAX function's by
default, the digits task's (slow) on its own."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json, sys
import jax, jax.numpy as jnp
import metaopt
from metaopt import tasks
from metaopt.spaces import Float, Space
assert jax.device_count() == 8, jax.devices()
which = sys.argv[1]
out = {"task": [], "jax_fn": []}

for n_dev in (1, 8) if which == "task" else ():
  task = tasks.get_task("digits_mlp")
  prog = metaopt.with_pruning(metaopt.sobol(task.space.dim),
                              metaopt.successive_halving(n_epochs=3, min_epochs=1, eta=2))
  res = metaopt.search(prog, task, n_trials=12, population=12, epochs=3, batch_size=128,
                       seed=4, progress=False, devices=jax.devices()[:n_dev])
  out["task"].append([[t.number, t.status, t.objective, len(t.metrics)] for t in res.trials])

def train(h, key):
  w = jax.random.normal(key, (4,))
  w, _ = jax.lax.scan(lambda w, _: (w - h["lr"] * 2 * w, None), w, None, 10)
  return jnp.sum(w ** 2)

space = Space({"lr": Float(1e-3, 0.4, log=True)})
for n_dev in (1, 8) if which == "jax_fn" else ():
  ev = metaopt.JaxEvaluator(train, space=space, mode="vmap", devices=jax.devices()[:n_dev])
  res = metaopt.search(metaopt.sobol(1), ev, n_trials=16, population=8, seed=2, progress=False)
  out["jax_fn"].append([[t.number, t.status, t.objective] for t in res.trials])
print(json.dumps(out))
"""


def _run(which):
  """``{which: [one device's trials, eight devices']}``, ``which`` "task" or "jax_fn"."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  r = subprocess.run([sys.executable, "-c", SCRIPT, which], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=1800)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


# slow (~31 s in CI's default run, most of it the digits kernels' compiles on 1 and 8 devices).
# By default a population sharded over 8 devices gives one device's trials in
# test_a_pure_jax_function_sharded_over_eight_devices_matches_one (below), and the digits task
# on a (2, 4) device mesh through the search in tests/test_mesh_search.py.
@pytest.mark.slow
def test_eight_devices_match_one_device():
  one, eight = _run("task")["task"]
  assert [t[:2] + t[3:] for t in one] == [t[:2] + t[3:] for t in eight]
  for a, b in zip(one, eight, strict=True):
    if a[2] is not None:
      assert abs(a[2] - b[2]) <= 1e-5  # 12 trials padded to 16 over 8 devices, then compacted
  assert sum(t[1] == "complete" for t in one) == 3


def test_a_pure_jax_function_sharded_over_eight_devices_matches_one():
  one, eight = _run("jax_fn")["jax_fn"]
  assert [t[:2] for t in one] == [t[:2] for t in eight] and len(one) == 16
  for a, b in zip(one, eight, strict=True):
    assert abs(a[2] - b[2]) <= 1e-6 * max(1.0, abs(a[2]))
