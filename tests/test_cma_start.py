"""CMA-ES's ``start`` option: a uniform first generation (Optuna's startup batch) and a start at
its best point; jittable, and the 2-D sphere and Rosenbrock optima are still found."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _search_helpers import assert_finds_sphere_and_rosenbrock

from metaopt import FAILED
from metaopt._src import benchmark_functions as bf
from metaopt._src.evolution import cma_es

N = 8


class StartJittable(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_first_generation_is_uniform_and_sets_the_start(self):
    """The first generation is uniform on the cube (not a Gaussian at the centre with step 1/6:
    some point lies farther than 0.4 from the centre in some coordinate) and does not update the
    strategy; with "best" the mean moves to the best complete point (a failed one is skipped);
    shapes, dtypes and weak types stay fixed, so a jitted ask/tell compiles once."""
    for start in ("uniform", "best"):
      s = cma_es(3, popsize=N, start=start)
      ask, tell = self.variant(s.ask, static_argnums=2), self.variant(s.tell)
      st = s.init(jax.random.key(0))
      kinds = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype, a.weak_type), st)
      st, u = ask(st, jax.random.key(1), N)
      assert bool(jnp.all((u >= 0) & (u <= 1)))
      assert float(jnp.max(jnp.abs(u - 0.5))) > 0.4, u
      y = bf.sphere(u)
      status = jnp.zeros(N, jnp.int32).at[jnp.argmin(y)].set(FAILED)  # the best one failed
      st = tell(st, u, y, status)
      assert int(st["generation"]) == 1 and not bool(st["startup"])
      expect = u[jnp.argsort(y)[1]] if start == "best" else jnp.full(3, 0.5)
      np.testing.assert_allclose(st["es"].mean, expect, atol=1e-6)
      np.testing.assert_allclose(st["es"].std, 1 / 6, rtol=1e-6)
      np.testing.assert_allclose(st["es"].C, np.eye(3), atol=1e-6)
      st, u2 = ask(st, jax.random.key(2), N)  # now drawn around the mean
      assert float(jnp.max(jnp.abs(u2.mean(axis=0) - expect))) < 0.2, (u2, expect)
      st = tell(st, u2, bf.sphere(u2), jnp.zeros(N, jnp.int32))
      assert int(st["generation"]) == 2
      assert float(jnp.max(jnp.abs(st["es"].mean - expect))) > 1e-4  # the strategy learns
      assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype, a.weak_type), st) == kinds


# The variant op by op is slow (~21 s on CI: CMA-ES's ask / tell dispatched op by op); it
# runs in `make test-slow`. By default CMA-ES's ask / tell run op by op in the without_jit
# variant of tests/test_cma_restarts.py (restarts and the plain ask / tell), and the start option's
# code runs in this test's with_jit variant.
StartJittable.test_first_generation_is_uniform_and_sets_the_start__without_jit = pytest.mark.slow(
    StartJittable.test_first_generation_is_uniform_and_sets_the_start__without_jit)


@pytest.mark.parametrize("start", ["uniform", "best"])
def test_start_finds_the_2d_sphere_and_rosenbrock_optima(start):
  """Sphere (minimum at 0.3) and Rosenbrock on [-5, 10]^2, 40 batches of 8, seeds 0-2, one
  jitted vmap over (seed, function) of a scanned search: the median regret is within the
  bounds of the default start (1e-8 and 1e-2), far below random search's."""
  assert_finds_sphere_and_rosenbrock(cma_es(2, popsize=N, start=start), N)


@pytest.mark.parametrize("kw", [{"start": "random"}, {"start": "best", "restarts": "ipop"}])
def test_bad_start_raises_naming_it(kw):
  with pytest.raises(ValueError, match="^start="):
    cma_es(2, **kw)
