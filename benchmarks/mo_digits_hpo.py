"""Multi-objective searchers vs random search on the two-objective digits HPO task of the tests.

The task is ``digits_hpo_task`` of ``tests/test_multiobjective.py`` (validation error vs
forward FLOPs of a digits MLP; width, learning rate and weight decay searched), 80 evaluations
in batches of 8, run by that file's ``_run``; the score is the hypervolume of all evaluated
points. ParEGO uses the test's small GP settings. Prints, per variant, the mean and
per-seed hypervolumes over ``--seeds`` (ParEGO's batch weights were chosen on seeds 3-9; the
test's seeds 0-2 are held out). Writes nothing.

    python benchmarks/mo_digits_hpo.py --seeds 3,4,5,6,7,8,9   # choosing
    python benchmarks/mo_digits_hpo.py --seeds 0,1,2 --variants random,parego_stratified
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import numpy as np  # noqa: E402
import test_multiobjective as T  # noqa: E402 - the task and runner of the tests

import metaopt  # noqa: E402
from metaopt._src.multiobjective import hypervolume  # noqa: E402

GP = dict(capacity=64, fit_steps=20, n_candidates=128, n_local=32, grad_steps=5, n_exploit=0)
VARIANTS = {"random": lambda: metaopt.random_search(3),
            "nsga2": lambda: metaopt.nsga2(3, pop_size=8),
            "motpe": lambda: metaopt.motpe(3, n_startup=8),
            **{f"parego_{w}": (lambda w=w: metaopt.parego(3, weights=w, **GP))
               for w in ("stratified", "random", "shared")}}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--variants", default="random,parego_shared,parego_stratified")
  ap.add_argument("--seeds", default="3,4,5,6,7,8,9")
  args = ap.parse_args()
  unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
  if unknown:
    raise ValueError(f"--variants: {unknown} unknown; allowed: {', '.join(VARIANTS)}")
  f, ref = T.digits_hpo_task()
  seeds = [int(s) for s in args.seeds.split(",")]
  for v in args.variants.split(","):
    t0 = time.time()
    hv = [hypervolume(T._run(VARIANTS[v](), f, 80, 8, s), ref) for s in seeds]
    print(f"{v}: mean {np.mean(hv):.4f}, per seed {[round(float(h), 4) for h in hv]} "
          f"({time.time() - t0:.0f} s, compile included; load {os.getloadavg()[0]:.1f})",
          flush=True)


if __name__ == "__main__":
  main()
