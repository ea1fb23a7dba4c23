"""MOTPE variants against its defaults, ours only, on ZDT1-3 (d = 30, 200 evaluations asked one
at a time, as `benchmarks/multiobjective.py`), for choosing on development seeds.

Prints each variant's median hypervolume per function, then for each variant after the first
the geometric mean over the functions of the ratio of medians (variant / first) and a paired
sign / Wilcoxon test over all (function, seed) pairs. Writes nothing.

    python benchmarks/motpe_variants.py --variants default,cand64 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _protocol  # noqa: E402 - benchmarks/ is on sys.path
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import multiobjective as mo  # noqa: E402
import numpy as np  # noqa: E402

from metaopt._src.mosearch import motpe  # noqa: E402
from metaopt._src.multiobjective import hypervolume  # noqa: E402

VARIANTS = {"default": {}, "cand64": {"n_candidates": 64}, "cand12": {"n_candidates": 12},
            "cand24": {"n_candidates": 24},
            "gamma0.1": {"gamma": None},
            "gamma0.2": {"gamma": 0.2},
            "prior0.5": {"prior_weight": 0.5}}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--variants", default="default,cand64")
  ap.add_argument("--seeds", default="0,1,2")
  ap.add_argument("--evals", type=int, default=200)
  args = ap.parse_args()
  names = args.variants.split(",")
  unknown = [v for v in names if v not in VARIANTS]
  if unknown:
    raise ValueError(f"--variants: {unknown} unknown; allowed: {', '.join(VARIANTS)}")
  seeds = [int(s) for s in args.seeds.split(",")]
  res = {}
  for v in names:
    s = motpe(mo.DIM, **VARIANTS[v])
    ask, tell = jax.jit(s.ask, static_argnums=2), jax.jit(s.tell)
    t0 = time.time()
    out = {}
    for fname, fn in mo.FUNCTIONS.items():
      f = jax.jit(fn)
      hv = []
      for seed in seeds:  # the seeding of benchmarks/multiobjective.py's run_ours
        state, key, ys = s.init(jax.random.key(seed)), jax.random.key(seed + 7919), []
        for i in range(args.evals):
          state, u = ask(state, jax.random.fold_in(key, i), 1)
          y = f(u)
          state = tell(state, u, y, jnp.zeros(1, jnp.int32))
          ys.append(np.asarray(y))
        hv.append(float(hypervolume(np.concatenate(ys), mo.REF)))
      out[fname] = hv
    res[v] = out
    print(v, "per seed", {k: [round(h, 4) for h in x] for k, x in out.items()}, flush=True)
    print(v, {k: round(float(np.median(x)), 4) for k, x in out.items()},
          f"{time.time() - t0:.0f} s (compile included; load {os.getloadavg()[0]:.1f})", flush=True)
    if v != names[0]:
      base = res[names[0]]
      geo = np.exp(np.mean([np.log(np.median(out[k]) / np.median(base[k])) for k in out]))
      a, b = sum(out.values(), []), sum(base.values(), [])
      print(f"  {v} / {names[0]}: geometric mean of the ratio of medians {geo:.4f}; "
            f"{_protocol.paired(a, b, lower_is_better=False)}", flush=True)


if __name__ == "__main__":
  main()
