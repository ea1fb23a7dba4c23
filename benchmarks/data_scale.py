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

Protocol (BENCHMARKS.md): nothing is tuned here. Streaming and in-memory chunks are timed in
interleaved pairs after one warm-up chunk each (its compile seconds shown separately), chunk
keys from the report seeds; the throughput headline is the median of the pairs' ratios
(spread printed), the memory headline the median over pairs of fresh processes.

``--quick`` (a smoke run): the same population of 16, 8 steps per chunk (default 32), 3 timed
pairs (default 10) and one pair of memory processes (default 3). Nothing is written outside
the TFDS data directory.
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
import _protocol as proto  # noqa: E402 - benchmarks/ is on sys.path (the script's folder)


def _task(name: str):
  from metaopt.tasks import get_task
  return get_task("images32_resnet", channels=8, dataset=name)


def _population(task, n: int):
  import jax
  h = task.space.decode(jax.random.uniform(jax.random.key(0), (n, task.space.dim)))
  return h, jax.random.split(jax.random.key(1), n)


def throughput(pop_size: int, steps: int, batch: int, reps: int) -> dict:
  """Streaming and in-memory chunks timed in interleaved pairs (the same clock and load for
  both); each pair's ratio of images per second, keys from the report seeds."""
  import jax
  import jax.numpy as jnp

  from metaopt._src import population as pop
  from metaopt._src import streaming

  task = _task("images32")
  fns = task.build({})
  h, keys = _population(task, pop_size)
  alive = jnp.ones(pop_size, bool)
  # streaming: an epoch cut to `steps` minibatches drawn from all 50,000 images
  stm = streaming.make_streaming_kernel(fns, task.data, batch, block_steps=steps,
                                        max_steps=steps, eval_batch=100, eval_rows=100)
  # in memory: the whole train split on the device, the same number of steps
  data = pop.data_arrays(task.data)
  data = {**data, "x_valid": data["x_valid"][:100], "y_valid": data["y_valid"][:100]}
  mem = pop.make_kernel(fns, steps * batch, batch, mode="vmap")
  run = {"streaming": lambda s, k: stm.chunk(s, h, alive, k),
         "inmemory": lambda s, k: mem.chunk(s, h, alive, k, data)}
  states = {"streaming": stm.init(keys, h), "inmemory": mem.init(keys, h)}
  out: dict = {"compile_s": {}, "warmup_s": {}, "streaming_s": [], "inmemory_s": []}
  for name, f in run.items():  # warm-up chunk: compilation shown separately
    c0, t0 = pop.compile_seconds(), time.perf_counter()
    states[name], m = f(states[name], jax.random.key(0))
    jax.block_until_ready(m)
    out["warmup_s"][name] = time.perf_counter() - t0
    out["compile_s"][name] = pop.compile_seconds() - c0
  for seed in proto.seeds("report", reps):
    for name, f in run.items():
      t0 = time.perf_counter()
      states[name], m = f(states[name], jax.random.key(seed))
      jax.block_until_ready(m)
      out[f"{name}_s"].append(time.perf_counter() - t0)
  out["images_per_chunk"] = pop_size * steps * batch
  out["ratios"] = [i / s for s, i in zip(out["streaming_s"], out["inmemory_s"], strict=True)]
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
  ap.add_argument("--repeats", type=int, default=None,
                  help="timed chunk pairs (default 10; 3 with --quick)")
  ap.add_argument("--rss-repeats", type=int, default=None,
                  help="pairs of fresh processes for peak RSS (default 3; 1 with --quick; "
                  "0: throughput only)")
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
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        + (" (--quick: a smoke run)" if a.quick else ""))
  rss_ratios = []
  for _ in range((1 if a.quick else 3) if a.rss_repeats is None else a.rss_repeats):
    rss = {}
    for name in ("images32_5k", "images32"):
      out = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(steps),
                            "--population", str(a.population), "--batch", str(a.batch)],
                           capture_output=True, text=True, cwd=ROOT, check=True)
      rss[name] = json.loads(out.stdout.strip().splitlines()[-1])["maxrss_mb"]
    print(f"# peak RSS streaming images32_5k {rss['images32_5k']:.0f} MB, images32 "
          f"{rss['images32']:.0f} MB", flush=True)
    rss_ratios.append(rss["images32"] / rss["images32_5k"])
  tp = throughput(a.population, steps, a.batch, reps=a.repeats or (3 if a.quick else 10))
  print(f"# load average after the timed pairs: {os.getloadavg()[0]:.1f}")
  n_img = tp["images_per_chunk"]
  print(f"# population {a.population}, {steps} steps of {a.batch}; warm-up chunk (compile s): "
        f"streaming {tp['warmup_s']['streaming']:.1f} ({tp['compile_s']['streaming']:.1f}), "
        f"in memory {tp['warmup_s']['inmemory']:.1f} ({tp['compile_s']['inmemory']:.1f})")
  print(f"# images/s over {len(tp['ratios'])} interleaved pairs, median [IQR]: streaming "
        f"{proto.spread([n_img / t for t in tp['streaming_s']]).cell('.0f')}, in memory "
        f"{proto.spread([n_img / t for t in tp['inmemory_s']]).cell('.0f')}")
  sp, sr = proto.spread(tp["ratios"]), proto.spread(rss_ratios)
  print(f"# streaming_over_inmemory_throughput per pair: {sp}; "
        f"peak_rss_growth_50k_over_5k per process pair: {sr}")
  variant = f"16 images32_resnet CNNs, {steps} steps of {a.batch}" if a.population == 16 \
      else f"population {a.population}, {steps} steps of {a.batch}"
  proto.headline("streaming_over_inmemory_throughput", sp.median, variant)
  if rss_ratios:  # --rss-repeats 0 measures throughput only
    proto.headline("peak_rss_growth_50k_over_5k", sr.median, variant)


if __name__ == "__main__":
  main()
