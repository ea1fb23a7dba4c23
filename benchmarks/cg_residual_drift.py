"""Can CG's own residual replace the implicit default's true-residual check? Drift, measured.

``hypergrad.implicit`` checks the true residual ``||H v - b|| / ||b||`` with one Hessian-vector
product after CG (28 matrix-vector products against jaxopt's 26 on the benchmark's ridge).
CG's recursive residual is free, but in floating point it drifts from the true one. This script
runs float32 CG on the ``hypergrad_cost.py`` ridge system and on synthetic SPD systems and
prints, per system: CG iterations, the recursive estimate (what ``check=False`` reports), the
float32 check's reading (``cg_solve``), the exact residual of the float32 solution (float64
arithmetic), the drift ``||b - A x - r|| / ||b||`` in units of eps with ``x`` accumulated in
float32 and in float64 (separates the rounding of the ``x`` updates from that of the
products), and a *free* drift bound from quantities a CG loop has at hand, under the same
product-rounding model the check's allowance uses (``ROUNDING_SLACK`` eps per product, plus
the ``x`` and ``r`` updates' rounding, ``||A||`` from the Lanczos tridiagonal's Gershgorin
bound). The bound certifies a solve when ``estimate + bound <= tol + slack`` (the check's own
acceptance with ``||A x|| ~ ||b||``); where it does not, the product is needed.

    python benchmarks/cg_residual_drift.py

Writes no file.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                           "=false intra_op_parallelism_threads=1").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hypergrad_cost import ridge_problem  # noqa: E402 - benchmarks/ is on sys.path

from metaopt import hypergrad  # noqa: E402
from metaopt.hypergrad.implicit import ROUNDING_SLACK, _cg  # noqa: E402

EPS = float(np.finfo(np.float32).eps)


def instrumented_cg(mv, b: np.ndarray, tol: float, x_dtype) -> dict:
  """Float32 CG as ``hypergrad.cg_solve`` runs it (``x`` kept in ``x_dtype``), recording the
  norms a drift bound needs."""
  x, r, p = np.zeros(b.shape, x_dtype), b.copy(), b.copy()
  rs = np.float32(r @ r)
  b_norm, r_norms, x_norms, alphas, betas = np.sqrt(rs), [np.sqrt(rs)], [], [], []
  while len(alphas) < 5000 and np.sqrt(rs) > tol * b_norm:
    ap = np.asarray(mv(jnp.asarray(p)), np.float32)
    alpha = np.float32(rs / np.float32(p @ ap))
    x = (x + x_dtype(alpha) * p.astype(x_dtype)).astype(x_dtype)
    r = (r - alpha * ap).astype(np.float32)
    rs_new = np.float32(r @ r)
    beta = np.float32(rs_new / rs)
    p = (r + beta * p).astype(np.float32)
    rs = rs_new
    alphas.append(alpha), betas.append(beta), r_norms.append(np.sqrt(rs))
    x_norms.append(np.linalg.norm(x))
  return {"x": x, "r": r, "r_norms": np.array(r_norms), "x_norms": np.array(x_norms),
          "alphas": np.array(alphas, np.float64), "betas": np.array(betas, np.float64)}


def lanczos_norm_bound(alphas: np.ndarray, betas: np.ndarray) -> float:
  """Gershgorin bound on the largest eigenvalue of CG's Lanczos tridiagonal (scalars only)."""
  k = len(alphas)
  diag = 1.0 / alphas + np.concatenate([[0.0], betas[:-1] / alphas[:-1]])
  off = np.sqrt(betas[:-1]) / alphas[:-1]
  up, down = np.concatenate([off, [0.0]]), np.concatenate([[0.0], off])
  return float(np.max(diag + up + down)) if k else 0.0


def row(name: str, h64: np.ndarray, mv, b: np.ndarray, tol: float) -> None:
  """One table row: the library's CG (estimate, check, exact) and the instrumented re-run's
  drift and free bound (NumPy float32 vector ops, so its iterations can differ by one)."""
  b32, b64 = jnp.asarray(b, jnp.float32), np.asarray(b, np.float64)
  exact = lambda v: np.linalg.norm(h64 @ np.asarray(v, np.float64) - b64) / np.linalg.norm(b64)
  solved = hypergrad.cg_solve(mv, b32, maxiter=5000, tol=tol)
  x, k, estimate = _cg(mv, b32, 5000, tol)
  assert np.array_equal(np.asarray(x), np.asarray(solved.x))
  drift = {}
  for dtype in (np.float32, np.float64):
    s = instrumented_cg(mv, np.asarray(b, np.float32), tol, dtype)
    gap = b64 - h64 @ s["x"].astype(np.float64) - s["r"].astype(np.float64)
    drift[dtype] = np.linalg.norm(gap) / np.linalg.norm(b64) / EPS
  rn, xn = s["r_norms"] / s["r_norms"][0], s["x_norms"] / s["r_norms"][0]
  norm_a = lanczos_norm_bound(s["alphas"], s["betas"])
  bound = (ROUNDING_SLACK * EPS * np.sum(rn[:-1] + rn[1:])  # the products, the check's model
           + EPS / 2 * norm_a * np.sum(xn)                  # x updates, seen through A
           + EPS / 2 * np.sum(2 * rn[1:] + rn[:-1]))        # r updates
  certifies = float(estimate) + bound <= tol + 2 * ROUNDING_SLACK * EPS
  read = float(solved.residual_norm)
  print(f"| {name} | {tol:g} | {int(k)} | {float(estimate):.3g} | {read:.3g} "
        f"| {exact(solved.x):.3g} | {drift[np.float32]:.1f} | {drift[np.float64]:.1f} "
        f"| {norm_a / np.linalg.norm(h64, 2):.3f} | {bound:.3g} | {'yes' if certifies else 'no'} "
        f"| {bool(solved.converged)} |")


def main() -> None:
  train_loss, val_loss, lam, w_star, (x, *_) = ridge_problem()
  _, lin = jax.linearize(jax.grad(lambda w: train_loss(w, lam, None)), w_star)
  b = np.asarray(jax.grad(val_loss)(w_star, lam))
  x64 = np.asarray(x, np.float64)
  ridge64 = x64.T @ x64 + float(lam) * np.eye(x64.shape[1])
  print(f"jax {jax.__version__}; eps {EPS:.3g}; drift in eps; ||A|| est / ||A||: Lanczos "
        "Gershgorin bound over the true norm\n")
  print("| system | tol | CG its | estimate | check reads | exact | drift x32 | drift x64 "
        "| norm est | free bound | bound certifies | default converged |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for tol in (1e-6, 1e-5):
    row("ridge 2000x200 (benchmark)", ridge64, jax.jit(lin), b, tol)
  rng = np.random.default_rng(0)
  for n, cond in ((200, 10), (200, 100), (200, 1000), (50, 1000)):
    q = np.linalg.qr(rng.normal(size=(n, n)))[0]
    a64 = q @ np.diag(np.logspace(0, np.log10(cond), n)) @ q.T
    a = jnp.asarray(a64, jnp.float32)
    row(f"SPD n={n}, cond {cond}", a64, jax.jit(lambda v, a=a: a @ v),
        rng.normal(size=n).astype(np.float32), 1e-6)
  z, d = rng.normal(size=(3000, 100)), rng.uniform(0.01, 0.25, 3000)
  a64 = z.T @ (d[:, None] * z) / 3000 + 1e-3 * np.eye(100)
  zf, df = jnp.asarray(z, jnp.float32), jnp.asarray(d, jnp.float32)
  row("logistic-type 3000x100", a64, jax.jit(lambda v: zf.T @ (df * (zf @ v)) / 3000 + 1e-3 * v),
      rng.normal(size=100).astype(np.float32), 1e-5)


if __name__ == "__main__":
  main()
