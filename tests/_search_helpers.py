"""The scanned search the searcher tests share: ask -> evaluate -> tell inside one
``lax.scan`` (jit and vmap it over seeds and functions as a test needs)."""

import jax
import jax.numpy as jnp
import numpy as np

from metaopt._src import benchmark_functions as bf


def scan_search(s, f, seed, rounds, n, out=None):
  """``rounds`` rounds of ``n`` points of searcher ``s`` on ``f`` (``u[n, d] -> y[n]``, every
  trial complete); round ``r`` asks with ``fold_in(key(seed + 1), r)`` from ``init(key(seed))``.

  Returns ``(final state, best y, per-round outputs)``: ``out(state, u, y)`` after each tell,
  stacked by the scan (None without ``out``).
  """
  def body(carry, r):
    st, best = carry
    st, u = s.ask(st, jax.random.fold_in(jax.random.key(seed + 1), r), n)
    y = f(u)
    st = s.tell(st, u, y, jnp.zeros(n, jnp.int32))
    return (st, jnp.minimum(best, y.min())), None if out is None else out(st, u, y)

  (st, best), outs = jax.lax.scan(body, (s.init(jax.random.key(seed)), jnp.inf),
                                  jnp.arange(rounds))
  return st, best, outs


def assert_finds_sphere_and_rosenbrock(s, n):
  """Searcher ``s`` (2-D), 40 rounds of ``n`` on the sphere (minimum at 0.3) and Rosenbrock on
  [-5, 10]^2, seeds 0-2, one jitted vmap over (seed, function) of :func:`scan_search`: median
  best below 1e-8 and 1e-2 (random search's best of ``40 n`` uniform points on Rosenbrock is
  above 1e-2, checked too)."""
  def run(seed, which):
    return scan_search(s, lambda u: jnp.where(which == 0, bf.sphere(u), bf.rosenbrock(u)), seed,
                       40, n)[1]

  best = np.asarray(jax.jit(jax.vmap(run))(jnp.asarray([0, 1, 2] * 2),
                                           jnp.asarray([0] * 3 + [1] * 3)))
  assert np.median(best[:3]) < 1e-8, best
  assert np.median(best[3:]) < 1e-2, best
  u = jax.random.uniform(jax.random.key(0), (40 * n, 2))
  assert 1e-2 < float(bf.rosenbrock(u).min())
