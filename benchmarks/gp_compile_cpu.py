"""Process CPU seconds to trace, lower and compile ``gp_bo(5).ask`` (the program of
``blackbox_suite.py --gp_compile_only``: ``jax.jit``, 20 observations, batch 10) with the
given ``gp_bo`` keyword arguments, plus its jaxpr size; one JSON line. Run in a fresh
process per figure (JAX caches compiled code); CPU seconds, not wall, on a loaded machine.

The second argument picks the program: ``switch`` (default; ``ask(state, key, n)``, every
bucket of observation counts compiled, what a user's own ``jit`` of ``ask`` builds) or
``static`` (``ask(state, key, n, ask_static(state))``, only the state's bucket, what the
engine builds); the third the observations (default 20; 100 and 200 reach the 128- and
256-row buckets).

    PYTHONPATH=$PWD python benchmarks/gp_compile_cpu.py '{"output_warp": "gp"}'
    PYTHONPATH=$PWD python benchmarks/gp_compile_cpu.py '{}' static 100
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from metaopt import gp_bo  # noqa: E402


def _eqns(jaxpr) -> int:
  """Equations of ``jaxpr``, those of its sub-jaxprs (branches, loop bodies) included."""
  n = 0
  for e in jaxpr.eqns:
    n += 1
    for v in e.params.values():
      for x in v if isinstance(v, (list, tuple)) else [v]:
        if isinstance(x, jcore.ClosedJaxpr):
          n += _eqns(x.jaxpr)
        elif isinstance(x, jcore.Jaxpr):
          n += _eqns(x)
  return n


def main() -> None:
  kw = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
  mode = sys.argv[2] if len(sys.argv) > 2 else "switch"
  n_obs = int(sys.argv[3]) if len(sys.argv) > 3 else 20
  if mode not in ("switch", "static"):
    raise ValueError(f"mode={mode!r}: must be 'switch' or 'static'")
  dim = 5
  s = gp_bo(dim, **kw)
  st = s.init(jax.random.key(0))
  u = jax.random.uniform(jax.random.key(1), (n_obs, dim))
  st = s.tell(st, u, jnp.sum(u**2, 1), jnp.zeros(n_obs, jnp.int32))
  args, static = (st, jax.random.key(2), 10), (2,)
  if mode == "static":
    args, static = (*args, s.ask_static(st)), (2, 3)
  c0, t0 = time.process_time(), time.perf_counter()
  low = jax.jit(s.ask, static_argnums=static).lower(*args)
  c1 = time.process_time()
  low.compile()
  c2, t2 = time.process_time(), time.perf_counter()
  eqns = _eqns(jax.make_jaxpr(s.ask, static_argnums=static)(*args).jaxpr)
  import metaopt
  print(json.dumps({"kwargs": kw, "mode": mode, "n_obs": n_obs, "metaopt": metaopt.__file__,
                    "bucket": args[3] if mode == "static" else None,
                    "trace_lower_cpu_s": round(c1 - c0, 2),
                    "compile_cpu_s": round(c2 - c1, 2), "total_cpu_s": round(c2 - c0, 2),
                    "wall_s": round(t2 - t0, 2), "jaxpr_eqns": eqns,
                    "load_1min": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
  main()
