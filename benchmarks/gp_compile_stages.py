"""GP-BO's ``ask`` compiled as stages (``population.StagedJit``; the engine does so for its
optimised build, ``opt``; ``fast``: the fast build's options, which the engine compiles as one
program) against the same build compiled as one XLA program: whether proposals and state
agree bit for bit, the XLA compile CPU of the single program and of each stage (compiled one
after another, so each stage's CPU is its own), and the run CPU per ask (min of 6 calls,
interleaved). The largest stage is not the concurrent compile's critical path: XLA already
compiles a program's LLVM code on a pool of threads (BENCHMARKS.md, session 23).
Default ``gp_bo(dim)``, ``n_obs`` observations of ``sum(u^2)``, a batch of ``batch``, the
state's bucket (``ask_static``). One JSON line per case, each case in a fresh process (JAX
caches compiled programs); CPU seconds are the figures on a loaded machine.

    PYTHONPATH=$PWD python benchmarks/gp_compile_stages.py              # the declared cases
    PYTHONPATH=$PWD python benchmarks/gp_compile_stages.py 5 20 10 opt  # one case
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

# (dim, observations, batch, build): d 2 / 5 / 10, the 64-, 128- and 256-row buckets,
# batches of 1 (two stages) and 10 (three), the optimised build and the fast one
CASES = [(2, 20, 10, "opt"), (5, 20, 1, "opt"), (10, 20, 10, "opt"), (2, 100, 1, "opt"),
         (5, 100, 10, "opt"), (10, 100, 1, "opt"), (5, 200, 10, "opt"), (2, 20, 1, "opt"),
         (10, 20, 1, "opt"), (2, 100, 10, "opt"), (5, 100, 1, "opt"), (10, 100, 10, "opt"),
         (2, 20, 10, "fast"), (5, 20, 10, "fast"), (10, 20, 10, "fast"), (5, 100, 10, "fast"),
         (10, 100, 1, "fast"), (2, 100, 1, "fast"),
         # added after (10, 100, 1, "fast") changed bits: optimised build only from then on
         (1, 20, 10, "opt"), (3, 40, 5, "opt"), (7, 150, 2, "opt"), (10, 200, 10, "opt"),
         (4, 250, 3, "opt")]


def one_case(dim: int, n_obs: int, batch: int, build: str) -> dict:
  """The figures of one case, in this process."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from metaopt import gp_bo
  from metaopt._src.population import FAST_COMPILE, StagedJit, TieredJit, opt_compile_options

  s = gp_bo(dim)
  u = jax.random.uniform(jax.random.key(1), (n_obs, dim))
  st = s.tell(s.init(jax.random.key(0)), u, jnp.sum(u**2, 1), jnp.zeros(n_obs, jnp.int32))
  key, b, opt = jax.random.key(2), s.ask_static(st), build == "opt"
  args = (st, key, batch, b)
  rec: dict = {"dim": dim, "n_obs": n_obs, "batch": batch, "build": build, "bucket": b}
  c0 = time.process_time()
  low = TieredJit(s.ask, static_argnums=(2, 3)).build(opt).lower(*args)
  c1 = time.process_time()
  single = low.compile()
  c2 = time.process_time()
  rec["single_trace_lower_cpu"], rec["single_compile_cpu"] = c1 - c0, c2 - c1
  c0 = time.process_time()
  low = StagedJit(s.ask, opt_compile_options() if opt else FAST_COMPILE,
                  static_argnums=(2, 3)).lower(*args)
  rec["staged_lower_cpu"] = time.process_time() - c0  # the trace is cached: lowering only
  per = []
  for stage in low._lowered:  # one at a time: each stage's own CPU
    t = time.process_time()
    stage.compile()
    per.append(time.process_time() - t)
  rec["stage_compile_cpu"] = per
  staged = low.compile()  # the engine's concurrent compile (here from JAX's cache)
  want, got = single(st, key), staged(st, key)
  a, g = jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)
  rec["bits_equal"] = (jax.tree_util.tree_structure(want) == jax.tree_util.tree_structure(got)
                       and all(x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
                               for x, y in zip(a, g, strict=True)))
  runs: dict = {"single": [], "staged": []}
  for _ in range(6):
    for name, f in (("single", single), ("staged", staged)):
      t = time.process_time()
      jax.block_until_ready(f(st, key))
      runs[name].append(time.process_time() - t)
  rec["run_cpu_single"], rec["run_cpu_staged"] = min(runs["single"]), min(runs["staged"])
  return rec


def main() -> None:
  if len(sys.argv) == 5:
    d, n, b, build = sys.argv[1:]
    print(json.dumps(one_case(int(d), int(n), int(b), build)), flush=True)
    return
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": root}
  recs = []
  for case in CASES:
    res = subprocess.run([sys.executable, os.path.abspath(__file__), *map(str, case)],
                         capture_output=True, text=True, env=env, check=True)
    recs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(json.dumps(recs[-1]), flush=True)
  single = sum(r["single_compile_cpu"] for r in recs)
  total = sum(sum(r["stage_compile_cpu"]) for r in recs)
  crit = sum(max(r["stage_compile_cpu"]) for r in recs)
  print(f"bit for bit: {sum(r['bits_equal'] for r in recs)}/{len(recs)} cases; XLA compile CPU "
        f"summed over the cases: single program {single:.1f} s, stages {total:.1f} s "
        f"({total / single - 1:+.0%}), largest stage {crit:.1f} s ({crit / single - 1:+.0%})")


if __name__ == "__main__":
  main()
