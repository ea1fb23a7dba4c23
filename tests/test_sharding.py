"""Sharded populations: 8 simulated CPU devices give the same trials as one device.

One subprocess (8 simulated devices) runs every search of this file: JAX and metaopt are
imported once."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json
import jax, jax.numpy as jnp
import metaopt
from metaopt import tasks
from metaopt.spaces import Float, Space
assert jax.device_count() == 8, jax.devices()
out = {"task": [], "jax_fn": []}

task = tasks.get_task("digits_mlp")
for n_dev in (1, 8):
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
for n_dev in (1, 8):
  ev = metaopt.JaxEvaluator(train, space=space, mode="vmap", devices=jax.devices()[:n_dev])
  res = metaopt.search(metaopt.sobol(1), ev, n_trials=16, population=8, seed=2, progress=False)
  out["jax_fn"].append([[t.number, t.status, t.objective] for t in res.trials])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs():
  """``{"task": [one device, eight], "jax_fn": [one device, eight]}`` trials."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                     text=True, timeout=1800)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


def test_eight_devices_match_one_device(runs):
  one, eight = runs["task"]
  assert [t[:2] + t[3:] for t in one] == [t[:2] + t[3:] for t in eight]
  for a, b in zip(one, eight, strict=True):
    if a[2] is not None:
      assert abs(a[2] - b[2]) <= 1e-5  # 12 trials padded to 16 over 8 devices, then compacted
  assert sum(t[1] == "complete" for t in one) == 3


def test_a_pure_jax_function_sharded_over_eight_devices_matches_one(runs):
  one, eight = runs["jax_fn"]
  assert [t[:2] for t in one] == [t[:2] for t in eight] and len(one) == 16
  for a, b in zip(one, eight, strict=True):
    assert abs(a[2] - b[2]) <= 1e-6 * max(1.0, abs(a[2]))
