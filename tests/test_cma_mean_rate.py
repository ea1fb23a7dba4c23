"""CMA-ES's ``c_mean`` option (the mean's learning rate) and its default: the mean moves exactly
``c_mean`` times the weighted recombination step (closed form from evosax's recombination
weights; against ``c_mean = 1`` with restarts), ask/tell stay jittable; the default is 1 below
d = 5 and 1.5 from d = 5 on."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _search_helpers import scan_search
from evosax.algorithms import CMA_ES

from metaopt._src import benchmark_functions as bf
from metaopt._src.evolution import cma_es, default_c_mean

N = 10


def _mean_step(s, ask, tell):
  """The first generation (10 points) and the mean's step from the centre after its tell."""
  st = s.init(jax.random.key(0))
  kinds = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype, a.weak_type), st)
  st, u = ask(st, jax.random.key(1), N)
  st = tell(st, u, bf.sphere(u), jnp.zeros(N, jnp.int32))
  assert int(st["generation"]) == 1
  assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype, a.weak_type), st) == kinds
  return np.asarray(u), np.asarray(st["es"].mean)[:u.shape[1]] - 0.5


def _recombination_step(u, y):
  """The weighted recombination's step from the centre in closed form: the sum over the
  generation ranked by ``y`` of evosax's positive weights times ``x_{i:lambda} - 0.5`` (the
  points are inside the cube, so they are the members the strategy learns from)."""
  w = np.asarray(CMA_ES(population_size=len(u), solution=jnp.zeros(u.shape[1]))
                 .default_params.weights)
  order = np.argsort(y)
  return sum(max(float(w[r]), 0.0) * (u[order[r]] - 0.5) for r in range(len(u)))


class MeanRateJittable(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_mean_step_scales_with_c_mean(self):
    """One generation of 10 on the sphere at d = 5 (the smallest d with the longer default
    step): the default's mean step from the centre is 1.5 times the weighted recombination's
    step, in closed form from evosax's weights (``c_mean = 1`` would give 1 times it); the
    state's shapes / dtypes / weak types do not change over a generation (a jitted ask/tell
    compiles once). One searcher, so the jitted variant compiles one ask and one tell (it
    compiled a ``c_mean = 1`` searcher's too before, ~half of its time)."""
    s = cma_es(5, popsize=N)
    u, step = _mean_step(s, self.variant(s.ask, static_argnums=2), self.variant(s.tell))
    want = _recombination_step(u, np.asarray(bf.sphere(jnp.asarray(u))))
    assert np.linalg.norm(want) > 1e-2
    np.testing.assert_allclose(step, 1.5 * want, rtol=1e-5, atol=1e-6)


# The variant op by op is slow (~22 s on CI: CMA-ES's ask / tell dispatched op by op); it
# runs in `make test-slow`. By default CMA-ES's ask / tell run op by op in the without_jit
# variant of tests/test_cma_restarts.py (restarts and the plain ask / tell), and c_mean's
# code runs in this test's with_jit variant.
MeanRateJittable.test_mean_step_scales_with_c_mean__without_jit = pytest.mark.slow(
    MeanRateJittable.test_mean_step_scales_with_c_mean__without_jit)


@pytest.mark.slow
def test_c_mean_with_restarts():
  """The same closed form with IPOP restarts at d = 3: ``c_mean`` 0.5 against 1, jitted (slow:
  about 40 s CPU of compiles for a one-line path)."""
  out = {}
  for c_mean in (0.5, 1.0):
    s = cma_es(3, popsize=N, restarts="ipop", c_mean=c_mean)
    out[c_mean] = _mean_step(s, jax.jit(s.ask, static_argnums=2), jax.jit(s.tell))
  np.testing.assert_array_equal(out[0.5][0], out[1.0][0])
  assert np.linalg.norm(out[1.0][1]) > 1e-2
  np.testing.assert_allclose(out[0.5][1], 0.5 * out[1.0][1], rtol=1e-5, atol=1e-7)


def test_default_c_mean_is_1_below_d5_and_1_5_from_there():
  assert [default_c_mean(d) for d in (1, 2, 3, 4, 5, 9, 10, 20, 100)] == [1.0] * 4 + [1.5] * 5


@pytest.mark.slow
def test_default_finds_the_10d_sphere():
  """The default (c_mean 1.5 at d = 10), 3 seeds: sphere-10 (minimum at 0.3) within 1e-4 in 80
  generations of 10 (the mean's longer step still converges)."""
  s = cma_es(10, popsize=N)

  def run(seed):
    st, best, _ = scan_search(s, bf.sphere, seed, 80, N)
    return best

  best = jax.jit(jax.vmap(run))(jnp.arange(3))
  assert float(jnp.max(best)) < 1e-4, best


@pytest.mark.parametrize("c_mean", [0, -1.0, "1.5", True])
def test_bad_c_mean_raises_naming_it(c_mean):
  with pytest.raises(ValueError, match="^c_mean="):
    cma_es(2, c_mean=c_mean)
