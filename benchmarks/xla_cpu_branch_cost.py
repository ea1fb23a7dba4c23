"""What independent branches and extra outputs cost a small XLA CPU program, by CPU and wall time.

XLA's CPU runtime runs a program's kernels (thunks) inline, one after another, when its
thunk graph is a chain, when every buffer is at most 512 bytes, or when there are at most 8
thunks; otherwise it runs them as a dataflow graph and hands ready kernels beyond the first
to its thread pool. This script times tiny programs on a vector of ``n`` floats (``n = 100``:
400-byte buffers; ``n = 200`` and ``2000``: above the threshold):

* ``1 out``: ``sum(x)``;
* ``2 outs, chained``: ``sum(x)`` and a scalar computed from it;
* ``2 outs, independent``: ``sum(x)`` and ten scalars of another input, stacked into one output;
* ``11 outs, independent``: ``sum(x)`` and those ten scalars as ten outputs.

CPU time per call is ``time.process_time`` (all threads) summed over interleaved rounds of 20
calls; wall is the best round's mean. One XLA CPU intra-op thread, as the hypergradient
benchmarks set it.

    python benchmarks/xla_cpu_branch_cost.py [--rounds 200]

Writes no file.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                           "=false intra_op_parallelism_threads=1").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

PROGRAMS = {
    "1 out": lambda x, s: (jnp.sum(x),),
    "2 outs, chained": lambda x, s: (lambda t: (t, t * s + 1.0))(jnp.sum(x)),
    "2 outs, independent": lambda x, s: (jnp.sum(x), jnp.stack([s + j for j in range(1, 11)])),
    "11 outs, independent": lambda x, s: (jnp.sum(x),) + tuple(s + j for j in range(1, 11)),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=200, help="interleaved timing rounds")
  args = parser.parse_args()
  fns = {}
  for n in (100, 200, 2000):
    a = (jnp.ones(n), jnp.zeros(()))
    for name, f in PROGRAMS.items():
      fns[(name, n)] = (jax.jit(f).lower(*a).compile(), a)
  cpu, wall, calls = dict.fromkeys(fns, 0.0), dict.fromkeys(fns, float("inf")), 20
  for _ in range(args.rounds):
    for key, (f, a) in fns.items():
      t, w = time.process_time(), time.perf_counter()
      for _ in range(calls):
        out = f(*a)
      jax.block_until_ready(out)
      cpu[key] += time.process_time() - t
      wall[key] = min(wall[key], (time.perf_counter() - w) / calls)
  print(f"load average {os.getloadavg()[0]:.1f}; jax {jax.__version__}; {args.rounds} rounds")
  for (name, n) in fns:
    print(f"n={n:5d} {name:22s} cpu {cpu[(name, n)] / args.rounds / calls * 1e6:7.1f} us/call"
          f"   best wall {wall[(name, n)] * 1e6:6.1f} us")


if __name__ == "__main__":
  main()
