"""Streaming input at scale: throughput against in-memory data, and memory against data size.

* ``streaming_over_inmemory_throughput``: a population of 16 ``images32_resnet`` CNNs on the
  50,000-image procedural set (prepared on first use), trained for the same number of steps
  (``--steps`` minibatches of ``--batch``) by the streaming kernel (host gathers from the
  array_record files, prefetch thread) and by the in-memory kernel (the whole train split on
  the device); the ratio of their images per second, timed after one warm-up chunk each.
* ``peak_rss_growth_50k_over_5k``: two fresh processes stream the same number of steps and
  validate on 500 rows in batches of 100, one on ``images32`` (50,000 train images), one on
  ``images32_5k`` (the first 5,000 of them); the ratio of their peak resident memory
  (``ru_maxrss``). Both validate 100 rows in the throughput comparison.

    python benchmarks/data_scale.py [--quick]

``--quick``: the same population of 16, 8 steps per chunk (default 32) and one timed chunk
(default 3). Nothing is written outside the TFDS data directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _task(name: str):
  from metaopt.tasks import get_task
  return get_task("images32_resnet", channels=8, dataset=name)


def _population(task, n: int):
  import jax
  h = task.space.decode(jax.random.uniform(jax.random.key(0), (n, task.space.dim)))
  return h, jax.random.split(jax.random.key(1), n)


def throughput(pop_size: int, steps: int, batch: int, reps: int) -> dict:
  import jax
  import jax.numpy as jnp

  from metaopt._src import population as pop
  from metaopt._src import streaming

  task = _task("images32")
  fns = task.build({})
  h, keys = _population(task, pop_size)
  alive = jnp.ones(pop_size, bool)
  out = {}
  # streaming: an epoch cut to `steps` minibatches drawn from all 50,000 images
  stm = streaming.make_streaming_kernel(fns, task.data, batch, block_steps=steps,
                                        max_steps=steps, eval_batch=100, eval_rows=100)
  st = stm.init(keys, h)
  t = []
  for r in range(reps + 1):
    t0 = time.perf_counter()
    st, m = stm.chunk(st, h, alive, jax.random.key(r))
    jax.block_until_ready(m)
    t.append(time.perf_counter() - t0)
  out["streaming_s"] = min(t[1:])
  # in memory: the whole train split on the device, the same number of steps
  data = pop.data_arrays(task.data)
  data = {**data, "x_valid": data["x_valid"][:100], "y_valid": data["y_valid"][:100]}
  mem = pop.make_kernel(fns, steps * batch, batch, mode="vmap")
  sm = mem.init(keys, h)
  t = []
  for r in range(reps + 1):
    t0 = time.perf_counter()
    sm, m = mem.chunk(sm, h, alive, jax.random.key(r), data)
    jax.block_until_ready(m)
    t.append(time.perf_counter() - t0)
  out["inmemory_s"] = min(t[1:])
  out["images_per_chunk"] = pop_size * steps * batch
  return out


def peak_rss(name: str, pop_size: int, steps: int, batch: int) -> None:
  """Child: stream `steps` minibatches and a batched validation; print peak RSS (MB)."""
  import resource

  import jax
  import jax.numpy as jnp

  from metaopt._src import streaming

  task = _task(name)
  fns = task.build({})
  h, keys = _population(task, pop_size)
  # validation of 16 trials at 32x32 holds pop * eval_batch activations: batches of 100
  stm = streaming.make_streaming_kernel(fns, task.data, batch, block_steps=steps,
                                        max_steps=steps, eval_batch=100, eval_rows=500)
  st = stm.init(keys, h)
  for r in range(2):
    st, m = stm.chunk(st, h, jnp.ones(pop_size, bool), jax.random.key(r))
    jax.block_until_ready(m)
  print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--population", type=int, default=16)
  ap.add_argument("--steps", type=int, default=None)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
  a = ap.parse_args()
  steps = a.steps or (8 if a.quick else 32)
  if a.child:
    peak_rss(a.child, a.population, steps, a.batch)
    return
  from metaopt.tasks import load_dataset
  t0 = time.perf_counter()
  for name in ("images32", "images32_5k"):  # prepared once (minutes), then cached on disk
    load_dataset(name)
  print(f"# datasets ready in {time.perf_counter() - t0:.0f} s; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
  rss = {}
  for name in ("images32_5k", "images32"):
    out = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(steps),
                          "--population", str(a.population), "--batch", str(a.batch)],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    rss[name] = json.loads(out.stdout.strip().splitlines()[-1])["maxrss_mb"]
    print(f"# peak RSS streaming {name}: {rss[name]:.0f} MB")
  tp = throughput(a.population, steps, a.batch, reps=1 if a.quick else 3)
  print(f"# population {a.population}, {steps} steps of {a.batch}: streaming "
        f"{tp['images_per_chunk'] / tp['streaming_s']:.0f} images/s, in memory "
        f"{tp['images_per_chunk'] / tp['inmemory_s']:.0f} images/s")
  print(f"streaming_over_inmemory_throughput: {tp['inmemory_s'] / tp['streaming_s']:.3f}")
  print(f"peak_rss_growth_50k_over_5k: {rss['images32'] / rss['images32_5k']:.3f}")


if __name__ == "__main__":
  main()
