"""CMA-ES's ``sampling`` option and default ``sigma0``: orthogonal and mirrored standard-normal
draws keep each row ``N(0, I)``, keep ``ask``/``tell`` jittable and still find the 2-D sphere and
Rosenbrock optima; the default step shrinks with the dimension from d = 4 on."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _search_helpers import assert_finds_sphere_and_rosenbrock

from metaopt._src import benchmark_functions as bf
from metaopt._src.evolution import _structured_normal, cma_es, default_sigma0

N = 8


def test_orthogonal_rows_are_orthogonal_per_block_and_standard_normal():
  """Rows within a block of ``dim`` are orthogonal (rows of different blocks are not); over many
  draws the rows have mean 0, covariance I and squared length of mean ``dim`` (chi^2_dim)."""
  z = np.asarray(_structured_normal(jax.random.key(0), 10, 4, "orthogonal"))
  assert z.shape == (10, 4)
  g = z @ z.T
  for block in (slice(0, 4), slice(4, 8), slice(8, 10)):
    sub = g[block, block]
    np.testing.assert_allclose(sub - np.diag(np.diag(sub)), 0.0, atol=1e-4)
  assert np.abs(g[:4, 4:8]).max() > 0.1  # independent blocks
  big = np.asarray(_structured_normal(jax.random.key(1), 30_000, 3, "orthogonal"))
  np.testing.assert_allclose(big.mean(axis=0), 0.0, atol=0.03)
  np.testing.assert_allclose(np.cov(big.T), np.eye(3), atol=0.04)
  np.testing.assert_allclose(np.mean(np.sum(big ** 2, axis=1)), 3.0, rtol=0.03)
  m = np.asarray(_structured_normal(jax.random.key(2), 7, 3, "mirrored"))
  np.testing.assert_allclose(m[:3], -m[4:7])
  assert m.shape == (7, 3)


class SamplingJittable(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_ask_tell_learn_and_keep_shapes(self):
    """Orthogonal: two generations, points inside the cube, the strategy updates, shapes /
    dtypes / weak types fixed (a jitted ask/tell compiles once); the first generation of 3 rows
    in 3-D spans three orthogonal directions around the centre. Mirrored: its first generation
    is pairs mirrored around the centre (its ask only: the tell is the strategy's, as for
    orthogonal; both samplings' ask/tell run jitted for 40 generations in a ``lax.scan``, whose
    carry must keep its shapes and dtypes, in the optima test below)."""
    for sampling in ("orthogonal", "mirrored"):
      s = cma_es(3, popsize=N, sampling=sampling, sigma0=0.05)
      ask, tell = self.variant(s.ask, static_argnums=2), self.variant(s.tell)
      st = s.init(jax.random.key(0))
      kinds = jax.tree_util.tree_map(lambda a: (a.shape, a.dtype, a.weak_type), st)
      st, u = ask(st, jax.random.key(1), N)
      assert bool(jnp.all((u >= 0) & (u <= 1)))
      d = np.asarray(u) - 0.5
      if sampling == "orthogonal":
        g = d[:3] @ d[:3].T
        np.testing.assert_allclose(g - np.diag(np.diag(g)), 0.0, atol=1e-5)
      else:
        np.testing.assert_allclose(d[:4], -d[4:], atol=1e-6)
        assert np.abs(d).max() > 1e-3
        continue
      st = tell(st, u, bf.sphere(u), jnp.zeros(N, jnp.int32))
      st, u2 = ask(st, jax.random.key(2), N)
      st = tell(st, u2, bf.sphere(u2), jnp.zeros(N, jnp.int32))
      assert int(st["generation"]) == 2
      assert float(jnp.max(jnp.abs(st["es"].mean - 0.5))) > 1e-4
      assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype, a.weak_type), st) == kinds


# The variant op by op is slow (~27 s on CI: CMA-ES's ask / tell dispatched op by op); it
# runs in `make test-slow`. By default CMA-ES's ask / tell run op by op in the without_jit
# variant of tests/test_cma_restarts.py, and the sampling options' code runs in this test's
# with_jit variant.
SamplingJittable.test_ask_tell_learn_and_keep_shapes__without_jit = pytest.mark.slow(
    SamplingJittable.test_ask_tell_learn_and_keep_shapes__without_jit)


@pytest.mark.parametrize("kw", [{"sampling": "orthogonal"}, {"sampling": "mirrored"}])
def test_options_find_the_2d_sphere_and_rosenbrock_optima(kw):
  """Sphere (minimum at 0.3) and Rosenbrock on [-5, 10]^2, 40 batches of 8, seeds 0-2, one
  jitted vmap over (seed, function): median regret below 1e-8 and 1e-2 (random search's best of
  320 uniform points on Rosenbrock is above 1e-2)."""
  assert_finds_sphere_and_rosenbrock(cma_es(2, popsize=N, **kw), N)


def test_bad_sampling_raises_naming_it():
  with pytest.raises(ValueError, match="^sampling="):
    cma_es(2, sampling="sobol")


def test_default_sigma0_shrinks_with_dim_from_4_on():
  """The default initial step is 1/6 up to d = 3 and 0.3 / sqrt(d) above (0.134 at 5, 0.095
  at 10): the first generation's radius sigma0 sqrt(d) stays at 0.3 (before: 1/6 at every d).
  An explicit sigma0 is kept, with and without restarts."""
  for dim, want in ((2, 1 / 6), (3, 1 / 6), (5, 0.3 / np.sqrt(5)), (10, 0.3 / np.sqrt(10))):
    for kw in ({}, {"restarts": "ipop"}):
      st = cma_es(dim, popsize=10, **kw).init(jax.random.key(0))
      np.testing.assert_allclose(float(st["es"].std), want, rtol=1e-6)
  st = cma_es(10, popsize=10, sigma0=1 / 6).init(jax.random.key(0))
  np.testing.assert_allclose(float(st["es"].std), 1 / 6, rtol=1e-6)
  assert default_sigma0(10) < 0.1 < default_sigma0(4) < 1 / 6 == default_sigma0(3)
