"""Process CPU and XLA compiles of building a searcher (``cma_es(d)``, ``gp_bo(d)``, ...).

Each searcher is built in a fresh Python process (after ``import metaopt``): the first build of
the process (``first``), the same build again (``again``) and a build at a new dimension
(``new_dim``), each timed with ``time.process_time`` and its XLA compiles counted with JAX
monitoring events. Wall time is not reported (shared machines). Prints one JSON line per
searcher and a Markdown table.

    OMP_NUM_THREADS=1 python benchmarks/searcher_build.py                  # this checkout
    PYTHONPATH=/tmp/base OMP_NUM_THREADS=1 python benchmarks/searcher_build.py --root /tmp/base

``--root`` runs another checkout's code (e.g. the base commit, for a before/after table);
``--repeat k`` builds k times in fresh processes and reports the median CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import collections, json, sys, time
import jax
import metaopt
n = collections.Counter()
def count(event, duration, **kw):
  if event == "/jax/core/compile/backend_compile_duration":
    n["c"] += 1
jax.monitoring.register_event_duration_secs_listener(count)
make = {
  "cma_es": lambda d: metaopt.cma_es(d),
  "cma_es_ipop": lambda d: metaopt.cma_es(d, restarts="ipop"),
  "cma_es_bipop": lambda d: metaopt.cma_es(d, restarts="bipop"),
  "cma_es_orthogonal": lambda d: metaopt.cma_es(d, sampling="orthogonal"),
  "gp_bo": lambda d: metaopt.gp_bo(d),
  "tpe": lambda d: metaopt.tpe(d),
  "sobol": lambda d: metaopt.sobol(d),
  "random_search": lambda d: metaopt.random_search(d),
  "regularized_evolution": lambda d: metaopt.regularized_evolution(d),
  "open_es": lambda d: metaopt.open_es(d),
}[sys.argv[1]]
d = int(sys.argv[2])
out = {"searcher": sys.argv[1], "dim": d, "metaopt": metaopt.__file__}
for label, dim in (("first", d), ("again", d), ("new_dim", 2 * d + 1)):
  n.clear()
  t = time.process_time()
  make(dim)
  out[label + "_cpu_ms"] = 1000 * (time.process_time() - t)
  out[label + "_compiles"] = n["c"]
print(json.dumps(out))
"""

SEARCHERS = ("cma_es", "cma_es_ipop", "cma_es_bipop", "cma_es_orthogonal", "gp_bo", "tpe",
             "sobol", "random_search", "regularized_evolution", "open_es")


def measure(searcher: str, dim: int, root: str | None) -> dict:
  """One fresh process building ``searcher`` (first, again, at a new dimension)."""
  env = dict(os.environ)
  if root:
    env["PYTHONPATH"] = root
  r = subprocess.run([sys.executable, "-c", _CHILD, searcher, str(dim)], env=env, cwd=root,
                     capture_output=True, text=True, check=True)
  return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--root", default=None, help="checkout whose metaopt to build (default: this)")
  ap.add_argument("--dim", type=int, default=5)
  ap.add_argument("--repeat", type=int, default=1)
  ap.add_argument("--searchers", default=",".join(SEARCHERS))
  args = ap.parse_args()
  rows = []
  for s in args.searchers.split(","):
    runs = [measure(s, args.dim, args.root) for _ in range(args.repeat)]
    row = {k: (statistics.median(r[k] for r in runs) if k.endswith("_ms") else runs[0][k])
           for k in runs[0]}
    print(json.dumps(row), flush=True)
    rows.append(row)
  print("\n| searcher | first: CPU ms / compiles | again | new dim |\n|---|---|---|---|")
  for r in rows:
    print(f"| {r['searcher']} | " + " | ".join(
        f"{r[k + '_cpu_ms']:.0f} / {r[k + '_compiles']}" for k in ("first", "again", "new_dim"))
        + " |")


if __name__ == "__main__":
  main()
