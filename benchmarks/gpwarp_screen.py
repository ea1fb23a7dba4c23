"""The gpwarp lane's screen of ``gp_bo(output_warp=...)``: the searcher and budget of
``test_searchers_find_the_2d_sphere_and_rosenbrock_optima[gp]`` (6 rounds of 8, each run jitted
on its own) on the 2-D sphere and Rosenbrock on [-5, 10]^2; prints the final regrets per seed.
The test's bounds: sphere median < 1e-5, Rosenbrock median < 0.2 (over seeds 0-2).

    PYTHONPATH=$PWD:$PWD/tests python benchmarks/gpwarp_screen.py gp 0,1,2
    (value: 1 / 0 for True / False, a float k, auto or gp; seeds comma-separated)
"""

import sys

import jax
import jax.numpy as jnp
from _search_helpers import scan_search

from metaopt import gp_bo
from metaopt._src import benchmark_functions as bf


def main() -> None:
  a = sys.argv[1]
  ow = {"1": True, "0": False, "auto": "auto", "gp": "gp"}.get(a)
  ow = float(a) if ow is None else ow
  seeds = [int(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "0,1,2").split(",")]
  s = gp_bo(2, n_startup=8, capacity=64, fit_steps=50, n_candidates=256, n_local=64,
            grad_steps=10, buckets=False, n_diverse=3, output_warp=ow)

  def run(seed, which):
    f = lambda u: jnp.where(which == 0, bf.sphere(u), bf.rosenbrock(u))  # noqa: E731
    return scan_search(s, f, seed, 6, 8)[1]

  out = {w: [float(jax.jit(run)(seed, w)) for seed in seeds] for w in (0, 1)}
  print("output_warp", ow, "seeds", seeds, "sphere", out[0], "rosenbrock", out[1], flush=True)


if __name__ == "__main__":
  main()
