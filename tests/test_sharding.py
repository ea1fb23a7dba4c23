"""Sharded populations: 8 simulated CPU devices give the same trials as one device."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json, sys
import jax
import metaopt, tasks
n_dev = int(sys.argv[1])
assert jax.device_count() == 8, jax.devices()
task = tasks.get_task("digits_mlp")
prog = metaopt.with_pruning(metaopt.sobol(task.space.dim),
                            metaopt.successive_halving(n_epochs=3, min_epochs=1, eta=2))
res = metaopt.search(prog, task, n_trials=12, population=12, epochs=3, batch_size=128, seed=4,
                     progress=False, devices=jax.devices()[:n_dev])
print(json.dumps([[t.number, t.status, t.objective, len(t.metrics)] for t in res.trials]))
"""


def _run(n_dev):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  r = subprocess.run([sys.executable, "-c", SCRIPT, str(n_dev)], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])


def test_eight_devices_match_one_device():
  one, eight = _run(1), _run(8)
  assert [t[:2] + t[3:] for t in one] == [t[:2] + t[3:] for t in eight]
  for a, b in zip(one, eight, strict=True):
    if a[2] is not None:
      assert abs(a[2] - b[2]) <= 1e-5  # 12 trials padded to 16 over 8 devices, then compacted
  assert sum(t[1] == "complete" for t in one) == 3
