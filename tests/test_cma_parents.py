"""CMA-ES's ``parent_ratio``: ``mu = floor(ratio * popsize)`` parents with Hansen's weights and
learning rates (checked against the tutorial's formulas in numpy), evosax's own class at 0.5,
``ask``/``tell`` jittable, the 2-D sphere and Rosenbrock optima still found."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _search_helpers import assert_finds_sphere_and_rosenbrock

from metaopt._src import benchmark_functions as bf
from metaopt._src.evolution import _cma_class, cma_es


def _hansen(lam: int, mu: int, n: int) -> dict:
  """Hansen's CMA-ES tutorial (arXiv:1604.00772), eqs. 48-58 and Table 1, in float64 numpy."""
  wp = np.log(mu + 0.5) - np.log(np.arange(1, lam + 1))
  mu_eff = wp[:mu].sum() ** 2 / (wp[:mu] ** 2).sum()
  mu_eff_m = wp[mu:].sum() ** 2 / (wp[mu:] ** 2).sum()
  c1 = 2 / ((n + 1.3) ** 2 + mu_eff)
  cmu = min(1 - c1, 2 * (mu_eff - 2 + 1 / mu_eff) / ((n + 2) ** 2 + mu_eff))
  alpha = min(1 + c1 / cmu, 1 + 2 * mu_eff_m / (mu_eff + 2), (1 - c1 - cmu) / (n * cmu))
  w = np.where(wp >= 0, wp / wp[wp > 0].sum(), alpha * wp / -wp[wp < 0].sum())
  cs = (mu_eff + 2) / (n + mu_eff + 5)
  return {"weights": w, "mu_eff": mu_eff, "c_1": c1, "c_mu": cmu, "c_std": cs,
          "c_c": (4 + mu_eff / n) / (n + 4 + 2 * mu_eff / n),
          "d_std": 1 + 2 * max(0.0, np.sqrt((mu_eff - 1) / (n + 1)) - 1) + cs}


@pytest.mark.parametrize("lam,ratio,n,mu", [(10, 0.3, 2, 3), (10, 0.3, 10, 3), (8, 0.25, 5, 2),
                                             (7, 0.3, 3, 2)])
def test_parent_weights_and_rates_follow_hansen(lam, ratio, n, mu):
  """Weights: ``mu`` positive ones summing to 1, decreasing; the rest negative summing to
  ``-alpha``; ``mu_eff`` and every learning rate as in the tutorial."""
  p = _cma_class("gaussian", ratio)(population_size=lam, solution=jnp.zeros(n)).default_params
  want = _hansen(lam, mu, n)
  w = np.asarray(p.weights)
  assert np.sum(w > 0) == mu and np.all(np.diff(w) < 0)
  np.testing.assert_allclose(w[:mu].sum(), 1.0, rtol=1e-6)
  for k, v in want.items():
    np.testing.assert_allclose(np.asarray(getattr(p, k)), v, rtol=2e-5, err_msg=k)


def test_half_is_evosax_own_class():
  """The default 0.5 is evosax's class (its weights ``log((lam + 1) / 2) - log i``, also for
  an odd popsize), so the default's trajectories are those before the option."""
  from evosax.algorithms import CMA_ES

  assert _cma_class("gaussian", 0.5) is CMA_ES
  a = cma_es(3, popsize=7)
  b = cma_es(3, popsize=7, parent_ratio=0.5)
  sa, ua = a.ask(a.init(jax.random.key(0)), jax.random.key(1), 7)
  sb, ub = b.ask(b.init(jax.random.key(0)), jax.random.key(1), 7)
  np.testing.assert_array_equal(ua, ub)
  ta = a.tell(sa, ua, bf.sphere(ua), jnp.zeros(7, jnp.int32))
  tb = b.tell(sb, ub, bf.sphere(ub), jnp.zeros(7, jnp.int32))
  np.testing.assert_array_equal(ta["es"].mean, tb["es"].mean)


class ParentsJittable(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_mean_moves_to_the_weighted_best_three(self):
    """One generation of 10 with 3 parents: the new mean is the centre plus the positive
    weights times the three best members' steps (c_mean = 1), shapes / dtypes fixed."""
    s = cma_es(2, popsize=10, parent_ratio=0.3)
    ask, tell = self.variant(s.ask, static_argnums=2), self.variant(s.tell)
    st = s.init(jax.random.key(0))
    kinds = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype, a.weak_type), st)
    st, u = ask(st, jax.random.key(1), 10)
    y = bf.sphere(u)
    st = tell(st, u, y, jnp.zeros(10, jnp.int32))
    w = _hansen(10, 3, 2)["weights"][:3]
    best = np.asarray(u)[np.argsort(np.asarray(y))[:3]]
    np.testing.assert_allclose(np.asarray(st["es"].mean), 0.5 + w @ (best - 0.5), atol=1e-5)
    assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype, a.weak_type), st) == kinds


def test_three_parents_find_the_2d_sphere_and_rosenbrock_optima():
  """As the sampling options' test: median regret below 1e-8 (sphere) and 1e-2 (Rosenbrock)."""
  assert_finds_sphere_and_rosenbrock(cma_es(2, popsize=8, parent_ratio=0.3), 8)


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.2, True, "half"])
def test_bad_parent_ratio_raises_naming_it(bad):
  with pytest.raises(ValueError, match="^parent_ratio="):
    cma_es(2, parent_ratio=bad)
