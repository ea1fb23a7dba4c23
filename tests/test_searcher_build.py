"""Building a searcher places its constant arrays from the host: it compiles nothing (gp_bo,
sobol, random, regularized evolution, TPE), and CMA-ES's own arrays are the eager ``jnp`` ones bit
for bit. Compiles are counted by the engine's counter, never timed."""

import metaopt
from metaopt._src import compile_cache
from metaopt._src import evolution as ev


def _compiles_of(build) -> int:
  before = sum(compile_cache.compiles().values())
  build()
  return sum(compile_cache.compiles().values()) - before


def test_building_searchers_compiles_nothing():
  ev.regularized_evolution(2)  # imports evosax (its import compiles a conversion)
  n = _compiles_of(lambda: (metaopt.gp_bo(13), metaopt.sobol(13), metaopt.random_search(13),
                            metaopt.regularized_evolution(13, levels=[0] * 12 + [3]),
                            metaopt.tpe(13)))
  assert n == 0


def test_host_placed_arrays_equal_the_eager_jnp_ones_bit_for_bit():
  """CMA-ES / Open-ES start arrays and CMA-ES's step and mean rate: same bits and dtype as the
  eager ``jnp`` values they replace (``jnp.full``'s was weakly typed: float32 in every use
  here), so proposals are unchanged."""
  import jax.numpy as jnp
  import numpy as np

  def same(a, b, weak=True):
    return (a.dtype == b.dtype and (a.weak_type == b.weak_type or not weak) and a.shape == b.shape
            and np.asarray(a).tobytes() == np.asarray(b).tobytes())

  n = _compiles_of(lambda: ev._host_full(19, 0.5))
  assert n == 0
  assert same(ev._host_full(19, 0.5), jnp.full((19,), 0.5), weak=False)
  assert same(ev._host_full(19, 0.0), jnp.zeros(19))
  assert not same(ev._host_full(19, 0.5), jnp.full((19,), 0.5, jnp.float16), weak=False)  # can fail
  strategy = ev._cma_class("gaussian")(population_size=6, solution=ev._host_full(4, 0.0))
  p = ev._cma_params(strategy, 0.3, 1.5)
  assert same(p.std_init, jnp.asarray(0.3, jnp.float32))
  assert same(p.c_mean, jnp.asarray(1.5, jnp.float32))
