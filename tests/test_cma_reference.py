"""CMA-ES's generation update against Hansen's tutorial (arXiv:1604.00772, eqs. 38-58, negative
weights; what the ``cmaes`` package behind Optuna's ``CmaEsSampler`` implements) written out in
float64 numpy: fed the points ``cma_es``'s ask handed out, the mean, step, paths and covariance
match after every generation, with and without jit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaopt._src.evolution import cma_es, default_c_mean, default_sigma0

D, LAM, GENS = 5, 10, 5


class _Reference:
  """Hansen's CMA-ES update (tutorial eqs. 41-47; parameters eqs. 48-58, Table 1)."""

  def __init__(self, n, lam, sigma, c_mean):
    mu = lam // 2
    wp = np.log((lam + 1) / 2) - np.log(np.arange(1, lam + 1))
    self.mu_eff = wp[:mu].sum() ** 2 / (wp[:mu] ** 2).sum()
    mu_eff_m = wp[mu:].sum() ** 2 / (wp[mu:] ** 2).sum()
    self.cc = (4 + self.mu_eff / n) / (n + 4 + 2 * self.mu_eff / n)
    self.c1 = 2 / ((n + 1.3) ** 2 + self.mu_eff)
    self.cmu = min(1 - self.c1, 2 * (self.mu_eff - 2 + 1 / self.mu_eff)
                   / ((n + 2) ** 2 + self.mu_eff))
    alpha = min(1 + self.c1 / self.cmu, 1 + 2 * mu_eff_m / (self.mu_eff + 2),
                (1 - self.c1 - self.cmu) / (n * self.cmu))
    self.w = np.where(wp >= 0, wp / wp[wp > 0].sum(), alpha * wp / -wp[wp < 0].sum())
    self.cs = (self.mu_eff + 2) / (n + self.mu_eff + 5)
    self.ds = 1 + 2 * max(0, np.sqrt((self.mu_eff - 1) / (n + 1)) - 1) + self.cs
    self.chi = np.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n ** 2))
    self.n, self.mu, self.cm, self.g = n, mu, c_mean, 0
    self.m, self.sigma = np.full(n, 0.5), sigma
    self.ps, self.pc, self.C = np.zeros(n), np.zeros(n), np.eye(n)

  def tell(self, x, y):
    self.g += 1
    yk = (x[np.argsort(y, kind="stable")] - self.m) / self.sigma
    yw = self.w[:self.mu] @ yk[:self.mu]
    self.m = self.m + self.cm * self.sigma * yw
    d2, b = np.linalg.eigh(self.C)
    c_isqrt = b @ np.diag(1 / np.sqrt(d2)) @ b.T
    self.ps = ((1 - self.cs) * self.ps
               + np.sqrt(self.cs * (2 - self.cs) * self.mu_eff) * c_isqrt @ yw)
    nps = np.linalg.norm(self.ps)
    self.sigma *= np.exp(self.cs / self.ds * (nps / self.chi - 1))
    hs = (nps / np.sqrt(1 - (1 - self.cs) ** (2 * (self.g + 1)))
          < (1.4 + 2 / (self.n + 1)) * self.chi)
    self.pc = (1 - self.cc) * self.pc + hs * np.sqrt(self.cc * (2 - self.cc) * self.mu_eff) * yw
    w_o = self.w * np.where(self.w >= 0, 1.0, self.n / np.sum((yk @ c_isqrt) ** 2, axis=1))
    dh = (1 - hs) * self.cc * (2 - self.cc)
    self.C = ((1 + self.c1 * dh - self.c1 - self.cmu * self.w.sum()) * self.C
              + self.c1 * np.outer(self.pc, self.pc)
              + self.cmu * np.einsum("i,ij,ik->jk", w_o, yk, yk))


ROT = np.linalg.qr(np.random.default_rng(0).normal(size=(D, D)))[0].astype(np.float32)


def _ellipsoid(u):
  """A rotated ellipsoid (condition 1e3, optimum at 0.3): the covariance has something to learn."""
  z = (u - 0.3) @ jnp.asarray(ROT).T
  return jnp.sum(10.0 ** (3 * jnp.arange(D) / (D - 1)) * z ** 2, axis=-1)


class ReferenceUpdate(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_generations_match_hansens_update(self):
    """``cma_es(5, popsize=10)`` with its defaults (``sigma0`` 0.134, ``c_mean`` 1.5), five
    generations on a rotated ellipsoid: after each, the strategy's mean, step, both paths and
    covariance equal the float64 reference fed the same points (float32 rounding apart); the
    step and covariance move away from their start, so the comparison is not vacuous."""
    s = cma_es(D, popsize=LAM)
    ask, tell = self.variant(s.ask, static_argnums=2), self.variant(s.tell)
    ref = _Reference(D, LAM, default_sigma0(D), default_c_mean(D))
    st = s.init(jax.random.key(0))
    for g in range(GENS):
      st, u = ask(st, jax.random.key(100 + g), LAM)
      y = _ellipsoid(u)
      st = tell(st, u, y, jnp.zeros(LAM, jnp.int32))
      ref.tell(np.asarray(u, np.float64), np.asarray(y, np.float64))
      es = st["es"]
      assert int(st["generation"]) == g + 1
      np.testing.assert_allclose(np.asarray(es.mean)[:D], ref.m, atol=2e-5)
      np.testing.assert_allclose(float(es.std), ref.sigma, rtol=1e-4)
      np.testing.assert_allclose(np.asarray(es.p_std), ref.ps, atol=2e-4)
      np.testing.assert_allclose(np.asarray(es.p_c), ref.pc, atol=2e-4)
      np.testing.assert_allclose(np.asarray(es.C), ref.C, atol=2e-4 * np.abs(ref.C).max())
    assert abs(ref.sigma / default_sigma0(D) - 1) > 0.01
    assert np.abs(ref.C - np.eye(D)).max() > 0.05


# Op by op the variant is slow (CMA-ES's ask / tell dispatched op by op, as in
# tests/test_cma_mean_rate.py); it runs in `make test-slow`.
ReferenceUpdate.test_generations_match_hansens_update__without_jit = pytest.mark.slow(
    ReferenceUpdate.test_generations_match_hansens_update__without_jit)
