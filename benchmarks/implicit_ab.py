"""A/B of ``hypergrad.implicit`` against a base checkout's, and both against jaxopt, by CPU time.

The ridge problem of ``benchmarks/hypergrad_cost.py`` (n=2000, d=200, float32, CG at tol
1e-6, given ``w*``), one process, one XLA CPU thread. Compiles the checked default and
``check=False`` of this tree's ``hypergrad/implicit.py`` ("new") and of the one under
``--base`` (a copy of another commit, e.g. ``git archive main | tar -x -C /tmp/base``;
"base"), and jaxopt's ``custom_root`` + ``solve_cg``; prints each program's hypergradient,
CG iterations and residual read (equal numbers are the premise of the comparison), then CPU
time per call (``time.process_time`` summed over shuffled interleaved rounds of 10 calls:
valid under load, unlike wall time) and, for reference only, the best wall time of the same
rounds.

    python benchmarks/implicit_ab.py --base /tmp/base [--rounds 150]

Prints ``new_over_base: X`` (checked default) and ``new_over_jaxopt: X``. Writes no file.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                           "=false intra_op_parallelism_threads=1").strip()

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hypergrad_cost import ridge_problem  # noqa: E402 - benchmarks/ is on sys.path
from implicit_cost_breakdown import cpu_seconds, programs  # noqa: E402

from metaopt import hypergrad  # noqa: E402


def base_implicit(base: str):
  """``implicit`` of the ``hypergrad/implicit.py`` under ``base`` (its imports resolve to
  this tree's ``metaopt``, so only that file may differ)."""
  spec = importlib.util.spec_from_file_location(
      "base_implicit", os.path.join(base, "hypergrad", "implicit.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.implicit


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--base", required=True, help="root of the base checkout")
  parser.add_argument("--rounds", type=int, default=150, help="interleaved timing rounds")
  args = parser.parse_args()
  train_loss, val_loss, lam, w_star, _ = ridge_problem()
  ours = programs(train_loss, val_loss)
  fns = {"new": ours["ours"], "new_check_false": ours["ours_check_false"],
         "jaxopt": ours["jaxopt"]}
  implicit_base = base_implicit(args.base)
  for name, kw in (("base", {}), ("base_check_false", {"check": False})):
    f = implicit_base(train_loss, val_loss, solver="cg", maxiter=500, tol=1e-6, **kw)
    fns[name] = jax.jit(lambda h, w, f=f: f(h, w, None))
  fns = {k: f.lower(lam, w_star).compile() for k, f in fns.items()}
  for name in ("new", "base", "new_check_false", "base_check_false"):
    r = fns[name](lam, w_star)
    d = r.diagnostics
    print(f"{name:17s} grad {float(r.grad):.9e}  CG iterations {int(d.iterations)}  "
          f"residual read {float(d.residual_norm):.6e}  trustworthy {bool(d.trustworthy)}")
  load = os.getloadavg()[0]
  cpu = cpu_seconds(fns, (lam, w_star), args.rounds)
  best = dict.fromkeys(fns, float("inf"))
  for _ in range(args.rounds):
    for name, f in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(f(lam, w_star))
      best[name] = min(best[name], time.perf_counter() - t)
  print(f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}; {args.rounds} rounds; "
        f"jax {jax.__version__}; hypergrad from {os.path.dirname(hypergrad.__file__)}")
  for name in fns:
    print(f"{name:17s} cpu {cpu[name] * 1e6:8.1f} us/call  / jaxopt {cpu[name] / cpu['jaxopt']:.3f}"
          f"   (best wall {best[name] * 1e6:7.1f} us, / jaxopt {best[name] / best['jaxopt']:.3f})")
  print(f"new_check_false_over_base: {cpu['new_check_false'] / cpu['base_check_false']:.3f}")
  print(f"new_over_base: {cpu['new'] / cpu['base']:.3f}")
  print(f"new_over_jaxopt: {cpu['new'] / cpu['jaxopt']:.3f}")


if __name__ == "__main__":
  main()
