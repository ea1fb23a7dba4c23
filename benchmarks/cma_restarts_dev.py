"""CMA-ES restarts ("none" / "ipop" / "bipop") on multimodal BBOB functions, dev seeds.

Quality only (final regret ``best - fopt``, NaN values skipped, after ``budget_mult * d``
evaluations), asked in batches of CMA-ES's default population, so an IPOP generation of
``2**k`` populations spans ``2**k`` asks. Paired over DEV_SEEDS (instance 1, seed-dependent
searcher keys); prints a table and, per mode, wins/ties/losses against "none" over all cells.

  python benchmarks/cma_restarts_dev.py [--fids 3 15 21 22] [--dims 2 5] [--budget-mult 100]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _protocol import DEV_SEEDS, paired, spread  # noqa: E402

from metaopt import bbob_problem, cma_es  # noqa: E402

MODES = ("none", "ipop", "bipop")


def run(mode: str, fid: int, dim: int, budget: int, seeds) -> np.ndarray:
  p = bbob_problem(fid, dim, 1)
  lam = 4 + int(math.floor(3 * math.log(dim)))
  s = cma_es(dim, restarts=mode)
  rounds = budget // lam

  def one(seed):
    def body(c, r):
      st, best = c
      st, u = s.ask(st, jax.random.fold_in(jax.random.key(seed + 10_000), r), lam)
      y = p.fn(u)
      return (s.tell(st, u, y, jnp.zeros(lam, jnp.int32)), jnp.fmin(best, jnp.nanmin(y))), None
    (_, best), _ = jax.lax.scan(body, (s.init(jax.random.key(seed)), jnp.inf), jnp.arange(rounds))
    return best

  best = jax.jit(jax.vmap(one))(jnp.asarray(seeds))
  return np.asarray(best, float) - p.minimum


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--fids", type=int, nargs="+", default=[3, 15, 21, 22])
  ap.add_argument("--dims", type=int, nargs="+", default=[2, 5])
  ap.add_argument("--budget-mult", type=int, default=100)
  a = ap.parse_args()
  res = {}
  for fid in a.fids:
    for d in a.dims:
      row = {m: run(m, fid, d, a.budget_mult * d, DEV_SEEDS) for m in MODES}
      res[(fid, d)] = row
      print(f"f{fid} d={d}: " + "  ".join(f"{m} {spread(row[m]).cell()}" for m in MODES),
            flush=True)
  for m in MODES[1:]:
    ours = np.concatenate([r[m] for r in res.values()])
    base = np.concatenate([r["none"] for r in res.values()])
    print(f"{m} vs none over {len(ours)} runs: {paired(ours, base, rtol=1e-9)}")


if __name__ == "__main__":
  main()
