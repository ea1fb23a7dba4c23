"""Where the implicit hypergradient's time goes against jaxopt's, counted rather than timed.

The ridge problem of ``benchmarks/hypergrad_cost.py`` (n=2000, d=200, float32, CG at tol
1e-6, both sides given ``w*``), one process, one XLA CPU thread. For each compiled program:
XLA's flop count (a while loop's body counted once), the 2000x200 matrix-vector products
(``dot``) in the entry computation and in the CG loop's body, the kernels (thunks: fusions,
dots, copies) in each, the output buffers, and the CPU time per call (``time.process_time``
summed over shuffled interleaved rounds of 10 calls: valid under load, unlike wall time),
with its ratio to jaxopt's. Besides the benchmark's four programs, two ablations size the
output buffers' share: ours returning only ``(value, grad, residual_norm, trustworthy)`` and
jaxopt returning twelve outputs like ours (the ten extra trivially derived).

    python benchmarks/implicit_cost_breakdown.py [--rounds 200]

Prints one row per program and ``cpu_implicit_over_jaxopt: X`` (the checked default). Writes
no file.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                           "=false intra_op_parallelism_threads=1").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hypergrad_cost import ridge_problem  # noqa: E402 - benchmarks/ is on sys.path

from metaopt import hypergrad  # noqa: E402

_SKIP = re.compile(r"[\s)}](parameter|get-tuple-element|tuple|constant|bitcast|while)\(")


def programs(train_loss, val_loss) -> dict:
  """The jitted programs compared: the benchmark's four and the two output ablations."""
  from jaxopt import implicit_diff, linear_solve

  ours = {name: hypergrad.implicit(train_loss, val_loss, solver="cg", maxiter=500, tol=1e-6,
                                   **kw)
          for name, kw in (("ours", {}), ("ours_check_false", {"check": False}),
                           ("ours_stats", {"stats": True}))}
  fns = {name: jax.jit(lambda h, w, f=f: f(h, w, None)) for name, f in ours.items()}

  def four(h, w):
    r = ours["ours"](h, w, None)
    return r.value, r.grad, r.diagnostics.residual_norm, r.diagnostics.trustworthy

  fns["ours_4_outputs"] = jax.jit(four)

  @implicit_diff.custom_root(
      jax.grad(lambda w, h: train_loss(w, h, None)),
      solve=lambda mv, b: linear_solve.solve_cg(mv, b, maxiter=500, tol=1e-6))
  def solver(init, h):
    del h
    return init

  value_grad = jax.value_and_grad(lambda h, w: val_loss(solver(w, h), h))
  fns["jaxopt"] = jax.jit(value_grad)

  def twelve(h, w):
    v, g = value_grad(h, w)
    z = jnp.zeros(())
    return (v, g, jnp.abs(g), jnp.isfinite(g), z + 1e-7, jnp.int32(12), jnp.isfinite(v), z, z,
            jnp.isfinite(g), w, z + jnp.nan)

  fns["jaxopt_12_outputs"] = jax.jit(twelve)
  return fns


def hlo_counts(compiled) -> dict:
  """Dots and kernels of the entry computation and of the (one) CG loop's body."""
  comps = re.split(r"\n(?=\S)", compiled.as_text())
  out = {"entry_dots": 0, "entry_kernels": 0, "body_dots": 0, "body_kernels": 0}
  for comp in comps:
    head = comp.split("\n")[0]
    where = "entry" if head.startswith("ENTRY") else None
    if re.search(r"while\(.*body=%(\S+?)[,\s]", comp):
      out["_body"] = re.search(r"body=%([^,\s]+)", comp).group(1)
    if where is None:
      continue
    lines = [ln for ln in comp.split("\n")[1:] if " = " in ln and not _SKIP.search(ln)]
    out[f"{where}_dots"] = sum(" dot(" in ln for ln in lines)
    out[f"{where}_kernels"] = len(lines)
  body = out.pop("_body", None)
  for comp in comps:
    if body and comp.split(" ")[0] == f"%{body}":
      lines = [ln for ln in comp.split("\n")[1:] if " = " in ln and not _SKIP.search(ln)]
      out["body_dots"] = sum(" dot(" in ln for ln in lines)
      out["body_kernels"] = len(lines)
  return out


def cpu_seconds(fns: dict, args: tuple, rounds: int, calls: int = 10) -> dict:
  """CPU seconds per call of each compiled program: sums over ``rounds`` shuffled
  interleaved rounds of ``calls`` calls each."""
  for f in fns.values():
    jax.block_until_ready(f(*args))
  total = dict.fromkeys(fns, 0.0)
  names, rng = list(fns), np.random.default_rng(1)
  for _ in range(rounds):
    rng.shuffle(names)
    for name in names:
      t = time.process_time()
      for _ in range(calls):
        out = fns[name](*args)
      jax.block_until_ready(out)
      total[name] += time.process_time() - t
  return {k: v / (rounds * calls) for k, v in total.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=200, help="interleaved timing rounds")
  args = parser.parse_args()
  train_loss, val_loss, lam, w_star, _ = ridge_problem()
  fns = {k: f.lower(lam, w_star).compile() for k, f in programs(train_loss, val_loss).items()}
  iterations = int(fns["ours"](lam, w_star).diagnostics.iterations)
  load = os.getloadavg()[0]
  cpu = cpu_seconds(fns, (lam, w_star), args.rounds)
  print(f"CG iterations: {iterations} (both sides stop at the same recursive residual); "
        f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}; jax {jax.__version__}")
  print(f"{'program':18s} {'MFLOP*':>7s} {'dots e+b':>9s} {'matvecs':>8s} {'kernels e+b':>12s} "
        f"{'outputs':>7s} {'cpu us':>8s} {'/jaxopt':>7s}")
  for name, c in fns.items():
    ca = c.cost_analysis()
    ca = ca[0] if isinstance(ca, list) else ca
    n = hlo_counts(c)
    matvecs = n["entry_dots"] + n["body_dots"] * iterations
    print(f"{name:18s} {ca['flops'] / 1e6:7.2f} {n['entry_dots']:4d}+{n['body_dots']:<4d} "
          f"{matvecs:8d} {n['entry_kernels']:6d}+{n['body_kernels']:<5d} "
          f"{len(jax.tree.leaves(c.out_info)):7d} {cpu[name] * 1e6:8.1f} "
          f"{cpu[name] / cpu['jaxopt']:7.3f}")
  print("* XLA cost analysis, a while loop's body counted once")
  print(f"cpu_implicit_over_jaxopt: {cpu['ours'] / cpu['jaxopt']:.3f}")


if __name__ == "__main__":
  main()
